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
- `artifact_done` / `cell_done`: what a rerun can skip (the only reads of the store a run makes
  to find finished work);
- `RunSummary`, `count`, `fail_cells`: the counts and log lines a run ends with.
"""

from __future__ import annotations

import json
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ddbench import __version__
from ddbench.artifact import META_FILE, ZCA_FILE, load_artifact
from ddbench.context import Context
from ddbench.plan import DistillJob, EvalCell, Plan
from ddbench.protocols import eval_config
from ddbench.schema import make_row, now_utc, read_rows, to_json, write_rows
from ddbench.seeding import content_hash, derive_seed
from ddbench.storage import Store
from ddbench.viz import GRID_FILE, grid_png

if TYPE_CHECKING:
    from ddbench.evals import Evaluator

Log = Callable[[str], None]


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


def prerequisite_seconds(store: Store, job: DistillJob) -> float:
    """Distill seconds of the jobs `job` starts from (`DistillJob.depends`: d2m's cgan, d4m's
    diffusion model), each with its own prerequisites' (its meta's `prerequisite_seconds`);
    0.0 for a job without any. Reads the prerequisites' published `meta.json`."""
    total = 0.0
    for _, dep_id in job.depends:
        meta = json.loads(store.read_text(f"{artifact_rel(dep_id)}/{META_FILE}"))
        total += float(meta["distill_seconds"]) + float(meta.get("prerequisite_seconds", 0.0))
    return total


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
    job: DistillJob, ctx: Context, real: Any, store: Store, suite_name: str, node: str
) -> dict[str, Any]:
    """Run one method on one job (any rank); rank 0 publishes the artifact. Returns its meta,
    which records the distillation's wall-clock window (`distill_started_at` / `_ended_at`,
    ISO 8601 UTC) and `node` (the machine of rank 0): provenance, not part of the result."""
    from ddbench.methods import METHODS

    method = METHODS.get(job.method)()
    params = method.Params.model_validate(job.params)
    ctx.dependencies = {key: str(local_artifact(store, dep_id)) for key, dep_id in job.depends}
    if job.classes is not None:  # a class-subset job (continual learning): global labels kept
        real = real.subset(job.classes)
    started_at = now_utc()
    start = time.perf_counter()
    artifact = method.distill(real, job.ipc or 0, params, ctx)
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
) -> tuple[str, int]:
    """Evaluate one cell and write its Parquet file; never raises (a failure is a failed row).

    `node` names the machine (Ray node id on a cluster, host name in-process) in every row.
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


def count(summary: RunSummary, cell: EvalCell, status: str, n: int, log: Log) -> None:
    summary.cells_run += 1
    summary.rows_written += n
    summary.changed_jobs.add(cell.job.job_id)
    if status != "ok":
        summary.cells_failed += 1
    log(f"{status:6s} {cell.describe()}")


def fail_cells(
    cells: list[EvalCell], error: str, store: Store, sha: str, summary: RunSummary, log: Log
) -> None:
    log(f"distillation failed: {error.strip().splitlines()[-1]}")
    for cell in cells:
        rows = failed_rows(cell, "distillation failed:\n" + error, {}, sha)
        write_rows(store, cell.relpath, rows)
        count(summary, cell, "failed", len(rows), log)
