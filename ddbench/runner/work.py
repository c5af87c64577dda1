"""The Ray-free work units of a run: what one distill job or one eval cell does, and its rows.

Everything here runs wherever the runner puts it (a Ray Train worker, a Ray task, the driver
process with `--local`) and imports no Ray, so `ddbench.cli`, `ddbench.tracking` and the local
mode use it without starting or importing Ray:

- `distill_job`: one method on one job; rank 0 publishes the artifact (`artifacts/<job_id>/`,
  its `meta.json` last), with when and where it ran and what makes it self-describing
  (`self_description`: dataset, classes, normalisation, shape, method, seeds, version);
- `run_cell`: one eval cell, written as one Parquet file of rows; never raises (a failure is a
  `failed` row); an artifact with a learned lr adds a `learned_lr` row; every row names its
  evaluation protocol and config (`ddbench.protocols`) and the seconds of the job's
  prerequisites (`prerequisite_seconds`, from their artifacts' meta);
- `write_reduce`: an evaluator's job-level rows once all of its cells are written;
- `artifact_done` / `cell_done` / `all_done`: what a rerun can skip (the only reads of the
  store a run makes to find finished work; with nothing left, no Ray starts); damage they find
  (an artifact whose meta.json is missing or not JSON or whose files have the wrong size, an
  unreadable result file) is moved aside (`Store.move_aside`, never deleted) and that work is
  done again;
- `local_artifact`: an artifact on this node, verified against its digests
  (`ddbench.artifact.verify_artifact`); a cell that finds its artifact corrupt moves it aside
  (`set_aside`) and becomes a `failed` row saying so; the next run distils it again;
- `RunLog`, `RunSummary`, `count`, `fail_cells`: where a run's lines go, its counts (with the
  `[distill n/N · eval n/N · ETA]` tally its lines carry) and the lines of ended units.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from ddbench.artifact import (
    META_FILE,
    ZCA_FILE,
    CorruptArtifact,
    load_artifact,
    record_files,
    verify_artifact,
)
from ddbench.context import Context
from ddbench.plan import DistillJob, EvalCell, Plan, ipc_text
from ddbench.protocols import eval_config
from ddbench.schema import make_row, now_utc, read_rows, to_json, write_rows
from ddbench.seeding import content_hash, derive_seed
from ddbench.storage import Store
from ddbench.version import __version__
from ddbench.viz import GRID_FILE, grid_png

if TYPE_CHECKING:
    from ddbench.evals import Evaluator

Log = Callable[[str], None]


@dataclass
class RunSummary:
    """What a run did so far, and what it has to do (`jobs_total`, `cells_total`: the plan's)."""

    jobs_total: int = 0
    cells_total: int = 0
    distilled: int = 0
    distill_cached: int = 0
    distill_failed: int = 0  # failed jobs, and jobs never run because a prerequisite failed
    cells_run: int = 0
    cells_cached: int = 0
    cells_failed: int = 0
    rows_written: int = 0
    changed_jobs: set[str] = field(default_factory=set)
    started: float = field(default_factory=time.monotonic)  # time.monotonic() at the start

    @property
    def exit_code(self) -> int:
        return 1 if self.cells_failed else 0

    @property
    def jobs_done(self) -> int:
        return self.distilled + self.distill_cached + self.distill_failed

    @property
    def cells_done(self) -> int:
        return self.cells_run + self.cells_cached

    def eta_s(self) -> float | None:
        """Seconds left at the pace of the units this run ended so far (a job and a cell count
        alike); None before the first one ends, or when nothing is left."""
        ended = self.distilled + self.distill_failed + self.cells_run
        left = self.jobs_total - self.jobs_done + self.cells_total - self.cells_done
        if not ended or left <= 0:
            return None
        return (time.monotonic() - self.started) / ended * left

    def tally(self) -> str:
        """`[distill 3/21 · eval 57/138 · ETA 4 min]`: the prefix of the lines of ended units."""
        eta = self.eta_s()
        shown = f" · ETA {duration_text(eta)}" if eta is not None else ""
        return (
            f"[distill {self.jobs_done}/{self.jobs_total} · "
            f"eval {self.cells_done}/{self.cells_total}{shown}]"
        )


def duration_text(seconds: float) -> str:
    """A rough duration for people: `40 s`, `4 min`, `2.5 h`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class RunLog(Protocol):
    """Where a run's lines go (`ddbench.progress.RunOutput` in the CLI; `LineLog` otherwise):
    detail lines (`__call__`, hidden by `--quiet`), problems (`problem`, always shown), the
    run's totals (`summary`, always shown), the counts after each ended unit (`counts`, e.g. for
    progress bars) and `bars()`, a context the run's units execute in (live bars, or nothing)."""

    def __call__(self, message: str) -> None: ...

    def problem(self, message: str) -> None: ...

    def summary(self, message: str) -> None: ...

    def counts(self, summary: RunSummary) -> None: ...

    def bars(self) -> AbstractContextManager[Any]: ...


