"""MLflow tracking: an experiment per suite, a parent run per invocation, a child run per job.

A tuned job (`tune:` in the suite, `ddbench.tuning`) logs its chosen params as its own (`p.`),
the chosen config as `tune.<param>` params and one nested run per Tune trial under its run
(tag `ddbench.kind` = `trial`: the trial's config as params, its mean val top1, the models it
scored and whether it was chosen).

The child run of a job holds its params (method params prefixed `p.`), its metrics (means of every
metric per evaluator / protocol / eval config / ipc / arch / split, artifact bytes, own and
prerequisite distill seconds), tags (job_id, method, label, dataset, ipc, suite, the run's store,
its protocols and, per eval config, the protocol and eval params) and artifacts (the job's Parquet
rows and the image grid). Metrics are never averaged across eval configs: each config is its own
metric family, named `<evaluator>.<protocol>.<eval_config>.ipc<ipc>.<arch>. <split>_<metric>` (the
protocol's `:` written `-`, as MLflow allows no `:` in a name). A job is logged when this invocation
changed it or when this tracking URI has not seen it yet (a marker file per URI under `tracking/` of
the run's store), so a rerun after an outage logs what was missing. `leaderboard_rows` uses MLflow
as the index of the runs: it finds their stores (the `ddbench.store` tag) and returns their Parquet
rows, which `ddbench.report.accuracy.leaderboard_table` aggregates. Called from the driver only
(rank 0); mlflow is imported here and nowhere else. Result files that cannot be read (corrupt or
truncated Parquet) and a meta.json that is not JSON are skipped and named through `warn`; a job with
an unreadable file gets no marker, so a later invocation (after the rerun that redoes the cell) logs
it whole.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import polars as pl

from ddbench.plan import ipc_text
from ddbench.report.format import mean_std_n
from ddbench.report.rows import fill_protocol
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

    from ddbench.runner.work import git_sha
    from ddbench.version import __version__

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
            rows = fill_protocol(pl.from_arrow(table))
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
                        "ipc": ipc_text(job.ipc),
                        "distill_seed": str(job.distill_seed),
                        STORE_TAG: suite_dir.uri,
                        **_protocol_tags(rows),
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
    from ddbench.selection import SELECTION

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


def metric_prefix(evaluator: str, protocol: str, config: str) -> str:
    """The metric family of one eval config: `cross_arch.paper-dim.1a2b3c4d`."""
    return f"{evaluator}.{protocol.replace(':', '-')}.{config}"


def _job_metrics(rows: pl.DataFrame) -> dict[str, float]:
    """A job's MLflow metrics: counts and costs, and mean / std / n of every metric per
    evaluator, protocol, eval config, IPC, arch and split (never across two configs)."""
    ok = rows.filter(pl.col("status") == "ok")
    metrics: dict[str, float] = {
        "cells_failed": float(rows.filter(pl.col("status") == "failed").height),
    }
    if ok.is_empty():
        return metrics
    metrics["artifact_bytes"] = float(ok["artifact_bytes"][0])
    metrics["distill_seconds"] = float(ok["distill_seconds"][0])
    before = ok["prerequisite_seconds"].drop_nulls()
    if len(before):
        metrics["prerequisite_seconds"] = float(before[0])
    grouped = ok.group_by(
        "evaluator", "protocol", "eval_config", "ipc", "arch", "split", "metric"
    ).agg(*mean_std_n())
    for r in grouped.iter_rows(named=True):
        prefix = metric_prefix(r["evaluator"], r["protocol"], r["eval_config"])
        key = f"{prefix}.ipc{r['ipc']}.{r['arch'] or 'all'}.{r['split']}_{r['metric']}"
        metrics[key] = float(r["mean"])
        metrics[key + "_std"] = float(r["std"])
        metrics[key + "_n"] = float(r["n"])
    return metrics


STORE_TAG = "ddbench.store"  # the run's store (path or URI): where `leaderboard_rows` reads rows
MAX_TAG = 5000  # characters of an MLflow tag value (the limit of MLflow's stores)


def _protocol_tags(rows: pl.DataFrame) -> dict[str, str]:
    """`protocols` (the job's protocol names) and, per eval config, `eval_config.<hash>`:
    its evaluator, protocol and eval params, so a metric family can be read back as a protocol."""
    configs = rows.select("evaluator", "protocol", "eval_config", "eval_params").unique()
    tags = {"protocols": ",".join(sorted(configs["protocol"].unique().to_list()))}
    for r in configs.iter_rows(named=True):
        text = f"{r['evaluator']} {r['protocol']} {r['eval_params']}"
        tags[f"eval_config.{r['eval_config']}"] = text[:MAX_TAG]
    return tags


def leaderboard_rows(
    uri: str,
    runs_root: str,
    suite: str | None = None,
    dataset: str | None = None,
    warn: Callable[[str], None] = print,  # where skipped unreadable result files are named
) -> pl.DataFrame:
    """Every result row of the runs MLflow knows (an experiment per suite; `suite` keeps one),
    read from their stores: the `ddbench.store` tag of each job run, or, for runs logged before
    that tag, `<runs_root>/<suite>`. `dataset` keeps that dataset's rows. Empty without runs."""
    mlflow = _mlflow()
    mlflow.set_tracking_uri(uri)
    experiments = [e for e in mlflow.search_experiments() if suite in (None, e.name)]
    if not experiments:
        return pl.DataFrame()
    runs = mlflow.search_runs(
        experiment_ids=[e.experiment_id for e in experiments],
        filter_string="tags.`ddbench.kind` = 'job'",
        output_format="list",
    )
    stores = {
        run.data.tags.get(STORE_TAG) or Store(runs_root).child(run.data.tags["suite"]).uri
        for run in runs
    }
    frames = []
    for location in sorted(stores):
        store = Store(location)
        table, unreadable = read_readable(store, result_files(store))
        for rel in unreadable:
            warn(f"leaderboard: skipped unreadable result file {store.location(rel)}")
        frames.append(pl.from_arrow(table))
    frames = [f for f in frames if not f.is_empty()]
    if not frames:
        return pl.DataFrame()
    rows = pl.concat(frames)
    return rows.filter(pl.col("dataset") == dataset) if dataset else rows
