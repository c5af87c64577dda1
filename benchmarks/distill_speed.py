"""Seconds per distillation iteration and peak memory of the pixel methods (dc, dsa, dm, datadam).

Data: CIFAR-shaped random tensors (3x32x32, 10 classes, `--per-class` train images per class) built
directly as a `RealData` (nothing is downloaded); ConvNet-3 (each method's default network), real
batch `--batch-real` per class (256 unless stated). Each (method, IPC) runs in its own child
process, so its peak memory (RSS from `getrusage`, or `torch.cuda.max_memory_allocated` on a GPU)
is its own. A child runs the method's real `distill` through the shared pixel loop and records the
time of every loop step through the Context's progress events (`report_every_s=0`); it stops the run
after `--warmup` + `--timed` steps and reports the median of the timed steps.

One loop step is one image update. For dm / datadam that is one iteration. For dc / dsa one DC
*iteration* is `outer_loop` image updates (DC's table: 1 / 10 / 50 at IPC 1 / 10 / 50, with
`inner_loop` epochs of network training between them); the figure per DC iteration is the mean
step time x outer_loop, an extrapolation (marked so), since timing whole DC iterations at IPC 50
would take far longer than this benchmark's budget.

`dm` and `datadam` are also timed with `per_class_loop: true` (the reference per-class forwards)
at `--compare-ipc`, each right after its batched run so both see the same machine load; the final
JSON line has `<method>_batched_vs_loop_ipc<N>` = loop seconds / batched seconds.

    python benchmarks/distill_speed.py                        # every registered pixel method
    python benchmarks/distill_speed.py --methods dm datadam --ipcs 1 10 --timed 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

PIXEL_METHODS = ("dc", "dsa", "dm", "datadam")  # timed when registered
LOOP_METHODS = ("dm", "datadam")  # have a per_class_loop reference path
NO_CHECKPOINTS = 10**6  # checkpoint_every: keep checkpoint copies out of the timings


class _Stop(Exception):
    """Raised from the progress hook once enough steps are timed."""


def _random_cifar(per_class: int, seed: int = 0) -> Any:
    import torch

    from ddbench.data import RealData

    gen = torch.Generator().manual_seed(seed)
    n = 10 * per_class
    x = torch.randn(n, 3, 32, 32, generator=gen)
    y = torch.arange(10).repeat_interleave(per_class)
    names = [f"class_{i}" for i in range(10)]
    return RealData(
        "random_cifar", x, y, x[:10], y[:10], x[:10], y[:10], names, (0.0,) * 3, (1.0,) * 3
    )


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Time one (method, ipc, per_class_loop) configuration in this process."""
    import torch

    from ddbench.context import Context, pick_device
    from ddbench.methods import get_method

    torch.set_num_threads(spec["threads"])
    device = pick_device(spec["device"])
    real = _random_cifar(spec["per_class"])
    method = get_method(spec["method"])
    overrides: dict[str, Any] = {
        "batch_real": spec["batch_real"],
        "checkpoint_every": NO_CHECKPOINTS,
        "iterations": 10**6,  # the progress hook stops the run
    }
    if spec["loop"]:
        overrides["per_class_loop"] = True
    params = method.Params.model_validate(overrides)
    steps_per_iteration = 1
    if "outer_loop" in method.Params.model_fields:
        from ddbench.methods.dc import resolve_loops

        steps_per_iteration = resolve_loops(spec["ipc"], params)[0]
    need = spec["warmup"] + spec["timed"]
    stamps: list[float] = []

    class StepClock(Context):
        """Stamps every progress event (one per loop step) and stops the run when done."""

        def _emit(self, metrics: dict[str, float], checkpoint: dict[str, Any] | None) -> None:
            stamps.append(time.perf_counter())
            if len(stamps) >= need:
                raise _Stop

    ctx = StepClock(seed=0, device=device, report_every_s=0.0)
    baseline = _rss_mib()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        method.distill(real, spec["ipc"], params, ctx)
    except _Stop:
        pass
    steps = [b - a for a, b in zip([start, *stamps], stamps, strict=False)][spec["warmup"] :]
    result = {
        **{k: spec[k] for k in ("method", "ipc", "loop", "batch_real", "threads")},
        "device": device,
        "s_per_step": statistics.median(steps),
        "s_per_step_all": [round(s, 3) for s in steps],
        "steps_per_iteration": steps_per_iteration,
        "s_per_iteration": statistics.mean(steps) * steps_per_iteration,
        "s_per_iteration_extrapolated": steps_per_iteration > 1,
        "baseline_rss_mib": baseline,
        "peak_rss_mib": _peak_rss_mib(),
    }
    if device.startswith("cuda"):
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def _spawn(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"child {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--methods", nargs="+", default=None, help="default: registered dc/dsa/dm/datadam"
    )
    parser.add_argument("--ipcs", nargs="+", type=int, default=[1, 10, 50])
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--timed", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--batch-real", type=int, default=256, help="real images per class")
    parser.add_argument("--per-class", type=int, default=300, help="train images per class")
    parser.add_argument("--compare-ipc", type=int, default=10, help="batched vs loop at this IPC")
    parser.add_argument("--threads", type=int, default=None, help="torch threads; default all")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return 0

    import os

    from ddbench.methods import METHODS

    registered = set(METHODS.names())
    methods = args.methods or [m for m in PIXEL_METHODS if m in registered]
    threads = args.threads or os.cpu_count() or 1
    base = {
        "batch_real": args.batch_real,
        "per_class": args.per_class,
        "warmup": args.warmup,
        "timed": args.timed,
        "threads": threads,
        "device": args.device,
    }
    rows = []
    tic = time.perf_counter()
    for method in methods:
        for ipc in args.ipcs:
            configs = [False]
            if method in LOOP_METHODS and ipc == args.compare_ipc:
                configs.append(True)  # right after the batched run: same machine load
            for loop in configs:
                row = _spawn({**base, "method": method, "ipc": ipc, "loop": loop})
                rows.append(row)
                print(
                    f"{method:8s} ipc {ipc:3d} {'loop   ' if loop else 'batched'} "
                    f"{row['s_per_step']:8.3f} s/step  {row['s_per_iteration']:9.3f} s/iteration"
                    f"{' (extrapolated)' if row['s_per_iteration_extrapolated'] else ''}  "
                    f"peak RSS {row['peak_rss_mib']:7.0f} MiB  steps {row['s_per_step_all']}",
                    flush=True,
                )
    summary: dict[str, Any] = {"rows": rows, "wall_s": round(time.perf_counter() - tic, 1)}
    for method in LOOP_METHODS:
        pair = {
            r["loop"]: r["s_per_step"]
            for r in rows
            if r["method"] == method and r["ipc"] == args.compare_ipc
        }
        if len(pair) == 2:
            summary[f"{method}_batched_vs_loop_ipc{args.compare_ipc}"] = pair[True] / pair[False]
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
