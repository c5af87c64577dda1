"""Distillation as Ray Train runs: distill runners, the worker loop and its Context.

A *distill runner* is one Ray Train run (`TorchTrainer`, the suite's `resources.distill`
workers) that distils a sequence of jobs handed to it one at a time through its `DistillRunner`
actor: the scheduler gives a runner its first job when it starts it and, each
time a job ends, the next ready job of the same shape (`Scheduler.handoff`), or tells it to stop.
A Train run's start-up (new controller and worker processes, each importing torch and Ray Train:
measured in benchmarks/RESULTS.md) is so paid once per runner, not once per job, while every job
still runs on its own, side by side with the other runners' jobs.

- `RayContext`: the `Context` of a Train worker. Progress goes to the run's log as one line per
  event from rank 0, named by the job (`job_name`: label, IPC, distill seed, short job id),
  posted to the run's `ProgressInbox` (a plain print without one); checkpoints go through
  `ray.train.report` (rank 0 writes the state, every rank reports, as Train requires) and
  `load_checkpoint` finds the job's last one after a restart.
- `DistillRunner`: the actor that drives a runner's Train run and is its inbox and outbox. A
  restarted worker group (`FailureConfig`) asks it again and gets the job it was on, which
  resumes from its checkpoint.
- `ProgressInbox`: the actor through which workers' progress lines reach the driver, which logs
  them as its own lines (so the driver needs none of Ray's log forwarding to show them).
- `train_loop`: one Train worker. Distils each job it is given (from a `JobFeed`, or from a
  fixed list, for a Tune trial's one job). A job that raises is a failed outcome, not a failed
  run: Train restarts lost workers, not deterministic errors.
- `fit_distill`: one Train run over a fixed list of jobs (a Tune trial's: the Train V2 idiom,
  the trial is the Train driver).

An outcome is `{"status": "ok", "meta": {...}}` or `{"status": "failed", "error": "..."}`.
"""

from __future__ import annotations

import queue
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch

from ddbench.context import Context
from ddbench.plan import DistillJob
from ddbench.runner.cluster import node_name
from ddbench.runner.work import distill_job, job_name
from ddbench.seeding import content_hash, derive_seed
from ddbench.storage import Store

Outcome = dict[str, Any]