@dataclass
class LineLog:
    """A `RunLog` over a plain callable (`print`, a test's list): every line goes to it."""

    line: Log

    def __call__(self, message: str) -> None:
        self.line(message)

    def problem(self, message: str) -> None:
        self.line(message)

    def summary(self, message: str) -> None:
        self.line(message)

    def counts(self, summary: RunSummary) -> None:
        pass

    def bars(self) -> AbstractContextManager[Any]:
        return nullcontext()


def as_run_log(log: Log | RunLog) -> RunLog:
    """`log` itself when it is a `RunLog`, else a `LineLog` over it."""
    if callable(getattr(log, "problem", None)) and callable(getattr(log, "counts", None)):
        return log  # type: ignore[return-value]
    return LineLog(log)


def job_name(job: DistillJob) -> str:
    """How log lines name a distill job: `dm ipc=10 seed=0 [542520d1]` (a short job id)."""
    return f"{job.label} ipc={ipc_text(job.ipc)} seed={job.distill_seed} [{job.job_id[:8]}]"


def error_line(error: str) -> str:
    """The one line that says why a traceback's code failed (its exception, the last line)."""
    lines = error.strip().splitlines()
    return lines[-1] if lines else "unknown error"


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


def artifact_done(
    store: Store,
    job_id: str,
    log: Log | None = None,  # None: only look (a dry run), move nothing aside
) -> bool:
    """Whether the job's artifact is published and whole as far as a cheap look tells:
    meta.json parses and every file it records has its size (`verify_artifact` with
    `deep=False`: one small read and one listing, no tensor bytes, so a run's start stays cheap
    on an object store). An artifact directory that fails is moved aside (`set_aside`, when
    `log` is given) so the job is distilled and published anew; altered bytes of the right size
    are found later, by the cells that read the artifact (`local_artifact`)."""
    rel = artifact_rel(job_id)
    try:
        verify_artifact(store, rel, deep=False)
    except CorruptArtifact as exc:
        if log is not None and store.exists(rel):  # an absent artifact is simply not done
            exc.job_id = job_id
            set_aside(store, exc, log, then="this run distils it again")
        return False
    return True


def set_aside(
    store: Store,
    exc: CorruptArtifact,
    log: Log | None = None,  # None: the caller reports the returned line itself
    then: str = "rerun the suite to distil it again",  # what happens next, for the message
) -> str:
    """Move the corrupt artifact of `exc.job_id` aside in `store` (`artifacts/<job_id>.corrupt-
    <n>/`, kept, never deleted) so that it is distilled again; the one-line message, which is
    also logged (`log`, when given)."""
    assert exc.job_id is not None
    moved = store.move_aside(artifact_rel(exc.job_id))
    where = f"moved aside to {moved}" if moved else "already moved aside"
    message = f"{exc}; {where}: {then}"
    if log is not None:
        log(message)
    return message


