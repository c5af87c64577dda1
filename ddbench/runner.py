"""Executes a plan: the only module that imports ray.

- A distill job runs as a Ray Train `TorchTrainer` (one or more data-parallel workers, gloo on the
  CPU, NCCL on GPUs). The method checkpoints through its `Context`; `FailureConfig` restarts a lost
  worker, which resumes from the last checkpoint. Rank 0 saves the artifact under
  `artifacts/<job_id>/` of the run's `Store` (a local directory or a URI, `ddbench.storage`);
  eval cells on any node read it through the store, never through a shared local disk.
- Each eval cell is a `ray.remote` task with the suite's eval resources; it writes its own Parquet
  file atomically, so a killed driver loses nothing finished. The driver drains them with
  `ray.wait` while later distill jobs run.
- A job with a `tune:` block runs as a Ray Tune experiment (a driver task, `_tune_task`) once
  its prerequisites are distilled: each trial is the Train driver of its own trial job (Train V2
  idiom), scores it with selection cells as Ray tasks, and the chosen trial's artifact is
  published as the job's (`ddbench.tuning`).
- `mode="local"` runs the same plan in-process without Ray (debugging, unit tests); it refuses
  tuned jobs.

A rerun skips every job whose artifact exists and every cell whose file holds `ok` rows; failed
cells are retried. `force=True` recomputes everything.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ddbench import __version__
from ddbench.artifact import META_FILE, load_artifact
from ddbench.context import Context, LocalContext, pick_device
from ddbench.errors import UserError
from ddbench.plan import DistillJob, EvalCell, Plan
from ddbench.schema import make_row, now_utc, read_rows, to_json, write_rows
from ddbench.seeding import content_hash, derive_seed
from ddbench.storage import Store
from ddbench.viz import GRID_FILE, grid_png

if TYPE_CHECKING:
    from ddbench.evals import Evaluator
    from ddbench.spec import DistillResources, LoadedSuite, Resources

Log = Callable[[str], None]
# Ray Train V2 blocks ~2 s per report at its default health-check interval (ENVIRONMENT.md).
# Train runs queue for CPUs behind eval cells and each other (Tune trials): at the default 60 s
# a waiting controller gives up, logs WorkerGroupStartupTimeoutError and starts over (without a
# limit, so only the churn changes; an infeasible request waits either way).
RAY_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "1800",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_V2_ENABLED": "1",
}


@dataclass
class RunSummary:
    distilled: int = 0
    distill_cached: int = 0
    cells_run: int = 0
    cells_cached: int = 0
    cells_failed: int = 0
    rows_written: int = 0
    changed_jobs: set[str] = field(default_factory=set)

    @property
    def exit_code(self) -> int:
        return 1 if self.cells_failed else 0


def git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def artifact_rel(job_id: str) -> str:
    """Where a job's artifact lives in the run's store."""
    return f"artifacts/{job_id}"


def artifact_done(store: Store, job_id: str) -> bool:
    return store.exists(f"{artifact_rel(job_id)}/{META_FILE}")


def local_artifact(store: Store, job_id: str) -> Path:
    """A local directory holding the job's artifact (copied to this node once if remote)."""
    return store.local_copy(artifact_rel(job_id), marker=META_FILE)


def cell_done(store: Store, cell: EvalCell) -> bool:
    if not store.exists(cell.relpath):
        return False
    return all(r["status"] == "ok" for r in read_rows(store, cell.relpath))


# --------------------------------------------------------------------------- rows


def full_rows(
    cell: EvalCell,
    partial: list[dict[str, Any]],
    artifact_meta: dict[str, Any],
    wall_time_s: float,
    sha: str,
    node: str | None = None,
) -> list[dict[str, Any]]:
    """Add provenance columns to an evaluator's partial rows."""
    job = cell.job
    base = {
        "suite": artifact_meta.get("suite_name", ""),
        "job_id": job.job_id,
        "method": job.method,
        "method_label": job.label,
        "method_version": job.method_version,
        "method_params": artifact_meta.get("chosen_params_json", job.params_json),
        "dataset": job.dataset,
        "ipc": cell.ipc,
        "distill_seed": job.distill_seed,
        "artifact_bytes": int(artifact_meta.get("artifact_bytes", 0)),
        "distill_seconds": float(artifact_meta.get("distill_seconds", float("nan"))),
        "evaluator": cell.evaluator,
        "eval_version": cell.eval_version,
        "eval_params": to_json(cell.eval_params),
        "wall_time_s": wall_time_s,
        "ddbench_version": __version__,
        "git_sha": sha,
        "created_at": now_utc(),
        "node": node,
    }
    return [make_row(**{**base, "status": "ok", "error": None, **p}) for p in partial]


