"""Ray Train distillation: 2 data-parallel workers stay identical, and a killed worker resumes
from its checkpoint (whether 1 and 2 workers give the same artifact: test_worker_invariance.py)."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from ddbench.plan import make_plan
from ddbench.spec import load_suite

SUITE = """\
name: {name}
dataset: {{name: digits}}
ipc: [2]
methods:
  - name: dm
    params: {params}
evals: [{{name: cross_arch, params: {{archs: [mlp], seeds: 1, epochs: 5}}}}]
resources: {{distill: {{workers: {workers}, cpus_per_worker: 1}}, eval: {{cpus: 1}}}}
"""


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from ddbench.runner.cluster import init_ray

    init_ray(None, num_cpus=2)
    yield
    ray.shutdown()


def run_suite(tmp_path: Path, name: str, workers: int, params: str) -> tuple[Path, dict]:
    from ddbench.data import load_dataset
    from ddbench.runner.scheduler import run_ray
    from ddbench.storage import Store

    path = tmp_path / f"{name}.yaml"
    path.write_text(SUITE.format(name=name, workers=workers, params=params))
    plan = make_plan(load_suite(path))
    out = tmp_path / "runs" / name
    summary = run_ray(plan, load_dataset("digits"), Store(out), force=False, log=print)
    assert summary.exit_code == 0
    (job,) = plan.jobs
    meta = json.loads((out / "artifacts" / job.job_id / "meta.json").read_text())
    return out, meta


def _train_worker_pids() -> list[int]:
    """Ray Train worker processes, newest first (an older one may be a finished run's)."""
    import psutil

    procs = [
        p
        for p in psutil.process_iter(["pid", "cmdline", "create_time"])
        if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])
    ]
    return [p.info["pid"] for p in sorted(procs, key=lambda p: -p.info["create_time"])]


@pytest.mark.ray
def test_two_workers_stay_identical_and_a_killed_worker_resumes(tmp_path, local_ray):
    """A 2-worker Train run (DDP on gloo); one worker is SIGKILLed once after the first
    registered checkpoint. The run restarts its worker group, resumes from the checkpoint, and
    both ranks end with the same images (one Ray run covers both: each costs a Train start-up)."""
    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:
        while not stop.is_set():  # no deadline of its own: the run's end stops it
            # a registered checkpoint: Train writes its manager snapshot after registering one
            # (a bare checkpoint_* directory may still be in flight, and a worker killed then
            # restarts from nothing)
            ckpts = list(
                (tmp_path / "runs").glob("**/ray_train/**/checkpoint_manager_snapshot.json")
            )
            pids = _train_worker_pids()
            if ckpts and pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return
            time.sleep(0.2)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        _, meta = run_suite(
            tmp_path, "kill", 2, "{iterations: 400, batch_real: 8, checkpoint_every: 20}"
        )
    finally:
        stop.set()
        thread.join()
    assert killed, "the worker was never killed: the test did not exercise recovery"
    assert meta["resumed_from_iteration"] > 0
    assert meta["iterations"] == 400
    assert meta["world_size"] == 2
    assert len(meta["rank_digests"]) == 2 and len(set(meta["rank_digests"])) == 1
    assert math.isfinite(meta["first_loss"]) and math.isfinite(meta["last_loss"])