def local_artifact(store: Store, job_id: str) -> Path:
    """A local directory holding the job's artifact (copied to this node once if remote),
    verified against the digests of its meta.json (`verify_artifact`) on every call: each call
    reads the artifact's files once through sha256 (about a second per GB on one core).

    A node-cache copy that fails verification (stale or damaged on this node) is dropped and
    copied again once; raises `CorruptArtifact` (with the job id) when the store's own copy is
    corrupt or missing. Moving it aside is the caller's decision (`set_aside`).
    """
    rel = artifact_rel(job_id)
    for fetch in ("first", "again"):
        try:
            path = store.local_copy(rel, marker=META_FILE)
            verify_artifact(Store(path.parent), path.name)
            return path
        except FileNotFoundError:  # no meta.json: never published, or moved aside meanwhile
            raise CorruptArtifact(META_FILE, "is missing", job_id) from None
        except CorruptArtifact as exc:
            if store.local_root is not None or fetch == "again":
                exc.job_id = job_id
                raise
            shutil.rmtree(path, ignore_errors=True)  # a bad node-cache copy: fetch it again
    raise AssertionError("unreachable")


def prerequisite_seconds(store: Store, job: DistillJob) -> float:
    """Distill seconds of the jobs `job` starts from (`DistillJob.depends`: d2m's cgan, d4m's
    diffusion model), each with its own prerequisites' (its meta's `prerequisite_seconds`);
    0.0 for a job without any. Reads the prerequisites' published `meta.json`."""
    total = 0.0
    for _, dep_id in job.depends:
        meta = json.loads(store.read_text(f"{artifact_rel(dep_id)}/{META_FILE}"))
        total += float(meta["distill_seconds"]) + float(meta.get("prerequisite_seconds", 0.0))
    return total


def readable_rows(
    store: Store,
    rel: str,
    log: Log | None = None,  # None: only look (a dry run), move nothing aside
) -> list[dict[str, Any]] | None:
    """The rows of result file `rel`, or None when it is absent or unreadable (corrupt or
    truncated Parquet). An unreadable file is moved aside (`<rel>.corrupt-<n>`, when `log` is
    given) and logged, so its cell runs again."""
    if not store.exists(rel):
        return None
    try:
        return read_rows(store, rel)
    except (pa.ArrowException, OSError) as exc:
        if log is not None:
            moved = store.move_aside(rel)
            cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log(f"unreadable result file {rel} ({cause}); moved aside to {moved}: its cell reruns")
        return None


def cell_done(
    store: Store,
    cell: EvalCell,
    log: Log | None = None,  # None: only look (a dry run), move nothing aside
) -> bool:
    """Whether the cell's result file holds only `ok` rows; an unreadable one is moved aside
    (`readable_rows`) and the cell is not done."""
    rows = readable_rows(store, cell.relpath, log)
    return rows is not None and all(r["status"] == "ok" for r in rows)


def all_done(plan: Plan, store: Store, log: Log) -> bool:
    """Whether every job's artifact and every cell's rows are already in `store` (a rerun with
    nothing to do, which then needs no Ray at all). Stops at the first missing piece; damage
    found on the way is moved aside (`log`) as a run's own checks would."""
    return all(artifact_done(store, job.job_id, log) for job in plan.jobs) and all(
        cell_done(store, cell, log) for cell in plan.cells
    )


# --------------------------------------------------------------------------- rows


def full_rows(
    cell: EvalCell,
    partial: list[dict[str, Any]],
    artifact_meta: dict[str, Any],
    wall_time_s: float,
    sha: str,
    node: str | None = None,
) -> list[dict[str, Any]]:
    """Add provenance columns to an evaluator's partial rows (`artifact_meta`: the artifact's
    meta with the job's `prerequisite_seconds`, which `run_cell` adds; {} when it failed)."""
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
        "prerequisite_seconds": artifact_meta.get("prerequisite_seconds"),
        "evaluator": cell.evaluator,
        "eval_version": cell.eval_version,
        "eval_params": to_json(cell.eval_params),
        "protocol": cell.protocol,
        "eval_config": eval_config(cell.evaluator, cell.eval_version, cell.eval_params),
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
    from ddbench.selection import SELECTION
    from ddbench.tuning import TuneSelection

    return TuneSelection() if name == SELECTION else EVALS.get(name)()