def evaluator_of(name: str) -> Evaluator:
    """The evaluator of a cell: a registered one, or Tune's selection (`ddbench.tuning`)."""
    from ddbench.evals import EVALS
    from ddbench.tuning import SELECTION, TuneSelection

    return TuneSelection() if name == SELECTION else EVALS.get(name)()


def failed_rows(
    cell: EvalCell, error: str, meta: dict[str, Any], sha: str, node: str | None = None
) -> list[dict[str, Any]]:
    metric = getattr(evaluator_of(cell.evaluator), "primary_metric", "top1")
    partial = {
        "arch": cell.cell.get("arch"),
        "eval_seed": cell.cell.get("eval_seed"),
        "step": cell.cell.get("step"),
        "split": "test",
        "metric": metric,
        "value": float("nan"),
        "higher_is_better": True,
    }
    base = full_rows(cell, [{**partial, "value": 0.0}], meta, 0.0, sha, node)[0]
    return [{**base, "value": float("nan"), "status": "failed", "error": error[-4000:]}]


# --------------------------------------------------------------------------- work units


def distill_job(
    job: DistillJob, ctx: Context, real: Any, store: Store, suite_name: str
) -> dict[str, Any]:
    """Run one method on one job (any rank); rank 0 saves the artifact. Returns its meta."""
    from ddbench.methods import METHODS

    method = METHODS.get(job.method)()
    params = method.Params.model_validate(job.params)
    ctx.dependencies = {key: str(local_artifact(store, dep_id)) for key, dep_id in job.depends}
    if job.classes is not None:  # a class-subset job (continual learning): global labels kept
        real = real.subset(job.classes)
    start = time.perf_counter()
    artifact = method.distill(real, job.ipc or 0, params, ctx)
    seconds = time.perf_counter() - start
    digest = tensor_digest(artifact.tensors())
    digests = ctx.gather(digest)
    if len(set(digests)) != 1:  # data-parallel ranks must end with the same distillate
        raise RuntimeError(f"{job.method}: ranks disagree on the distillate: {digests}")
    artifact.meta.update(
        {
            "job_id": job.job_id,
            "method": job.method,
            "label": job.label,
            "ipc": job.ipc,
            "distill_seed": job.distill_seed,
            "classes": None if job.classes is None else list(job.classes),
            "distill_seconds": seconds,
            "suite_name": suite_name,
            "world_size": ctx.world_size,
            "rank_digests": digests,
        }
    )
    if ctx.is_main:
        with store.staged_dir(artifact_rel(job.job_id), marker=META_FILE) as adir:
            artifact.save(adir)
            shown = artifact.preview(real, ctx.rng("preview"))
            if shown is not None:
                grid_png(*shown, real, adir / GRID_FILE)
    return {**artifact.meta, "artifact_bytes": artifact.artifact_bytes()}


