"""Parity of the fast evaluation paths with fp32 eager: final top1 on `digits`, same seeds.

For each IPC, a `random_real` distillate of digits (distill seed 0) is evaluated with the shared
recipe (`ddbench.fit.fit_artifact`, DSA on) along each training path of `PATHS` — fp32 eager (the
reference), bf16 autocast eager, bf16 autocast compiled (`compile: on`, what `compile: auto`
picks for long CIFAR-size runs) — for the same eval seeds, so every path sees identical
initialisations, data orders and augmentations. It prints, per IPC and path, mean +- std (n) of
val top1, the mean difference to fp32 and whether it lies within one standard deviation of the
fp32 runs (the rule `precision: auto` relies on), and the seconds each path took in this run.
The rule is a choice, so it is read on val: the test split is removed before anything trains
(`RealData.without_test`).
Final JSON line: the same figures, per-seed values included.

    python benchmarks/precision_parity.py                       # IPC 1 10 50, 5 seeds, 300 epochs
    python benchmarks/precision_parity.py --ipcs 10 --seeds 3 --epochs 100 --paths fp32 bf16

Extending: another architecture is `--arch NAME`; another dataset needs only its registry name in
`--dataset` (it must load without downloading, or have its data under $DDBENCH_DATA).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

# path name -> the `ddbench.fit.Recipe` fields that select it; "fp32" is the reference
PATHS = {
    "fp32": {"precision": "fp32", "compile": "off"},
    "bf16": {"precision": "bf16", "compile": "off"},
    "bf16_compiled": {"precision": "bf16", "compile": "on"},
}


def parity(
    dataset: str, arch: str, ipc: int, seeds: int, epochs: int, paths: list[str]
) -> dict[str, Any]:
    """Val top1 for eval seeds 0..seeds-1 at `ipc` along each of `paths` (fp32 first), with
    each path's wall time and its mean difference to fp32."""
    from ddbench.context import Context
    from ddbench.data import load_dataset
    from ddbench.fit import Recipe, fit_artifact
    from ddbench.methods import get_method

    real = load_dataset(dataset).without_test()
    artifact = get_method("random_real").distill(real, ipc, None, Context(0))
    out: dict[str, Any] = {"ipc": ipc}
    for path in paths:
        recipe = Recipe(epochs=epochs, **PATHS[path])
        tic = time.perf_counter()
        top1 = [
            fit_artifact(arch, artifact, ipc, real, recipe, seed)[0]["val"] for seed in range(seeds)
        ]
        out[path] = top1
        out[f"{path}_s"] = round(time.perf_counter() - tic, 2)
    fp32_std = statistics.stdev(out["fp32"]) if seeds > 1 else 0.0
    for path in paths[1:]:
        diff = statistics.mean(out[path]) - statistics.mean(out["fp32"])
        out[f"{path}_diff"] = diff
        out[f"{path}_within_1std"] = abs(diff) <= fp32_std
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
    # paths compared with fp32 eager (always run first, as the reference)
    parser.add_argument("--paths", nargs="+", choices=sorted(PATHS), default=["bf16"])
    args = parser.parse_args(argv)
    paths = ["fp32", *[p for p in args.paths if p != "fp32"]]
    import torch

    torch.set_num_threads(args.threads)
    results = [
        parity(args.dataset, args.arch, ipc, args.seeds, args.epochs, paths) for ipc in args.ipcs
    ]
    print(f"{args.dataset}, {args.arch}, {args.epochs} epochs, val top1 mean ± std (n)")
    print("| IPC | path | val top1 | − fp32 | within 1 std of fp32 | s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        for path in paths:
            diff = f"{r[f'{path}_diff']:+.4f}" if path != "fp32" else "—"
            within = {True: "yes", False: "no"}.get(r.get(f"{path}_within_1std"), "—")
            print(
                f"| {r['ipc']} | {path} | {_fmt(r[path])} | {diff} | {within} | {r[f'{path}_s']} |"
            )
    summary = {"dataset": args.dataset, "arch": args.arch, "epochs": args.epochs}
    summary["results"] = results
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
