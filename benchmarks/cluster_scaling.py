"""Distillation across a cluster: real loopback nodes, and a simulated large cluster.

(a) `--real`: N equal distill jobs (DM on digits, distill seeds 0..N-1) on a loopback cluster
    of N single-CPU nodes (`ddbench.runner.loopback`), for N = 1 and 2. Figures: the time from
    the run's start to the last job's end (each artifact's `distill_ended_at`), `scaling_2_over_1`
    = that time with 2 jobs on 2 nodes over 1 job on 1 node (1.0 = perfect), and the runner
    start-up (run start to the first job's `distill_started_at`: Ray Train's processes).
(b) `--simulate`: the scheduling policy of `ddbench.runner.schedule` on a simulated cluster
    (default 64 nodes x 8 GPUs x 32 CPUs) in virtual time: `--jobs` distill jobs of mixed
    widths (1/2/4/8 GPU workers) and lengths, a fifth of them behind a prerequisite job (chains
    like cgan -> d2m), each followed by its eval cells (a quarter GPU each). Figures:
    - packing_efficiency: busy GPU-seconds / available GPU-seconds while some unit was ready
      but not started (how well the policy packs when there is work to pack);
    - utilisation: busy / available GPU-seconds over the whole makespan, beside the lower bound
      of the makespan (total work / GPUs, or the longest prerequisite chain);
    - scheduler_ms_per_job: wall time the policy spent deciding (start + finish calls) per
      distill job, on this machine's CPU.
The last line printed is JSON. Usage:
  python benchmarks/cluster_scaling.py --simulate [--jobs 500 --nodes 64 --gpus 8]
  python benchmarks/cluster_scaling.py --real [--iterations 150]
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path

from ddbench.runner.schedule import Scheduler, Unit
from ddbench.seeding import derive_seed

SUITE = """\
name: scaling
dataset: {{name: digits}}
ipc: [2]
distill_seeds: {seeds}
methods:
  - name: dm
    params: {{iterations: {iterations}, batch_real: 64, checkpoint_every: 100000}}