class RayContext(Context):
    """The Context of one rank of a Ray Train run, distilling `job`."""

    def __init__(
        self,
        job: DistillJob,
        device: str,
        rank: int,
        world_size: int,
        log: Callable[[str], None] = print,
    ) -> None:
        super().__init__(
            derive_seed(job.suite_seed, "distill", job.job_id),
            device=device,
            rank=rank,
            world_size=world_size,
            log=log,
        )
        self.job = job
        self.name = job_name(job)

    def _emit(self, metrics: dict[str, float], checkpoint: dict[str, Any] | None) -> None:
        if checkpoint is None:  # plain progress: a log line from rank 0, no collective call
            super()._emit(metrics, None)
            return
        tagged = {**metrics, "job": self.job.job_id}
        with tempfile.TemporaryDirectory() as tmp:
            if self.is_main:
                state = {"job_id": self.job.job_id, "state": checkpoint}
                torch.save(state, Path(tmp) / "state.pt")
                ray.train.report(tagged, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(tagged, checkpoint=None)

    def load_checkpoint(self) -> dict[str, Any] | None:
        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            saved = torch.load(Path(d) / "state.pt", weights_only=True)
        return saved["state"] if saved["job_id"] == self.job.job_id else None


@ray.remote(num_cpus=0, max_concurrency=4)  # drive, take, next_report block in threads
class DistillRunner:
    """One distill runner: drives its Train run (`drive`) and is its job feed, in one process
    (a threaded actor: each waiting call holds a thread of its own).

    The driver `give`s a job (or None: stop) and waits on `next_report`; rank 0 of the Train run
    `take`s the job and `report`s its outcome. A job taken and not yet reported is the job the
    run is on: a restarted worker group that `take`s again gets it back."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[DistillJob | None] = queue.Queue()
        self._reports: queue.Queue[tuple[str, Outcome]] = queue.Queue()
        self._current: DistillJob | None = None

    def drive(
        self,
        real_refs: list[Any],
        store: Store,
        suite: str,
        resources: Any,
        max_failures: int,
        name: str,
        progress: Any = None,
    ) -> str | None:
        """Run the Train run until the feed says stop (`real_refs`: a list, so Ray passes the
        reference rather than the data; `progress`: the run's `ProgressInbox`). Returns None, or
        the error of a run that failed as a whole (its workers lost more than `max_failures`
        times)."""
        feed = ray.get_runtime_context().current_actor
        config = {"feed": feed, "real_ref": real_refs[0], "suite": suite, "progress": progress}
        try:
            _trainer(config, store, resources, max_failures, name).fit()
        except Exception:  # noqa: BLE001 - reported to the driver, which fails the job it was on
            return traceback.format_exc()
        return None

    def give(self, job: DistillJob | None) -> None:
        self._jobs.put(job)

    def take(self) -> DistillJob | None:
        if self._current is None:
            self._current = self._jobs.get()
        return self._current

    def report(self, job_id: str, outcome: Outcome) -> None:
        self._current = None
        self._reports.put((job_id, outcome))

    def next_report(self) -> tuple[str, Outcome]:
        return self._reports.get()


@ray.remote(num_cpus=0, max_concurrency=8)  # `drain` waits in a thread; posts take the others
class ProgressInbox:
    """Progress lines of a run's workers on their way to the driver: workers `post` (fire and
    forget), the driver waits on `drain`, which returns every line waiting once there is one."""

    def __init__(self) -> None:
        self._lines: queue.Queue[str] = queue.Queue()

    def post(self, line: str) -> None:
        self._lines.put(line)

    def drain(self) -> list[str]:
        lines = [self._lines.get()]
        while not self._lines.empty():
            lines.append(self._lines.get_nowait())
        return lines


def _poster(inbox: Any) -> Callable[[str], None]:
    """A log function posting to `inbox` (a `ProgressInbox` handle), or print without one."""
    if inbox is None:
        return print

    def post(line: str) -> None:
        inbox.post.remote(line)

    return post


def _share(value: Any, rank: int, world: int) -> Any:
    """Rank 0's `value` on every rank."""
    if world == 1:
        return value
    import torch.distributed as dist

    box = [value if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _jobs(config: dict[str, Any], rank: int, world: int) -> Iterator[DistillJob]:
    """The jobs of this run: from its feed (rank 0 takes, every rank gets the same job) or its
    fixed list."""
    feed = config.get("feed")
    if feed is None:
        yield from config["jobs"]
        return
    while True:
        job = _share(ray.get(feed.take.remote()) if rank == 0 else None, rank, world)
        if job is None:
            return
        yield job


def train_loop(config: dict[str, Any]) -> dict[str, Outcome]:
    """A Ray Train worker: distil each job of the run in turn. Outcomes go to the run's feed,
    or (fixed list) come back from rank 0 as the run's return value (`Result.return_value`)."""
    from ddbench.fit import set_threads

    set_threads(config["cpus_per_worker"])
    tctx = ray.train.get_context()
    rank, world = tctx.get_world_rank(), tctx.get_world_size()
    device = "cuda" if config["use_gpu"] and torch.cuda.is_available() else "cpu"
    store: Store = config["store"]
    real = ray.get(config["real_ref"])
    node = node_name()
    feed = config.get("feed")
    post = _poster(config.get("progress"))
    outcomes: dict[str, Outcome] = {}
    for job in _jobs(config, rank, world):
        ctx = RayContext(job, device, rank, world, post)
        try:
            meta = distill_job(job, ctx, real, store, config["suite"], node)
            outcome: Outcome = {"status": "ok", "meta": meta}
        except Exception:  # noqa: BLE001 - the job's outcome; the run goes on with the next job
            outcome = {"status": "failed", "error": traceback.format_exc()}
        ctx.barrier()
        if rank == 0:
            outcomes[job.job_id] = outcome
            if feed is not None:
                ray.get(feed.report.remote(job.job_id, outcome))
    return outcomes


def _trainer(
    config: dict[str, Any], store: Store, resources: Any, max_failures: int, name: str
) -> Any:
    """The TorchTrainer of a distill run (Train run `name`) over `config`'s jobs or feed."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    use_gpu = resources.gpus_per_worker > 0
    per_worker = {"CPU": resources.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    return TorchTrainer(
        train_loop,
        train_loop_config={
            **config,
            "store": store,
            "use_gpu": use_gpu,
            "cpus_per_worker": resources.cpus_per_worker,
        },
        scaling_config=ScalingConfig(
            num_workers=resources.workers, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        run_config=RunConfig(
            name=name,
            storage_path=store.path("ray_train"),  # checkpoints go where the outputs go
            storage_filesystem=store.filesystem,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )


def fit_distill(
    jobs: list[DistillJob],
    real_ref: Any,
    store: Store,
    suite: str,
    resources: Any,
    max_failures: int,
    progress: Any = None,
) -> dict[str, Outcome]:
    """One Train run over a fixed list of `jobs` (a Tune trial's); every job's outcome
    (`progress`: the run's `ProgressInbox`, else worker progress is printed)."""
    name = "distill-" + content_hash("".join(j.job_id for j in jobs))
    config = {"jobs": jobs, "real_ref": real_ref, "suite": suite, "progress": progress}
    try:
        result = _trainer(config, store, resources, max_failures, name).fit()
        return dict(result.return_value or {})
    except Exception:  # noqa: BLE001 - the run failed as a whole: its jobs failed
        error = traceback.format_exc()
        return {job.job_id: {"status": "failed", "error": error} for job in jobs}
