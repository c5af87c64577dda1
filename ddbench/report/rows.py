"""The rows a report reads: loading a run's result files, filling columns older files lack,
keeping each evaluator's latest config, and the mean ± std (n) summary the tables show.

Rows are `ddbench.schema` rows as a Polars DataFrame; accuracies are fractions in [0, 1]. A
*cell row* has the `arch` (and `eval_seed`) of the model it measured; a *reduce row* is a job's
evaluator-level number (`Evaluator.reduce`, written by `ddbench.runner.work.write_reduce`), with
`arch`, `eval_seed` and `step` null (`reduce_rows`: no arch and no step). A new row filter or
aggregation shared by sections goes here.
"""

from __future__ import annotations

import polars as pl

from ddbench.errors import UserError
from ddbench.protocols import (
    METHOD_FACTS_FILE,
    PROTOCOL_PARAMS,
    SHARED,
    MethodFacts,
    eval_config,
)
from ddbench.report.format import mean_std_n
from ddbench.schema import read_readable, result_files
from ddbench.storage import Store

REFERENCE = "whole_dataset"  # the method whose rows are the whole-dataset reference (ipc 0)
BASELINE = "random_real"  # the method gains are measured against


def run_method_facts(run: Store, rows: pl.DataFrame) -> MethodFacts:
    """The paper protocols and published numbers of the run's methods: the record the driver
    wrote (`METHOD_FACTS_FILE`); a run written before that record existed gets the registries'
    facts of its methods instead, which imports the method plugins (and torch)."""
    if run.exists(METHOD_FACTS_FILE):
        return MethodFacts.from_json(run.read_text(METHOD_FACTS_FILE))
    from ddbench.plan import method_facts

    return method_facts(rows["method"].unique().to_list())


def load_rows(run: Store) -> tuple[pl.DataFrame, list[str]]:
    """Every readable row of the run, and the result files that could not be read (corrupt or
    truncated Parquet: skipped, the report lists them)."""
    table, unreadable = read_readable(run, result_files(run))
    rows = pl.from_arrow(table)
    if rows.is_empty():
        damaged = f" ({len(unreadable)} unreadable: {', '.join(unreadable)})" if unreadable else ""
        raise UserError(
            f"no readable result files under {run.location('results')}{damaged}: run the suite"
        )
    return fill_protocol(rows), unreadable


def fill_protocol(rows: pl.DataFrame) -> pl.DataFrame:
    """Rows with `protocol` and `eval_config` set also where files written before those
    columns existed hold nulls: such rows were measured with their entry's params as written
    (`shared`), and their config hash is computed from their eval params."""
    if rows.is_empty() or not rows["eval_config"].is_null().any():
        return rows
    configs = {
        key: eval_config(*key)
        for key in rows.select("evaluator", "eval_version", "eval_params").unique().iter_rows()
    }
    hashed = pl.struct("evaluator", "eval_version", "eval_params").map_elements(
        lambda r: configs[(r["evaluator"], r["eval_version"], r["eval_params"])],
        return_dtype=pl.String,
    )
    return rows.with_columns(
        protocol=pl.col("protocol").fill_null(SHARED),
        eval_config=pl.col("eval_config").fill_null(hashed),
    )


def protocol_params(rows: pl.DataFrame) -> pl.DataFrame:
    """`rows` with one string column per `PROTOCOL_PARAMS` entry (labels, sampling, augment,
    epochs, optimizer), read from `eval_params`; null where the evaluator has no such param."""
    return rows.with_columns(
        pl.col("eval_params").str.json_path_match(f"$.{key}").alias(key) for key in PROTOCOL_PARAMS
    )


def latest_config(
    rows: pl.DataFrame,
    by: tuple[str, ...] = (),  # columns whose every value keeps its own latest config
) -> tuple[pl.DataFrame, int]:
    """Keep, per evaluator, the rows of its most recently used eval params.

    Changing an evaluator's params (more epochs, another sampling mode) makes new cells beside
    the old ones; averaging across configs would mix protocols. Returns the kept rows and the
    number of rows left out. An evaluator with per-step rows keeps its latest config per number
    of steps (a continual suite runs 5 and 10 steps side by side; they are shown apart), and one
    per value of the `by` columns (DD-Ranking: per label mode and augmentation).
    """
    depth = rows.group_by("evaluator", "eval_params").agg(
        pl.col("step").max().fill_null(-1).alias("last_step")  # -1: an evaluator without steps
    )
    keyed = rows.join(depth, on=["evaluator", "eval_params"])
    latest = (
        keyed.sort("created_at")
        .group_by("evaluator", "last_step", *by)
        .agg(pl.col("eval_params").last().alias("latest_params"))
    )
    kept = keyed.join(latest, on=["evaluator", "last_step", *by]).filter(
        pl.col("eval_params") == pl.col("latest_params")
    )
    return kept.drop("latest_params", "last_step"), rows.height - kept.height


def summarise(
    rows: pl.DataFrame,
    metric: str = "top1",
    split: str = "test",
    by: tuple[str, ...] = ("protocol", "eval_config"),  # never average two protocols' numbers
) -> pl.DataFrame:
    """mean, std, n of a metric per (method_label, ipc, arch, *by), over eval seeds and
    distill seeds, with the costs of the distillates (own and prerequisite distill seconds).
    Per-step (continual) rows are left to the continual section."""
    ok = rows.filter(
        (pl.col("status") == "ok")
        & (pl.col("metric") == metric)
        & (pl.col("split") == split)
        & pl.col("arch").is_not_null()
        & pl.col("step").is_null()
    )
    return (
        ok.group_by("dataset", "method_label", "method", "ipc", "arch", *by)
        .agg(
            *mean_std_n(),
            pl.col("artifact_bytes").first(),
            pl.col("distill_seconds").mean(),
            pl.col("prerequisite_seconds").mean(),
            pl.col("eval_params").first(),
            pl.col("suite").unique().sort().str.join(", ").alias("suites"),
        )
        .sort("ipc", "method_label", "arch", *by)
    )


def reduce_rows(rows: pl.DataFrame) -> pl.DataFrame:
    """The ok reduce rows among `rows`: job-level numbers, no arch and no step."""
    return rows.filter(
        (pl.col("status") == "ok") & pl.col("arch").is_null() & pl.col("step").is_null()
    )


def sorted_groups(rows: pl.DataFrame, *by: str) -> list[tuple[tuple[object, ...], pl.DataFrame]]:
    """`rows.group_by(*by)` in the order of the keys' text (keys of mixed types sort too)."""
    return sorted(rows.group_by(*by), key=lambda g: tuple(str(k) for k in g[0]))