def failed_rows(
    cell: EvalCell, error: str, meta: dict[str, Any], sha: str, node: str | None = None
) -> list[dict[str, Any]]:
    metric = evaluator_of(cell.evaluator).primary_metric
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
    job: DistillJob, ctx: Context, real: Any, store: Store, suite_name: str, node: str
) -> dict[str, Any]:
    """Run one method on one job (any rank); rank 0 publishes the artifact. Returns its meta,
    which records the distillation's wall-clock window (`distill_started_at` / `_ended_at`,
    ISO 8601 UTC) and `node` (the machine of rank 0): provenance, not part of the result."""
    from ddbench.methods import METHODS

    method = METHODS.get(job.method)()
    params = method.Params.model_validate(job.params)
    try:
        ctx.dependencies = {key: str(local_artifact(store, dep)) for key, dep in job.depends}
    except CorruptArtifact as exc:  # rank 0 moves it aside; the next run distils it again
        raise RuntimeError(set_aside(store, exc) if ctx.is_main else str(exc)) from None
    if job.classes is not None:  # a class-subset job (continual learning): global labels kept
        real = real.subset(job.classes)
    started_at = now_utc()
    start = time.perf_counter()
    artifact = method.distill(real, job.ipc, params, ctx)
    seconds = time.perf_counter() - start
    ended_at = now_utc()
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
            "prerequisite_seconds": prerequisite_seconds(store, job),
            "distill_started_at": started_at.isoformat(),
            "distill_ended_at": ended_at.isoformat(),
            "node": node,
            "suite_name": suite_name,
            "world_size": ctx.world_size,
            "rank_digests": digests,
            **self_description(job, real),
        }
    )
    if ctx.is_main:
        with store.staged_dir(artifact_rel(job.job_id), marker=META_FILE) as adir:
            artifact.save(adir)
            if real.zca_state is not None:  # the matrices that invert the stored images
                from safetensors.torch import save_file

                save_file(dict(real.zca_state), str(adir / ZCA_FILE))
            shown = artifact.preview(real, ctx.rng("preview"))
            if shown is not None:
                grid_png(*shown, real, adir / GRID_FILE)
            record_files(adir)  # the digests cover the zca matrices and the grid too
    return {**artifact.meta, "artifact_bytes": artifact.artifact_bytes()}


def self_description(job: DistillJob, real: Any) -> dict[str, Any]:
    """The meta.json keys that let an artifact be read without its suite (docs/results.md):
    the dataset and how its images were normalised, the classes, the image shape, the space of
    the stored tensors, the method and its params, the seeds and the ddbench version."""
    zca = real.zca_state is not None
    return {
        "dataset": job.dataset,
        "dataset_params": job.dataset_params,
        "class_names": list(real.class_names),  # label id k names class_names[k]
        "num_classes": real.num_classes,
        "mean": list(real.mean),
        "std": list(real.std),
        "zca": {"applied": zca, "file": ZCA_FILE if zca else None},
        "image_shape": list(real.image_shape),  # C, H, W
        # images stored (or generated) in the dataset's normalised space; `to_pixels` inverts it
        "value_space": "normalised",
        "method_version": job.method_version,
        "method_params": job.params,
        "suite_seed": job.suite_seed,
        "ddbench_version": __version__,
    }