def tensor_digest(tensors: dict[str, Any]) -> str:
    """A content hash of named tensors (compares distillates across ranks)."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(
            tensors[name].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        )
    return h.hexdigest()[:16]


def run_cell(
    cell: EvalCell,
    real: Any,
    store: Store,
    device: str,
    cpus: float,
    sha: str,
    node: str | None = None,
) -> tuple[str, int]:
    """Evaluate one cell and write its Parquet file; never raises (a failure is a failed row).

    `node` names the machine (Ray node id on a cluster, host name in-process) in every row.
    """
    import json

    from ddbench.evals import EvalJob
    from ddbench.fit import set_threads

    set_threads(cpus)
    meta: dict[str, Any] = {}
    start = time.perf_counter()
    try:
        adir = local_artifact(store, cell.job.job_id)
        meta = json.loads((adir / META_FILE).read_text())
        artifact = load_artifact(adir)
        evaluator = evaluator_of(cell.evaluator)
        params = evaluator.Params.model_validate(cell.eval_params)
        seed = derive_seed(cell.job.suite_seed, "eval", cell.job.job_id, cell.cell_id)
        ctx = Context(seed, device=device)
        ctx.cache_dir = str(store.cache_root())  # cells share cached reference models (teachers)
        inputs = {key: load_artifact(local_artifact(store, job_id)) for key, job_id in cell.inputs}
        partial = evaluator.run(
            cell.cell, EvalJob(artifact, real, cell.ipc, cell.job.dataset, inputs), params, ctx
        )
        rows = full_rows(cell, partial, meta, time.perf_counter() - start, sha, node)
        status = "ok"
    except Exception:  # noqa: BLE001 - a failing cell becomes a failed row, the suite goes on
        rows = failed_rows(cell, traceback.format_exc(), meta, sha, node)
        status = "failed"
    write_rows(store, cell.relpath, rows)
    return status, len(rows)


def write_reduce(plan: Plan, store: Store, sha: str) -> None:
    """Job-level rows from each evaluator's `reduce`, once all of a job's cells are written.

    One file per (job, evaluator entry, IPC): a suite may list an evaluator twice with other
    params (continual learning in 5 and in 10 steps), so the params' hash names the file."""
    from ddbench.evals import EVALS

    groups: dict[tuple[str, str, int, str], list[EvalCell]] = {}
    for cell in plan.cells:
        key = (cell.job.job_id, cell.evaluator, cell.ipc, to_json(cell.eval_params))
        groups.setdefault(key, []).append(cell)
    for (job_id, evaluator_name, ipc, params_json), cells in groups.items():
        paths = [c.relpath for c in cells]
        if not all(store.exists(p) for p in paths):
            continue
        rows = [r for p in paths for r in read_rows(store, p)]
        evaluator = EVALS.get(evaluator_name)()
        params = evaluator.Params.model_validate(cells[0].eval_params)
        partial = evaluator.reduce([r for r in rows if r["status"] == "ok"], params)
        if partial:
            template = {k: v for k, v in rows[0].items()}
            reduced = [
                make_row(
                    **{
                        **template,
                        "arch": None,
                        "eval_seed": None,
                        "step": None,
                        "status": "ok",
                        "error": None,
                        "created_at": now_utc(),
                        **p,
                    }
                )
                for p in partial
            ]
            name = f"reduce-ipc{ipc}-{content_hash(params_json, 8)}.parquet"
            write_rows(store, f"results/{evaluator_name}/{job_id}/{name}", reduced)


# --------------------------------------------------------------------------- local mode


def run_local(
    plan: Plan, real: Any, store: Store, force: bool, log: Log, cpus: float | None = None
) -> RunSummary:
    """The same plan in-process: jobs then their cells, one at a time, `cpus` torch threads
    (default: every core)."""
    tuned = sorted({j.label for j in plan.jobs if j.tune})
    if tuned:
        raise UserError(f"methods {tuned} have a tune: block, which runs on Ray: drop --local")
    summary = RunSummary()
    sha = git_sha()
    device = pick_device()
    for job in plan.jobs:
        cells = plan.cells_of(job)
        if force or not artifact_done(store, job.job_id):
            log(f"distill {job.label} ipc={job.ipc} seed={job.distill_seed} [{job.job_id}]")
            try:
                ctx = LocalContext(derive_seed(job.suite_seed, "distill", job.job_id), device, log)
                distill_job(job, ctx, real, store, plan.suite)
                summary.distilled += 1
                summary.changed_jobs.add(job.job_id)
            except Exception:  # noqa: BLE001 - the job's cells become failed rows
                _fail_cells(cells, traceback.format_exc(), store, sha, summary, log)
                continue
        else:
            summary.distill_cached += 1
        missing = [j.job_id for j in plan.inputs_of(job) if not artifact_done(store, j.job_id)]
        if missing:
            error = f"class-subset jobs {missing} of these cells were not distilled"
            _fail_cells(cells, error, store, sha, summary, log)
            continue
        for cell in cells:
            if not force and cell_done(store, cell):
                summary.cells_cached += 1
                continue
            status, n = run_cell(
                cell, real, store, device, cpus or os.cpu_count() or 1, sha, socket.gethostname()
            )
            _count(summary, cell, status, n, log)
    write_reduce(plan, store, sha)
    return summary


def _count(summary: RunSummary, cell: EvalCell, status: str, n: int, log: Log) -> None:
    summary.cells_run += 1
    summary.rows_written += n
    summary.changed_jobs.add(cell.job.job_id)
    if status != "ok":
        summary.cells_failed += 1
    log(f"{status:6s} {cell.describe()}")


