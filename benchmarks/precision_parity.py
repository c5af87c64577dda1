"""Parity of bf16 and fp32 evaluation training: final top1 on `digits`, same seeds, both precisions.

For each IPC, a `random_real` distillate of digits (distill seed 0) is evaluated with the shared
recipe (`ddbench.fit.fit_artifact`, DSA on) under `precision: fp32` and `precision: bf16` for the
same eval seeds, so both paths see identical initialisations, data orders and augmentations. It
prints, per IPC, mean +- std (n) of test top1 for each precision, the mean difference and whether
it lies within one standard deviation of the fp32 runs (the rule `precision: auto` relies on), and
the seconds each precision took in this run. Final JSON line: the same figures.

    python benchmarks/precision_parity.py                       # IPC 1 10 50, 5 seeds, 300 epochs
    python benchmarks/precision_parity.py --ipcs 10 --seeds 3 --epochs 100 --arch convnet

Extending: another architecture is `--arch NAME`; another dataset needs only its registry name in
`--dataset` (it must load without downloading, or have its data under $DDBENCH_DATA).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any


def parity(dataset: str, arch: str, ipc: int, seeds: int, epochs: int) -> dict[str, Any]:
    """fp32 and bf16 test top1 for eval seeds 0..seeds-1 at `ipc`, with their wall times."""
    from ddbench.context import Context
    from ddbench.data import load_dataset
    from ddbench.fit import Recipe, fit_artifact
    from ddbench.methods import get_method

    real = load_dataset(dataset)
    artifact = get_method("random_real").distill(real, ipc, None, Context(0))
    out: dict[str, Any] = {"ipc": ipc}
    for precision in ("fp32", "bf16"):
        recipe = Recipe(epochs=epochs, precision=precision, compile="off")
        tic = time.perf_counter()
        top1 = [
            fit_artifact(arch, artifact, ipc, real, recipe, seed)[0]["test"]
            for seed in range(seeds)
        ]
        out[precision] = top1
        out[f"{precision}_s"] = round(time.perf_counter() - tic, 2)
    fp32_std = statistics.stdev(out["fp32"]) if seeds > 1 else 0.0
    out["diff"] = statistics.mean(out["bf16"]) - statistics.mean(out["fp32"])
    out["within_1std"] = abs(out["diff"]) <= fp32_std
    return out


def _fmt(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f} ({len(values)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="digits")  # embedded, no download
    parser.add_argument("--arch", default="convnet")  # the family `auto` puts in bf16
    parser.add_argument("--ipcs", type=int, nargs="+", default=[1, 10, 50])  # DC's IPCs
    parser.add_argument("--seeds", type=int, default=5)  # eval seeds per precision (DC: >= 5)
    parser.add_argument(
        "--epochs", type=int, default=300
    )  # < DC's 1000 (CPU budget); digits converges
    parser.add_argument("--threads", type=int, default=2)  # torch threads (this machine: 2)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    results = [parity(args.dataset, args.arch, ipc, args.seeds, args.epochs) for ipc in args.ipcs]
    print(f"{args.dataset}, {args.arch}, {args.epochs} epochs, test top1 mean ± std (n)")
    print("| IPC | fp32 | bf16 | bf16 − fp32 | within 1 std | fp32 s | bf16 s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['ipc']} | {_fmt(r['fp32'])} | {_fmt(r['bf16'])} | {r['diff']:+.4f} "
            f"| {'yes' if r['within_1std'] else 'no'} | {r['fp32_s']} | {r['bf16_s']} |"
        )
    summary = {"dataset": args.dataset, "arch": args.arch, "epochs": args.epochs}
    summary["results"] = results
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