def learned_lr_row(cell: EvalCell, lr: float) -> dict[str, Any]:
    """The partial row recording a learned lr the cell's models trained with (`fit.py`)."""
    return {
        "arch": cell.cell.get("arch"),
        "eval_seed": cell.cell.get("eval_seed"),
        "step": cell.cell.get("step"),
        "split": "test",
        "metric": "learned_lr",
        "value": lr,
        "higher_is_better": False,
    }


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
) -> tuple[str, int, str | None]:
    """Evaluate one cell and write its Parquet file; never raises (a failure is a failed row).
    Returns its status, its number of rows and, when it failed, the one line saying why.

    `node` names the machine (Ray node id on a cluster, host name in-process) in every row.
    An artifact (the cell's or an input) found corrupt (`local_artifact`) is moved aside
    (`set_aside`) and the cell is a failed row whose error is that one line, also returned for
    the log.
    """
    from ddbench.evals import EvalJob
    from ddbench.fit import set_threads

    set_threads(cpus)
    meta: dict[str, Any] = {}
    start = time.perf_counter()
    try:
        adir = local_artifact(store, cell.job.job_id)
        meta = json.loads((adir / META_FILE).read_text())
        meta["prerequisite_seconds"] = prerequisite_seconds(store, cell.job)
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
        lr = artifact.learned_lr()
        if lr is not None:  # the models trained with it instead of the recipe's lr (fit.py)
            partial = [*partial, learned_lr_row(cell, lr)]
        rows = full_rows(cell, partial, meta, time.perf_counter() - start, sha, node)
        status, cause = "ok", None
    except CorruptArtifact as exc:  # one line, no traceback: the cause is known
        cause = set_aside(store, exc)
        rows = failed_rows(cell, cause, meta, sha, node)
        status = "failed"
    except Exception as exc:  # noqa: BLE001 - a failing cell becomes a failed row, the suite goes on
        rows = failed_rows(cell, traceback.format_exc(), meta, sha, node)
        message = str(exc).strip().splitlines()
        status, cause = "failed", f"{type(exc).__name__}: {message[0] if message else ''}"
    write_rows(store, cell.relpath, rows)
    return status, len(rows), cause


def write_reduce(
    plan: Plan,
    store: Store,
    sha: str,
    log: Log | None = None,  # None: unreadable cell files are skipped without moving them aside
) -> None:
    """Job-level rows from each evaluator's `reduce`, once all of a job's cells are written.

    One file per (job, evaluator entry, IPC): a suite may list an evaluator twice with other
    params (continual learning in 5 and in 10 steps), so the params' hash names the file.
    A group with an unreadable cell file is skipped; that file is moved aside (`readable_rows`)
    so the next run evaluates the cell again and then reduces the group."""
    from ddbench.evals import EVALS

    groups: dict[tuple[str, str, int, str], list[EvalCell]] = {}
    for cell in plan.cells:
        key = (cell.job.job_id, cell.evaluator, cell.ipc, to_json(cell.eval_params))
        groups.setdefault(key, []).append(cell)
    for (job_id, evaluator_name, ipc, params_json), cells in groups.items():
        paths = [c.relpath for c in cells]
        if not all(store.exists(p) for p in paths):
            continue
        read = [readable_rows(store, p, log) for p in paths]
        if any(r is None for r in read):
            continue
        rows = [r for rs in read if rs is not None for r in rs]
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


def count(
    summary: RunSummary,
    cell: EvalCell,
    status: str,
    n: int,
    log: RunLog,
    cause: str | None = None,
    shown: bool = True,
) -> None:
    """Count an ended cell and log it (a failed one as a problem, with its `cause`)."""
    summary.cells_run += 1
    summary.rows_written += n
    summary.changed_jobs.add(cell.job.job_id)
    if status != "ok":
        summary.cells_failed += 1
    log.counts(summary)
    if not shown:
        return
    if status == "ok":
        log(f"{summary.tally()} ok {cell.describe()}")
    else:
        log.problem(f"{summary.tally()} {status} {cell.describe()}: {cause or 'no cause given'}")


def fail_cells(
    cells: list[EvalCell], error: str, store: Store, sha: str, summary: RunSummary, log: RunLog
) -> None:
    """Cells whose inputs were never distilled: failed rows (`error` in full), one problem line."""
    for cell in cells:
        rows = failed_rows(cell, "distillation failed:\n" + error, {}, sha)
        write_rows(store, cell.relpath, rows)
        count(summary, cell, "failed", len(rows), log, shown=False)
    jobs = ", ".join(sorted({job_name(cell.job) for cell in cells}))
    log.problem(
        f"{summary.tally()} failed {len(cells)} cells of {jobs}, not distilled: {error_line(error)}"
    )