def _fail_cells(
    cells: list[EvalCell], error: str, store: Store, sha: str, summary: RunSummary, log: Log
) -> None:
    log(f"distillation failed: {error.strip().splitlines()[-1]}")
    for cell in cells:
        rows = failed_rows(cell, "distillation failed:\n" + error, {}, sha)
        write_rows(store, cell.relpath, rows)
        _count(summary, cell, "failed", len(rows), log)


# --------------------------------------------------------------------------- Ray mode


def init_ray(
    address: str | None, num_cpus: int | None = None, dashboard: bool = False
) -> str | None:
    """Join a cluster at `address`, or start a private embedded one on 127.0.0.1; returns the
    Ray dashboard's URL when `dashboard` asks the embedded cluster for one (a cluster's own
    dashboard is the cluster's business).

    The environment is set before ray is imported: Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
    once, at import. The embedded cluster sets it to 0 (single-node mode), without which Ray
    turns 127.0.0.1 into the machine's network address; a driver joining a cluster leaves it
    alone, so it resolves its address as the cluster's nodes do.
    """
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    if not address:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    runtime_env = {"env_vars": dict(RAY_ENV)}
    try:
        if address:
            ray.init(
                address=address,
                runtime_env=runtime_env,
                logging_level="WARNING",
                log_to_driver=True,
            )
        else:
            context = ray.init(
                address="local",
                num_cpus=num_cpus or os.cpu_count(),
                _node_ip_address="127.0.0.1",
                include_dashboard=dashboard,
                dashboard_host="127.0.0.1",  # loopback only, like every process of the run
                runtime_env=runtime_env,
                logging_level="WARNING",
            )
            if dashboard:
                return f"http://{context.dashboard_url}"
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"cannot start or join Ray at {address or 'local'}: {exc}") from None
    return None


# suite field of each resource a distill worker / an eval cell asks Ray for
RESOURCE_FIELDS = {
    "distill": {"CPU": "cpus_per_worker", "GPU": "gpus_per_worker"},
    "eval": {"CPU": "cpus", "GPU": "gpus"},
}


def unplaceable(
    resources: Resources, nodes: list[dict[str, float]]
) -> list[tuple[tuple[str, ...], str]]:
    """(suite location, message) of each request of a suite's `resources` that no
    node of `nodes` (each node's total resources, as `ray.nodes()` reports) can ever hold: one
    distill worker, the distill run's `workers` together, one eval cell."""
    problems: list[tuple[tuple[str, ...], str]] = []
    for part, fields in RESOURCE_FIELDS.items():
        spec = getattr(resources, part)
        want = {key: getattr(spec, name) for key, name in fields.items()}
        want = {key: amount for key, amount in want.items() if amount > 0}
        if any(all(node.get(k, 0.0) >= v for k, v in want.items()) for node in nodes):
            continue
        # the request no node meets on its own (else the first: they only fail together)
        short = [k for k in want if not any(node.get(k, 0.0) >= want[k] for node in nodes)]
        key = (short or list(want))[0]
        largest = max((node.get(key, 0.0) for node in nodes), default=0.0)
        problems.append(
            (
                ("resources", part, fields[key]),
                f"{want[key]:g} {key} per {'distill worker' if part == 'distill' else 'eval cell'}"
                f", but no node has that many (the largest has {largest:g})",
            )
        )
    distill = resources.distill
    fit = worker_slots(distill, nodes)
    if not problems and fit < distill.workers:
        problems.append(
            (
                ("resources", "distill", "workers"),
                f"{distill.workers} workers, but the cluster holds {fit} of "
                f"{distill.cpus_per_worker:g} CPU / {distill.gpus_per_worker:g} GPU",
            )
        )
    return problems


