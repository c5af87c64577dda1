"""Fan-out of many small eval cells on local Ray: scheduling overhead and parallel efficiency.

A suite of `--cells` tiny cells (random_real IPC 1 on digits, one MLP epoch each) is evaluated
three ways on one artifact: in-process (`--local`, the pure compute), on an embedded Ray with 1
CPU and with 2 CPUs. Figures:
- overhead_per_cell_ms = (Ray 1-CPU wall - in-process wall) / cells
- parallel_efficiency_2cpu = Ray 1-CPU wall / (2 x Ray 2-CPU wall)
The last line printed is JSON. Usage: python benchmarks/fanout.py [--cells 240]
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
evals: [{{name: cross_arch, params: {{archs: [mlp], seeds: {seeds}, epochs: 1}}}}]
resources: {{distill: {{workers: 1, cpus_per_worker: 1}}, eval: {{cpus: 1}}}}
"""


def timed_run(plan, real, out: Store, mode: str, num_cpus: int = 1) -> float:
    """Seconds to evaluate every cell (the artifact is already distilled)."""
    import ray

    from ddbench.runner.cluster import init_ray
    from ddbench.runner.local import run_local
    from ddbench.runner.scheduler import run_ray

    out.delete("results")
    quiet = lambda message: None  # noqa: E731 - one line per cell would dominate the output
    if mode == "local":
        start = time.perf_counter()
        summary = run_local(plan, real, out, force=False, log=quiet, cpus=1)  # as one Ray task
        seconds = time.perf_counter() - start
    else:
        init_ray(None, num_cpus=num_cpus)
        try:
            start = time.perf_counter()
            summary = run_ray(plan, real, out, force=False, log=quiet)
            seconds = time.perf_counter() - start
        finally:
            ray.shutdown()
    assert summary.cells_run == len(plan.cells) and summary.cells_failed == 0
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=240, help="eval cells (>= 200 for the issue)")
    args = parser.parse_args()

    from ddbench.data import load_dataset
    from ddbench.plan import make_plan
    from ddbench.runner.local import run_local
    from ddbench.spec import load_suite
    from ddbench.storage import Store

    work = Path(tempfile.mkdtemp(prefix="ddbench-fanout-"))
    suite = work / "fanout.yaml"
    suite.write_text(SUITE.format(seeds=args.cells))
    plan = make_plan(load_suite(suite))
    real = load_dataset("digits")
    out = Store(work / "runs" / "fanout")
    run_local(plan, real, out, force=False, log=lambda m: None)  # distil once, warm caches
    local = timed_run(plan, real, out, "local")
    ray1 = timed_run(plan, real, out, "ray", num_cpus=1)
    ray2 = timed_run(plan, real, out, "ray", num_cpus=2)
    figures = {
        "cells": len(plan.cells),
        "in_process_s": round(local, 2),
        "ray_1cpu_s": round(ray1, 2),
        "ray_2cpu_s": round(ray2, 2),
        "overhead_per_cell_ms": round(1000 * (ray1 - local) / len(plan.cells), 2),
        "parallel_efficiency_2cpu": round(ray1 / (2 * ray2), 3),
    }
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