evals: [{{name: cross_arch, params: {{archs: [mlp], seeds: 1, epochs: 1}}}}]
"""


# --------------------------------------------------------------------------- (a) real nodes


def real_run(n: int, iterations: int, work: Path) -> tuple[float, float]:
    """(Seconds from the start of `run_ray` to the end of the last of `n` equal distill jobs on a
    loopback cluster of `n` single-CPU nodes, seconds to the first job's start)."""
    from ddbench.data import load_dataset
    from ddbench.plan import make_plan
    from ddbench.runner.loopback import LoopbackCluster
    from ddbench.spec import load_suite
    from ddbench.storage import Store

    suite = work / f"scaling{n}.yaml"
    suite.write_text(SUITE.format(seeds=list(range(n)), iterations=iterations))
    plan = make_plan(load_suite(suite))
    out = Store(work / f"runs{n}" / "scaling")
    cluster = LoopbackCluster(f"ddbs{n}_", multi_node=n > 1)
    import os

    saved = dict(os.environ)
    try:
        for i in range(n):
            cluster.start(head=i == 0, num_cpus=1)
        os.environ.update(cluster.env)
        # Ray reads the cluster mode from the environment once, at import: import it only now
        from ddbench.runner.cluster import init_ray, shutdown_ray
        from ddbench.runner.scheduler import run_ray

        init_ray(cluster.address)
        start = datetime.now().astimezone()
        run_ray(plan, load_dataset("digits"), out, force=False, log=lambda m: None)
        shutdown_ray()
    finally:
        os.environ.clear()
        os.environ.update(saved)
        cluster.stop()
    metas = [
        json.loads(p.read_text())
        for p in (work / f"runs{n}" / "scaling" / "artifacts").glob("*/meta.json")
    ]
    assert len(metas) == n, metas
    end = max(datetime.fromisoformat(m["distill_ended_at"]) for m in metas)
    first = min(datetime.fromisoformat(m["distill_started_at"]) for m in metas)
    return (end - start).total_seconds(), (first - start).total_seconds()


# --------------------------------------------------------------------------- (b) simulation


def synthetic_units(jobs: int, seed: int) -> tuple[list[Unit], dict[int, float]]:
    """`jobs` distill units of mixed widths and lengths (a fifth behind a prerequisite) and
    their eval cells; returns the units and each unit's duration in seconds (by id)."""
    rng = random.Random(seed)
    units: list[Unit] = []
    duration: dict[int, float] = {}
    for j in range(jobs):
        workers = rng.choices([1, 2, 4, 8], weights=[60, 25, 10, 5])[0]
        needs = frozenset({f"job{rng.randrange(j)}"}) if j and rng.random() < 0.2 else frozenset()
        job = Unit(
            "distill",
            [{"CPU": 4.0, "GPU": 1.0} for _ in range(workers)],
            needs,
            (f"job{j}",),
            (0, -(20 if needs else 10), j),
            None,
        )
        units.append(job)
        duration[id(job)] = rng.lognormvariate(4.0, 0.8)  # median ~55 s, a few much longer
        for c in range(rng.choice([5, 10, 20])):
            cell = Unit(
                "cell", [{"CPU": 1.0, "GPU": 0.25}], frozenset({f"job{j}"}), (), (1, j, c), None
            )
            units.append(cell)
            duration[id(cell)] = rng.uniform(5.0, 60.0)
    return units, duration


def critical_path(units: list[Unit], duration: dict[int, float]) -> float:
    """The longest chain of prerequisite jobs and a cell after them, in seconds."""
    by_job = {u.publishes[0]: u for u in units if u.kind == "distill"}
    longest_cell: dict[str, float] = {}
    for u in units:
        if u.kind == "cell":
            (job,) = u.needs
            longest_cell[job] = max(longest_cell.get(job, 0.0), duration[id(u)])
    memo: dict[str, float] = {}

    def finish(job: str) -> float:
        if job not in memo:
            unit = by_job[job]
            memo[job] = duration[id(unit)] + max((finish(n) for n in unit.needs), default=0.0)
        return memo[job]

    return max(finish(job) + longest_cell.get(job, 0.0) for job in by_job)


def simulate(nodes: int, gpus: int, cpus: int, jobs: int) -> dict[str, float]:
    units, duration = synthetic_units(jobs, derive_seed(0, "cluster_scaling") % 2**32)
    cluster = {f"node{i:03d}": {"CPU": float(cpus), "GPU": float(gpus)} for i in range(nodes)}
    capacity = float(nodes * gpus)
    decide_s = 0.0
    tic = time.perf_counter()
    scheduler = Scheduler(cluster, units)
    decide_s += time.perf_counter() - tic
    events: list[tuple[float, int, Unit]] = []
    order = 0
    now = busy_gpu_s = waiting_avail_s = waiting_busy_s = 0.0
    busy = 0.0  # GPUs held right now
    while not scheduler.done:
        tic = time.perf_counter()
        started = scheduler.start()
        decide_s += time.perf_counter() - tic
        for unit in started:
            busy += sum(b.get("GPU", 0.0) for b in unit.bundles)
            heapq.heappush(events, (now + duration[id(unit)], order, unit))
            order += 1
        end, _, unit = heapq.heappop(events)
        span = end - now
        busy_gpu_s += busy * span
        if scheduler.ready:  # work was waiting for resources during this span
            waiting_avail_s += capacity * span
            waiting_busy_s += busy * span
        now = end
        busy -= sum(b.get("GPU", 0.0) for b in unit.bundles)
        tic = time.perf_counter()
        scheduler.finish(unit, unit.publishes)
        decide_s += time.perf_counter() - tic
    work = sum(duration[id(u)] * sum(b.get("GPU", 0.0) for b in u.bundles) for u in units)
    return {
        "nodes": nodes,
        "gpus_per_node": gpus,
        "jobs": jobs,
        "cells": len(units) - jobs,
        "makespan_s": round(now, 1),
        "lower_bound_s": round(max(work / capacity, critical_path(units, duration)), 1),
        "packing_efficiency": round(waiting_busy_s / waiting_avail_s, 4),
        "utilisation": round(busy_gpu_s / (capacity * now), 4),
        "scheduler_ms_per_job": round(1000 * decide_s / jobs, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="(a) loopback nodes, N = 1 and 2")
    parser.add_argument("--simulate", action="store_true", help="(b) a simulated large cluster")
    parser.add_argument("--iterations", type=int, default=150, help="DM iterations per job (a)")
    parser.add_argument("--jobs", type=int, default=500, help="distill jobs (b)")
    parser.add_argument("--nodes", type=int, default=64, help="simulated nodes (b)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per simulated node (b)")
    parser.add_argument("--cpus", type=int, default=32, help="CPUs per simulated node (b)")
    args = parser.parse_args()
    figures: dict[str, object] = {}
    if args.simulate:
        figures["simulated"] = simulate(args.nodes, args.gpus, args.cpus, args.jobs)
    if args.real:
        work = Path(tempfile.mkdtemp(prefix="ddbench-scaling-"))
        try:
            one, one_startup = real_run(1, args.iterations, work)
            two, two_startup = real_run(2, args.iterations, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        figures["real"] = {
            "one_job_one_node_s": round(one, 1),
            "two_jobs_two_nodes_s": round(two, 1),
            "scaling_2_over_1": round(two / one, 3),
            "runner_startup_s": [round(one_startup, 1), round(two_startup, 1)],
        }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
