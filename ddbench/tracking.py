"""MLflow tracking: an experiment per suite, a parent run per invocation, a child run per job.

A tuned job (`tune:` in the suite, `ddbench.tuning`) logs its chosen params as its own (`p.`),
the chosen config as `tune.<param>` params and one nested run per Tune trial under its run
(tag `ddbench.kind` = `trial`: the trial's config as params, its mean val top1, the models it
scored and whether it was chosen).

The child run of a job holds its params (method params prefixed `p.`), its metrics (test top1
mean per evaluator / ipc / arch, artifact bytes, distill seconds), tags (job_id, method, label,
dataset, ipc, suite) and artifacts (the job's Parquet rows and the image grid). A job is logged
when this invocation changed it or when this tracking URI has not seen it yet (a marker file per
URI under `tracking/` of the run's store), so a rerun after an outage logs what was missing.
`leaderboard` reads the job runs back (any tracking URI, local sqlite or a server) into the
best-known result per (dataset, ipc, method, arch). Called from the driver only (rank 0);
mlflow is imported here and nowhere else. Result files that cannot be read (corrupt or truncated
Parquet) and a meta.json that is not JSON are skipped and named through `warn`; a job with an
unreadable file gets no marker, so a later invocation (after the rerun that redoes the cell)
logs it whole.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import polars as pl

from ddbench.schema import read_readable, result_files
from ddbench.seeding import content_hash
from ddbench.storage import Store, is_uri
from ddbench.viz import GRID_FILE

if TYPE_CHECKING:
    from ddbench.plan import Plan
    from ddbench.runner.work import RunSummary


def default_tracking_uri(out: str | Path) -> str:
    """$MLFLOW_TRACKING_URI, else a sqlite store in the output root; an output URI (s3://...)
    cannot hold a sqlite file, so its default store is ./runs/mlflow.db on this machine."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path("runs") if is_uri(out) else Path(out)
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def _mlflow():
    """Import mlflow with ddbench's defaults: no telemetry, and an unreachable server fails in
    seconds rather than after MLflow's default minutes of retries (results are safe on disk)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    import mlflow

    return mlflow


def log_plan(
    plan: Plan,
    suite_dir: Store,
    summary: RunSummary,
    uri: str,
    warn: Callable[[str], None] = print,  # where skipped damage is reported (one line each)
) -> int:
    """Log every job that needs it; returns the number of child runs written."""
    mlflow = _mlflow()

    from ddbench import __version__
    from ddbench.runner.work import git_sha

    mlflow.set_tracking_uri(uri)
    markers = f"tracking/{content_hash(uri)}"
    todo = [
        job
        for job in plan.jobs
        if job.job_id in summary.changed_jobs or not suite_dir.exists(f"{markers}/{job.job_id}")
    ]
    all_files = result_files(suite_dir)
    if not todo:
        return 0
    tuned = any(job.tune for job in todo)  # selection rows are read only when they are needed
    selection = _selection_rows(suite_dir, all_files, warn) if tuned else None
    if mlflow.get_experiment_by_name(plan.suite) is None:
        mlflow.create_experiment(plan.suite, artifact_location=_artifact_location(uri, plan.suite))
    mlflow.set_experiment(plan.suite)
    logged = 0
    loaded = plan.loaded
    with mlflow.start_run(run_name=f"{plan.suite} invocation") as parent:
        mlflow.set_tags(
            {
                "ddbench.kind": "invocation",
                "ddbench_version": __version__,
                "git_sha": git_sha(),
                "suite_file": loaded.path,
                "profile": loaded.profile or "",
                "overrides": " ".join(loaded.overrides),
            }
        )
        for job in todo:
            files = [f for f in all_files if PurePosixPath(f).parent.name == job.job_id]
            table, unreadable = read_readable(suite_dir, files)
            for rel in unreadable:
                warn(f"MLflow: skipped unreadable result file {rel} (corrupt or truncated)")
            files = [f for f in files if f not in unreadable]
            if not files:
                continue
            rows = pl.from_arrow(table)
            meta = _artifact_meta(suite_dir, job.job_id, warn)
            chosen = meta.get("tune")
            with mlflow.start_run(
                run_name=f"{job.label} [{job.job_id}]",
                nested=True,
                parent_run_id=parent.info.run_id,
            ) as job_run:
                mlflow.set_tags(
                    {
                        "ddbench.kind": "job",
                        "job_id": job.job_id,
                        "method": job.method,
                        "method_label": job.label,
                        "dataset": job.dataset,
                        "suite": plan.suite,
                        "ipc": str(job.ipc if job.ipc is not None else "all"),
                        "distill_seed": str(job.distill_seed),
                    }
                )
                params = {
                    "method": job.method,
                    "ipc": job.ipc,
                    "distill_seed": job.distill_seed,
                    "dataset": job.dataset,
                }
                job_params = json.loads(meta.get("chosen_params_json", job.params_json))
                params.update({f"p.{k}": v for k, v in job_params.items()})
                if chosen:
                    params.update({f"tune.{k}": v for k, v in chosen["config"].items()})
                mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
                mlflow.log_metrics(_job_metrics(rows))
                for f in files:
                    evaluator = PurePosixPath(f).parent.parent.name
                    with suite_dir.local_file(f) as path:
                        mlflow.log_artifact(str(path), artifact_path=f"results/{evaluator}")
                grid = f"artifacts/{job.job_id}/{GRID_FILE}"
                if suite_dir.exists(grid):
                    with suite_dir.local_file(grid) as path:
                        mlflow.log_artifact(str(path), artifact_path="images")
                if job.tune:
                    trials = selection.filter(pl.col("tuned_job") == job.job_id)
                    _log_trials(mlflow, trials, job_run.info.run_id, chosen, plan.suite)
            if not unreadable:  # else logged again once the rerun has redone those cells
                suite_dir.write_text(f"{markers}/{job.job_id}", "")
            logged += 1
    return logged


def _artifact_meta(suite_dir: Store, job_id: str, warn: Callable[[str], None]) -> dict[str, Any]:
    """The job's artifact meta.json; {} when it is absent or not JSON (reported)."""
    meta_file = f"artifacts/{job_id}/meta.json"
    if not suite_dir.exists(meta_file):
        return {}
    try:
        return json.loads(suite_dir.read_bytes(meta_file))
    except ValueError:
        warn(f"MLflow: skipped unreadable {meta_file} (not valid JSON)")
        return {}


def _selection_rows(
    suite_dir: Store, files: list[str], warn: Callable[[str], None]
) -> pl.DataFrame:
    """The Tune selection rows of the run (`results/tune/`), with their tuned job's id."""
    from ddbench.tuning import SELECTION

    tune_files = [f for f in files if PurePosixPath(f).parent.parent.name == SELECTION]
    table, unreadable = read_readable(suite_dir, tune_files)
    for rel in unreadable:
        warn(f"MLflow: skipped unreadable result file {rel} (corrupt or truncated)")
    if not table.num_rows:
        return pl.DataFrame(schema={"tuned_job": pl.String})
    rows = pl.from_arrow(table)
    return rows.with_columns(tuned_job=pl.col("eval_params").str.json_path_match("$.tuned_job"))


def _log_trials(
    mlflow: Any, trials: pl.DataFrame, parent_id: str, chosen: dict | None, suite: str
) -> None:
    """One nested run per trial of a tuned job, under the job's run."""
    ok = trials.filter(pl.col("status") == "ok")
    for (trial_id,), rows in ok.group_by("job_id", maintain_order=True):
        config = json.loads(rows["eval_params"][0])["config"]
        with mlflow.start_run(
            run_name=f"trial {trial_id} {config}", nested=True, parent_run_id=parent_id
        ):
            mlflow.set_tags(
                {
                    "ddbench.kind": "trial",
                    "trial_job_id": str(trial_id),
                    "suite": suite,
                    "chosen": str(bool(chosen) and chosen["trial_job_id"] == trial_id),
                }
            )
            mlflow.log_params({k: str(v)[:500] for k, v in config.items()})
            mlflow.log_metrics(
                {"val_top1": float(rows["value"].mean()), "models": float(rows.height)}
            )


def _artifact_location(uri: str, suite: str) -> str | None:
    """Beside a sqlite store, artifacts go to <db dir>/mlartifacts/<suite> (MLflow's default
    would be ./mlruns in whatever directory ddbench was started from); a server decides itself."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    return (db.parent / "mlartifacts" / suite).resolve().as_uri()


def _job_metrics(rows: pl.DataFrame) -> dict[str, float]:
    ok = rows.filter(pl.col("status") == "ok")
    metrics: dict[str, float] = {
        "cells_failed": float(rows.filter(pl.col("status") == "failed").height),
    }
    if ok.is_empty():
        return metrics
    metrics["artifact_bytes"] = float(ok["artifact_bytes"][0])
    metrics["distill_seconds"] = float(ok["distill_seconds"][0])
    grouped = ok.group_by("evaluator", "ipc", "arch", "split", "metric").agg(
        pl.col("value").mean().alias("mean"),
        pl.col("value").std().fill_null(0.0).alias("std"),
        pl.len().alias("n"),
    )
    for r in grouped.iter_rows(named=True):
        key = f"{r['evaluator']}.ipc{r['ipc']}.{r['arch'] or 'all'}.{r['split']}_{r['metric']}"
        metrics[key] = float(r["mean"])
        metrics[key + "_std"] = float(r["std"])
        metrics[key + "_n"] = float(r["n"])
    return metrics


_METRIC_KEY = re.compile(
    r"^metrics\.(?P<evaluator>\w+)\.ipc(?P<ipc>\d+)\.(?P<arch>\w+)\."
    r"(?P<split>val|test)_(?P<metric>\w+?)$"
)


def leaderboard(
    uri: str,
    suite: str | None = None,
    dataset: str | None = None,
    metric: str = "top1",
    split: str = "test",
) -> pl.DataFrame:
    """Best-known result per (dataset, ipc, method, arch) over every job run in MLflow.

    "Best" is the highest mean over runs (lowest for a lower-is-better metric would need its
    direction; the leaderboard's metrics are accuracies). Each row links the run it came from.
    """
    mlflow = _mlflow()
    mlflow.set_tracking_uri(uri)
    experiments = mlflow.search_experiments()
    if suite:
        experiments = [e for e in experiments if e.name == suite]
    if not experiments:
        return pl.DataFrame()
    runs = mlflow.search_runs(
        experiment_ids=[e.experiment_id for e in experiments],
        filter_string="tags.`ddbench.kind` = 'job'",
    )
    if runs.empty:
        return pl.DataFrame()
    records = []
    for run in runs.to_dict("records"):
        if dataset and run.get("tags.dataset") != dataset:
            continue
        for column, value in run.items():
            m = _METRIC_KEY.match(column)
            if not m or m["metric"] != metric or m["split"] != split or value != value:
                continue
            records.append(
                {
                    "dataset": run.get("tags.dataset"),
                    "ipc": int(m["ipc"]),
                    "method": run.get("tags.method_label"),
                    "arch": m["arch"],
                    "evaluator": m["evaluator"],
                    "mean": float(value),
                    "std": float(run.get(column + "_std") or 0.0),
                    "n": int(run.get(column + "_n") or 0),
                    "artifact_bytes": int(run.get("metrics.artifact_bytes") or 0),
                    "distill_seconds": float(run.get("metrics.distill_seconds") or 0.0),
                    "suite": run.get("tags.suite"),
                    "run": _run_link(uri, run["experiment_id"], run["run_id"]),
                }
            )
    if not records:
        return pl.DataFrame()
    table = pl.DataFrame(records)
    return (
        table.sort("mean", descending=True)
        .group_by("dataset", "ipc", "method", "arch", maintain_order=True)
        .first()
        .sort("dataset", "ipc", "arch", "mean", descending=[False, False, False, True])
    )


def _run_link(uri: str, experiment_id: str, run_id: str) -> str:
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"runs:/{run_id}"
