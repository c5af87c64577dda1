"""Fan-out of many small eval cells on local Ray: scheduling overhead and parallel efficiency.

A suite of `--cells` tiny cells (random_real IPC 1 on digits, `--epochs` MLP epochs each) is
evaluated three ways on one artifact: in-process (the pure compute, as `run_local` runs it), on an
embedded Ray with 1 CPU and with 2 CPUs. Each Ray run is done twice on one `ray.init`: cold (Ray
starts its worker processes, each importing torch and ddbench: a one-time cost per worker, not
per cell) and warm (the workers are up, as in any suite past its first cells). Figures:
- worker_startup_s (per CPU count) = cold wall - warm wall
- overhead_per_cell_ms = (warm Ray 1-CPU wall - in-process wall) / cells
- parallel_efficiency_2cpu = warm Ray 1-CPU wall / (2 x warm Ray 2-CPU wall)
- cpu_s_2cpu: CPU seconds of the warm 2-CPU run by process: the driver (this process), Ray's
  own processes (GCS, raylet, agents, ...) and the workers that run the cells; on a machine
  whose 2 cores are all there is, the first two take cores the workers' 2 CPUs assume they have
The last line printed is JSON. Usage: python benchmarks/fanout.py [--cells 240] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ddbench.storage import Store

SUITE = """\
name: fanout
dataset: {{name: digits}}
ipc: [1]
methods: [{{name: random_real}}]
evals: [{{name: cross_arch, params: {{archs: [mlp], seeds: {seeds}, epochs: {epochs}}}}}]
resources: {{distill: {{workers: 1, cpus_per_worker: 1}}, eval: {{cpus: 1}}}}
"""


def quiet(message: str) -> None:
    """One log line per cell would dominate the output."""


def local_run(plan, real, out: Store) -> float:
    """Seconds to evaluate every cell in this process (the artifact is already distilled)."""
    from ddbench.runner.local import run_local

    out.delete("results")
    start = time.perf_counter()
    summary = run_local(plan, real, out, force=False, log=quiet, cpus=1)  # as one Ray task
    seconds = time.perf_counter() - start
    assert summary.cells_run == len(plan.cells) and summary.cells_failed == 0
    return seconds


def cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of this process and its descendants (Ray's), by role."""
    import psutil

    out = {"driver": 0.0, "ray_system": 0.0, "workers": 0.0}
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            name = " ".join(proc.cmdline())
        except psutil.Error:  # ended meanwhile
            continue
        role = (
            "driver"
            if proc.pid == me.pid
            else "workers"
            if "default_worker.py" in name or proc.name().startswith("ray::")
            else "ray_system"
        )
        out[role] += times.user + times.system
    return out


def ray_runs(plan, real, out: Store, num_cpus: int) -> tuple[float, float, dict[str, float]]:
    """Seconds to evaluate every cell on an embedded Ray of `num_cpus` CPUs: (cold, warm), and
    the warm run's CPU seconds by role (`cpu_seconds`)."""
    import ray

    from ddbench.runner.cluster import init_ray
    from ddbench.runner.scheduler import run_ray

    init_ray(None, num_cpus=num_cpus)
    seconds = []
    try:
        for _ in ("cold", "warm"):
            out.delete("results")
            before = cpu_seconds()
            start = time.perf_counter()
            summary = run_ray(plan, real, out, force=False, log=quiet)
            seconds.append(time.perf_counter() - start)
            assert summary.cells_run == len(plan.cells) and summary.cells_failed == 0
        after = cpu_seconds()
    finally:
        ray.shutdown()
    used = {role: round(after[role] - before[role], 2) for role in after}
    return seconds[0], seconds[1], used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=240, help="eval cells (>= 200 for the issue)")
    # 1 epoch: about 10 ms of compute per cell, so Ray's per-cell costs are what is measured
    parser.add_argument("--epochs", type=int, default=1, help="MLP epochs per cell")
    args = parser.parse_args()

    from ddbench.data import load_dataset
    from ddbench.plan import make_plan
    from ddbench.runner.local import run_local
    from ddbench.spec import load_suite
    from ddbench.storage import Store

    work = Path(tempfile.mkdtemp(prefix="ddbench-fanout-"))
    suite = work / "fanout.yaml"
    suite.write_text(SUITE.format(seeds=args.cells, epochs=args.epochs))
    plan = make_plan(load_suite(suite))
    real = load_dataset("digits")
    out = Store(work / "runs" / "fanout")
    run_local(plan, real, out, force=False, log=lambda m: None)  # distil once, warm caches
    local = local_run(plan, real, out)
    cold1, ray1, _ = ray_runs(plan, real, out, num_cpus=1)
    cold2, ray2, cpu2 = ray_runs(plan, real, out, num_cpus=2)
    figures = {
        "cells": len(plan.cells),
        "epochs": args.epochs,
        "in_process_s": round(local, 2),
        "ray_1cpu_cold_s": round(cold1, 2),
        "ray_1cpu_s": round(ray1, 2),
        "ray_2cpu_cold_s": round(cold2, 2),
        "ray_2cpu_s": round(ray2, 2),
        "worker_startup_s": [round(cold1 - ray1, 2), round(cold2 - ray2, 2)],
        "overhead_per_cell_ms": round(1000 * (ray1 - local) / len(plan.cells), 2),
        "parallel_efficiency_2cpu": round(ray1 / (2 * ray2), 3),
        "cpu_s_2cpu": cpu2,
    }
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