def worker_slots(distill: DistillResources, nodes: list[dict[str, float]]) -> int:
    """How many distill workers of `distill` the `nodes` hold at once (a worker sits on one
    node: each node's CPUs and, for GPU workers, GPUs are divided separately)."""
    per_worker = {"CPU": distill.cpus_per_worker, "GPU": distill.gpus_per_worker}
    return sum(
        min(int(node.get(k, 0.0) // v) for k, v in per_worker.items() if v > 0) for node in nodes
    )


def alive_nodes() -> list[dict[str, float]]:
    """Total resources of each live node of the Ray cluster."""
    import ray

    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def check_resources(loaded: LoadedSuite, embedded: bool, log: Log) -> None:
    """Stop before any work when Ray can never place what the suite asks for (`unplaceable`).
    Nothing joins the embedded Ray, so there it is a `UserError` naming the suite's field; a
    cluster's autoscaler may still add such a node, so there it is a warning."""
    problems = [
        f"{loaded.where(loc)}: {'.'.join(loc)}: {message}"
        for loc, message in unplaceable(loaded.suite.resources, alive_nodes())
    ]
    if not problems:
        return
    if embedded:
        problems.append("lower them, or run on a cluster that has such nodes with --address")
        raise UserError("\n".join(problems))
    for problem in problems:
        log(f"warning: {problem}; the run waits until the cluster has such a node")


def _train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: distil each job of the group in turn, skipping finished ones.

    Grouping the pending jobs into one Train run pays Train's start-up (~10 s) once. After a
    restart (`FailureConfig`), rank 0 sees which artifacts exist, every rank skips those, and
    the interrupted job resumes from its checkpoint (checkpoints carry their job id).
    """
    import ray
    import ray.train
    import torch

    from ddbench.fit import set_threads

    set_threads(config["cpus_per_worker"])
    tctx = ray.train.get_context()
    rank, world = tctx.get_world_rank(), tctx.get_world_size()
    device = "cuda" if config["use_gpu"] and torch.cuda.is_available() else "cpu"
    store: Store = config["store"]
    real = ray.get(config["real_ref"])

    for job in config["jobs"]:
        ctx = Context(
            derive_seed(job.suite_seed, "distill", job.job_id),
            device=device,
            rank=rank,
            world_size=world,
        )
        done = torch.tensor([float(artifact_done(store, job.job_id))])
        if float(ctx.broadcast_(done)) == 1.0:
            continue

        def report(
            metrics: dict[str, float], checkpoint: dict[str, Any] | None, job_id: str = job.job_id
        ) -> None:
            if checkpoint is None:  # plain progress: a log line, no collective call
                if rank == 0:
                    print(
                        f"[{job_id}] " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()),
                        flush=True,
                    )
                return
            with tempfile.TemporaryDirectory() as tmp:
                if rank == 0:
                    torch.save({"job_id": job_id, "state": checkpoint}, Path(tmp) / "state.pt")
                    ckpt = ray.train.Checkpoint.from_directory(tmp)
                    ray.train.report({**metrics, "job": job_id}, checkpoint=ckpt)
                else:
                    ray.train.report({**metrics, "job": job_id}, checkpoint=None)

        def load(job_id: str = job.job_id) -> dict[str, Any] | None:
            ckpt = ray.train.get_checkpoint()
            if ckpt is None:
                return None
            with ckpt.as_directory() as d:
                saved = torch.load(Path(d) / "state.pt", weights_only=True)
            return saved["state"] if saved["job_id"] == job_id else None

        ctx._report_fn, ctx._load_fn = report, load
        try:
            distill_job(job, ctx, real, store, config["suite"])
        except Exception:  # noqa: BLE001 - recorded for the driver; the group goes on
            if rank == 0:
                write_failure(store, job, traceback.format_exc())
        ctx.barrier()


def failure_rel(job: DistillJob) -> str:
    """The marker a Train worker leaves when a job raised (read by the driver)."""
    return f"{artifact_rel(job.job_id)}.failed"


def write_failure(store: Store, job: DistillJob, error: str) -> None:
    store.write_text(failure_rel(job), error)


def read_failure(store: Store, job: DistillJob) -> str | None:
    rel = failure_rel(job)
    return store.read_text(rel) if store.exists(rel) else None


def _fit_distill(
    jobs: list[DistillJob],
    real_ref: Any,
    store: Store,
    suite: str,
    resources: Any,
    max_failures: int,
    name: str,
) -> None:
    """One TorchTrainer run (Train run `name`) over `jobs`, from wherever it is called: the
    group driver task or a Tune trial (the Train V2 idiom: the trial is the Train driver)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    use_gpu = resources.gpus_per_worker > 0
    per_worker = {"CPU": resources.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={
            "jobs": jobs,
            "real_ref": real_ref,
            "store": store,
            "suite": suite,
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
    trainer.fit()


def _distill_group_task(
    jobs: list[DistillJob],
    real_refs: list[Any],
    store: Store,
    suite: str,
    resources: Any,
    max_failures: int,
) -> None:
    """A Ray task that drives one TorchTrainer run over a group of distill jobs (`real_refs`: a
    list, so Ray passes the reference rather than the data)."""
    name = "distill-" + content_hash("".join(j.job_id for j in jobs))
    _fit_distill(jobs, real_refs[0], store, suite, resources, max_failures, name)


# --------------------------------------------------------------------------- Ray Tune


def _search_space(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A suite's `tune.space` as Ray Tune search-space objects."""
    from ray import tune

    makers = {
        "grid": tune.grid_search,
        "choice": tune.choice,
        "uniform": lambda v: tune.uniform(*v),
        "loguniform": lambda v: tune.loguniform(*v),
        "randint": lambda v: tune.randint(*v),
    }
    return {
        key: makers[kind](values) for key, dist in space.items() for kind, values in dist.items()
    }


def _concurrent_trials(spec: dict[str, Any], resources: DistillResources, experiments: int) -> int:
    """`max_concurrent_trials`, or this experiment's share of the distill runs of the suite's
    resources the cluster holds (`worker_slots` // workers per run), split between the
    `experiments` Tune experiments of the run, which all start together."""
    if spec["max_concurrent_trials"]:
        return int(spec["max_concurrent_trials"])
    runs = worker_slots(resources, alive_nodes()) // resources.workers
    return max(1, runs // experiments)


def _tune_task(
    job: DistillJob,
    real_refs: list[Any],
    store: Store,
    suite: Any,
    max_failures: int,
    has_driver: bool,
    sha: str,
    force: bool,
    experiments: int,
) -> None:
    """A Ray task running the Tune experiment of a tuned job (`ddbench.tuning`), then
    publishing the chosen trial's artifact as the job's (or a failure marker); `force`
    recomputes every trial."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from ddbench.tuning import TrialScore, choose

    spec = job.tune
    assert spec is not None, "_tune_task of a job without a tune block"
    scheduler = None
    if spec["scheduler"] == "asha":
        from ray.tune.schedulers import ASHAScheduler

        # a trial reports once per scored model: ASHA drops weak trials after their first
        # models instead of scoring all `eval_seeds` (distillation itself is not cut short)
        scheduler = ASHAScheduler(
            time_attr="training_iteration", max_t=spec["eval_seeds"], grace_period=1
        )
    trainable = tune.with_parameters(
        _tune_trial,
        job=job,
        real_refs=real_refs,
        store=store,
        suite=suite,
        max_failures=max_failures,
        sha=sha,
        force=force,
    )
    # Tune registers a trainable under its name in a registry shared by the whole Ray job: the
    # tuned jobs' experiments run side by side, so each needs its own name, or their trials
    # run one another's jobs
    trainable.__name__ = f"ddbench_trial_{job.job_id}"
    # the trial only drives: Tune needs a non-empty bundle, and 1 MiB of memory holds nothing
    # back (plus the head's `driver` resource on a cluster that has one, as for the group run)
    held = {"cpu": 0, "memory": 2**20, **({"driver": 0.01} if has_driver else {})}
    seed = derive_seed(job.suite_seed, "tune", job.job_id) % 2**32
    tuner = tune.Tuner(
        tune.with_resources(trainable, held),
        param_space=_search_space(spec["space"]),
        tune_config=tune.TuneConfig(
            metric=spec["metric"],
            mode=spec["mode"],
            num_samples=spec["num_samples"],
            scheduler=scheduler,
            # seeded samples, not the clock; the concurrency limit goes here, since Tune ignores
            # max_concurrent_trials beside a SearchGenerator (it warns and runs every trial)
            search_alg=BasicVariantGenerator(
                random_state=seed,
                max_concurrent=_concurrent_trials(spec, suite.resources.distill, experiments),
            ),
        ),
        run_config=tune.RunConfig(
            name=f"tune-{job.job_id}",
            storage_path=store.path("ray_tune"),  # TensorBoard / CSV / JSON per trial
            storage_filesystem=store.filesystem,
            verbose=0,
        ),
    )
    tic = time.perf_counter()
    grid = tuner.fit()
    trials = [
        TrialScore(
            r.metrics["trial_job_id"],
            {key: r.config[key] for key in spec["space"]},
            float(r.metrics[spec["metric"]]),
            int(r.metrics["models"]),
        )
        for r in grid
        if r.metrics and "trial_job_id" in r.metrics
    ]
    best = choose(trials, spec["eval_seeds"], spec["mode"])
    if best is None:
        errors = [str(r.error).strip().splitlines()[-1] for r in grid if r.error is not None]
        write_failure(store, job, f"tune: no trial of {len(grid)} finished: {errors[:3]}")
        return
    _publish_choice(store, job, best, len(grid), time.perf_counter() - tic)


def _publish_choice(
    store: Store, job: DistillJob, best: Any, n_trials: int, sweep_seconds: float
) -> None:
    """The chosen trial's artifact becomes the tuned job's, its meta naming the choice."""
    import json
    import shutil

    from ddbench.tuning import trial_job

    src = local_artifact(store, best.trial_job_id)
    meta = json.loads((src / META_FILE).read_text())
    meta.update(
        {
            "job_id": job.job_id,
            "chosen_params_json": trial_job(job, best.config).params_json,
            "tune": {
                "config": best.config,
                "trial_job_id": best.trial_job_id,
                "val_top1": best.val_top1,
                "trials": n_trials,
                "sweep_seconds": sweep_seconds,
            },
        }
    )
    with store.staged_dir(artifact_rel(job.job_id), marker=META_FILE) as adir:
        shutil.copytree(src, adir)
        (adir / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))


def _tune_trial(
    config: dict[str, Any],
    job: DistillJob,
    real_refs: list[Any],
    store: Store,
    suite: Any,
    max_failures: int,
    sha: str,
    force: bool,
) -> None:
    """One Tune trial: distil the trial job in a Train run (skipped when its artifact exists,
    unless `force`), then score it with the selection cells as Ray tasks, reporting the running
    mean val top1 after each model."""
    import statistics

    import ray
    from ray import tune
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from ddbench.tuning import selection_cells, trial_job

    trial = trial_job(job, config)
    if force:
        store.delete(artifact_rel(trial.job_id))
    if not artifact_done(store, trial.job_id):
        store.delete(failure_rel(trial))
        name = f"trial-{trial.job_id}"
        _fit_distill(
            [trial], real_refs[0], store, suite.name, suite.resources.distill, max_failures, name
        )
    if not artifact_done(store, trial.job_id):
        error = read_failure(store, trial) or "the Train run ended without an artifact"
        raise RuntimeError(f"trial {trial.job_id} {config}: {error.strip().splitlines()[-1]}")
    res = suite.resources.eval
    task = ray.remote(_cell_task).options(
        num_cpus=res.cpus,
        num_gpus=res.gpus,
        max_retries=1,
        # outside the trial's placement group, which holds no CPU for them
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None),
    )
    values: list[float] = []
    pending: dict[Any, EvalCell] = {}
    for cell in selection_cells(job, trial, config, suite.ipc):
        if not force and cell_done(store, cell):
            values += [r["value"] for r in read_rows(store, cell.relpath)]
        else:
            pending[task.remote(cell, real_refs[0], store, res.device, res.cpus, sha)] = cell

    def report() -> None:
        mean = statistics.mean(values) if values else float("nan")
        tune.report({"val_top1": mean, "models": len(values), "trial_job_id": trial.job_id})

    if values:
        report()
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        cell = pending.pop(ref)
        status, _ = ray.get(ref)
        if status == "ok":  # a failed model is a failed row; the trial scores fewer models
            values += [r["value"] for r in read_rows(store, cell.relpath)]
        report()


def run_ray(
    plan: Plan, real: Any, store: Store, force: bool, log: Log, max_failures: int = 2
) -> RunSummary:
    """Distil pending jobs in one Train run (a driver task) while eval cells run as tasks."""
    import ray

    summary = RunSummary()
    sha = git_sha()
    res = plan.loaded.suite.resources
    real_ref = ray.put(real)
    cell_task = ray.remote(_cell_task).options(
        num_cpus=res.eval.cpus, num_gpus=res.eval.gpus, max_retries=1
    )
    device = res.eval.device
    if force:
        for job in plan.jobs:
            store.delete(artifact_rel(job.job_id))
    todo = [j for j in plan.jobs if not artifact_done(store, j.job_id)]
    for job in todo:
        store.delete(failure_rel(job))
    summary.distill_cached = len(plan.jobs) - len(todo)
    # On a cluster whose head carries the custom resource `driver` (cluster/), driver tasks run
    # there and never hold a GPU node's CPU.
    has_driver = "driver" in ray.cluster_resources()
    on_head = {"num_cpus": 0, "resources": {"driver": 0.01} if has_driver else None}
    drivers: list[Any] = []  # the group's Train run and the tuned jobs' Tune experiments
    group = [j for j in todo if not j.tune]
    if group:
        log(
            f"distilling {len(group)} jobs in one Ray Train run: "
            + ", ".join(f"{j.label}/ipc{j.ipc}" for j in group)
        )
        drivers.append(
            ray.remote(_distill_group_task)
            .options(**on_head)
            .remote(group, [real_ref], store, plan.suite, res.distill, max_failures)
        )
    tuned = [j for j in todo if j.tune]
    untuned = list(tuned)  # tuned jobs whose Tune experiment has not started
    job_of = {j.job_id: j for j in plan.jobs}

    def start_tunes() -> None:
        """Start the Tune experiment of each tuned job whose prerequisites are distilled."""
        for job in list(untuned):
            deps = [job_of[dep_id] for _, dep_id in job.depends]
            if all(artifact_done(store, d.job_id) for d in deps):
                untuned.remove(job)
                log(f"tuning {job.label} ipc={job.ipc}: a Ray Tune experiment [{job.job_id}]")
                drivers.append(
                    ray.remote(_tune_task)
                    .options(**on_head)
                    .remote(
                        job,
                        [real_ref],
                        store,
                        plan.loaded.suite,
                        max_failures,
                        has_driver,
                        sha,
                        force,
                        len(tuned),
                    )
                )
                continue
            error = next(filter(None, (read_failure(store, d) for d in deps)), None)
            if error is not None or not drivers:
                untuned.remove(job)
                write_failure(store, job, error or "its prerequisite jobs were not distilled")

    waiting = list(plan.jobs)  # jobs whose cells are not submitted yet
    pending: dict[Any, EvalCell] = {}
    cells_of = {job.job_id: plan.cells_of(job) for job in plan.jobs}
    # a job's cells also read its class-subset jobs: they wait for all of them
    needed_of = {job.job_id: [job, *plan.inputs_of(job)] for job in plan.jobs}

    def submit_ready(driver_done: bool) -> None:
        """Submit the cells of every job whose artifacts are all there (polled each tick)."""
        for job in list(waiting):
            cells, needed = cells_of[job.job_id], needed_of[job.job_id]
            if all(artifact_done(store, j.job_id) for j in needed):
                waiting.remove(job)
                if job in todo:
                    summary.distilled += 1
                    summary.changed_jobs.add(job.job_id)
                    log(f"distilled {job.label} ipc={job.ipc} [{job.job_id}]")
                for cell in cells:
                    if not force and cell_done(store, cell):
                        summary.cells_cached += 1
                        continue
                    ref = cell_task.remote(cell, real_ref, store, device, res.eval.cpus, sha)
                    pending[ref] = cell
                continue
            error = next(filter(None, (read_failure(store, j) for j in needed)), None)
            if error is not None or driver_done:
                waiting.remove(job)
                _fail_cells(
                    cells,
                    error or "the Ray Train run ended without this artifact",
                    store,
                    sha,
                    summary,
                    log,
                )

    while waiting or pending:
        start_tunes()
        refs = list(pending) + drivers
        ready, _ = ray.wait(refs, num_returns=1, timeout=1.0) if refs else ([], [])
        for ref in ready:
            if ref in drivers:
                drivers.remove(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayError as exc:
                    log(f"a Ray Train / Tune driver failed: {str(exc).strip().splitlines()[-1]}")
                continue
            cell = pending.pop(ref)
            try:
                status, n = ray.get(ref)
            except ray.exceptions.RayError as exc:  # the task's worker died twice
                rows = failed_rows(cell, f"eval task lost: {exc}", {}, sha)
                write_rows(store, cell.relpath, rows)
                status, n = "failed", len(rows)
            _count(summary, cell, status, n, log)
        submit_ready(driver_done=not drivers and not untuned)
    write_reduce(plan, store, sha)
    return summary


def _cell_task(
    cell: EvalCell, real: Any, store: Store, device: str, cpus: float, sha: str
) -> tuple[str, int]:
    import ray

    node = "ray:" + ray.get_runtime_context().get_node_id()[:12]
    return run_cell(cell, real, store, device, cpus, sha, node)
