"""Reports from the result table, with Polars: tables, plots and image grids.

`write_report(run, out_dir, formats)` reads every result file of a run's `Store` (`<out>/<suite>`,
a local directory or a URI) and writes `<out_dir>/README.md` (markdown tables: top1 mean ± std
(n) per method × arch for each IPC, gain over `random_real`, the whole-dataset reference),
`accuracy_vs_ipc.png`, one image grid per distillate, and `summary.csv` when asked. Numbers are
test-split, final-epoch accuracies in percent (the rows hold fractions in [0, 1]). Add a section
by adding a function that takes the rows DataFrame and returns markdown lines.

Every number belongs to one evaluation protocol (`protocol`, `eval_config` columns;
`ddbench.protocols`) and no aggregate mixes two: the main tables are one set per protocol, the
shared protocol's (every method trained alike) and, when the run has any, each method's paper
protocol (the methods whose paper protocol is the shared one appear there with their shared
rows), each saying what it is. `published_section` sets the papers' own numbers
(`Method.published`) beside ddbench's where the run's dataset has them, and says where the run's
protocol is not the paper's. The cost table counts a job's prerequisites (d2m's cgan, d4m's
diffusion model: `prerequisite_seconds`). `leaderboard_table` is `ddbench leaderboard`: the same
aggregation over rows of many runs, one line per (dataset, IPC, method, arch, protocol config).

`other_configs_section` shows the rows of the eval params left out of the main tables (only the
latest config of an evaluator per protocol is there) one table per config.
`cross_arch_section` adds `cross_arch_heatmap.png`: top1 per method x arch, a panel per IPC.
With `html` in `formats`, `ddbench.report_html` writes the same markdown as one self-contained
`report.html` (a new section needs no HTML code).

Ray Tune's selection rows (evaluator `tune`, split `val`) get their own section
(`ddbench.report_tune`) and never enter the test tables.

Rows with a `step` (continual learning) stay out of the method x arch tables: they get their own
section (`continual_section`: a method x step table and an accuracy-vs-classes plot per
evaluator config and IPC); such an evaluator keeps its latest config per number of steps (a
suite runs 5 and 10 steps side by side; the tables never mix them).
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path, PurePosixPath

import polars as pl

from ddbench.errors import UserError
from ddbench.protocols import PROTOCOL_PARAMS, SHARED, eval_config, paper_name
from ddbench.report_html import write_html
from ddbench.schema import read_readable, result_files
from ddbench.storage import Store
from ddbench.viz import GRID_FILE

REFERENCE = "whole_dataset"
BASELINE = "random_real"


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


def unreadable_section(unreadable: list[str]) -> list[str]:
    """The result files the report skipped because they could not be read."""
    if not unreadable:
        return []
    lines = [
        "## Unreadable files",
        "",
        "These result files could not be read (corrupt or truncated Parquet) and are left out of "
        "every table above; rerunning the suite moves them aside and evaluates their cells again.",
        "",
    ]
    return [*lines, *(f"- `{rel}`" for rel in unreadable), ""]


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
    epochs), read from `eval_params`; null where the evaluator has no such param."""
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


def other_configs_section(every: pl.DataFrame, shown: pl.DataFrame) -> list[str]:
    """Top-1 tables of the eval params `latest_config` left out of the main tables (an earlier
    run, or the same suite run again with, say, `labels: teacher`), one per config, titled by
    the params that differ from the shown config of that evaluator."""
    kept = shown.select("evaluator", "eval_params").unique()
    left = every.join(kept, on=["evaluator", "eval_params"], how="anti")
    lines: list[str] = []
    for (evaluator, params), group in sorted(
        left.group_by("evaluator", "eval_params"), key=lambda g: (str(g[0][0]), str(g[0][1]))
    ):
        summary = summarise(group)
        if summary.is_empty():  # per-step (continual) or NAS-only rows: their own sections
            continue
        reference = json.loads(kept.filter(pl.col("evaluator") == evaluator)["eval_params"][0])
        differs = {k: v for k, v in json.loads(params).items() if reference.get(k) != v}
        title = ", ".join(f"{k}: {v}" for k, v in sorted(differs.items())) or "same params"
        lines += [f"### {evaluator} with {title}", ""]
        lines += ["#" + line if line.startswith("### ") else line for line in pivot_tables(summary)]
    if lines:
        lines = [
            "## Other evaluation configs",
            "",
            "The rows left out of the tables above, one table per config, titled by what differs "
            "from the config shown there.",
            "",
            *lines,
        ]
    return lines


def summarise(
    rows: pl.DataFrame,
    metric: str = "top1",
    split: str = "test",
    by: tuple[str, ...] = ("protocol", "eval_config"),  # never average two protocols' numbers
) -> pl.DataFrame:
    """mean, std, n of a metric per (method_label, ipc, arch, *by), over eval seeds and
    distill seeds, with the costs of the distillates (own and prerequisite distill seconds).
    Per-step (continual) rows are left to `continual_section`."""
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


def mean_std_n() -> list[pl.Expr]:
    """The aggregation every table shows: mean, std (0 for a single value) and n of `value`."""
    return [
        pl.col("value").mean().alias("mean"),
        pl.col("value").std().fill_null(0.0).alias("std"),
        pl.len().alias("n"),
    ]


def _cell(mean: float, std: float, n: int) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f} ({n})"


def _markdown_table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return lines


def pivot_tables(summary: pl.DataFrame) -> list[str]:
    """One method × arch table per IPC, the reference row under each."""
    lines: list[str] = []
    archs = sorted(summary["arch"].unique().to_list())
    reference = summary.filter(pl.col("method") == REFERENCE)
    for ipc in sorted(i for i in summary["ipc"].unique().to_list() if i != 0):
        part = summary.filter(pl.col("ipc") == ipc)
        lines += [f"### IPC {ipc}", ""]
        body = []
        for label in sorted(part["method_label"].unique().to_list()):
            sub = part.filter(pl.col("method_label") == label)
            cells = {
                r["arch"]: _cell(r["mean"], r["std"], r["n"]) for r in sub.iter_rows(named=True)
            }
            body.append([label] + [cells.get(a, "–") for a in archs])
        if len(reference):
            cells = {
                r["arch"]: _cell(r["mean"], r["std"], r["n"])
                for r in reference.iter_rows(named=True)
            }
            body.append([f"*{REFERENCE}* (reference)"] + [cells.get(a, "–") for a in archs])
        lines += _markdown_table(["method"] + archs, body) + [""]
    return lines


def gain_table(summary: pl.DataFrame) -> list[str]:
    """Mean top1 minus random_real's at the same (ipc, arch), in percentage points."""
    base = summary.filter(pl.col("method") == BASELINE).select(
        "ipc", "arch", pl.col("mean").alias("baseline")
    )
    if base.is_empty():
        return []
    gains = (
        summary.filter(~pl.col("method").is_in([BASELINE, REFERENCE]))
        .join(base, on=["ipc", "arch"])
        .with_columns(((pl.col("mean") - pl.col("baseline")) * 100).alias("gain"))
        .group_by("method_label", "ipc")
        .agg(pl.col("gain").mean())
        .sort("ipc", "method_label")
    )
    if gains.is_empty():
        return []
    ipcs = sorted(gains["ipc"].unique().to_list())
    body = []
    for label in sorted(gains["method_label"].unique().to_list()):
        sub = {
            r["ipc"]: r["gain"]
            for r in gains.filter(pl.col("method_label") == label).iter_rows(named=True)
        }
        body.append([label] + [f"{sub[i]:+.1f}" if i in sub else "–" for i in ipcs])
    return (
        ["## Gain over random_real (percentage points, mean over architectures)", ""]
        + _markdown_table(["method"] + [f"IPC {i}" for i in ipcs], body)
        + [""]
    )


def cost_table(summary: pl.DataFrame) -> list[str]:
    """Bytes and seconds of each distillate: its own distill seconds, its prerequisites' (d2m's
    cgan, d4m's diffusion model; – on rows written before they were recorded) and the total."""
    costs = (
        summary.group_by("method_label", "ipc")
        .agg(
            pl.col("artifact_bytes").first(),
            pl.col("distill_seconds").first(),
            pl.col("prerequisite_seconds").first(),
        )
        .sort("ipc", "method_label")
    )
    body = []
    for r in costs.iter_rows(named=True):
        own, before = r["distill_seconds"], r["prerequisite_seconds"]
        body.append(
            [
                r["method_label"],
                str(r["ipc"]),
                f"{r['artifact_bytes']:,}",
                f"{own:.1f}",
                "–" if before is None else f"{before:.1f}",
                f"{own + (before or 0.0):.1f}",
            ]
        )
    header = ["method", "ipc", "artifact bytes", "distill s", "prerequisites s", "total s"]
    return (
        [
            "## Cost of each distillate",
            "",
            "Distill seconds of the job itself, of the jobs it starts from (d2m's cgan, d4m's "
            "diffusion model) and their total: the whole cost of the distillate.",
            "",
        ]
        + _markdown_table(header, body)
        + [""]
    )


def protocol_sections(summary: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """The main tables, one set per protocol, and the shared protocol's summary (gain, cost and
    plots use it). With paper-protocol rows, a second set shows each method under its paper's
    protocol (methods whose paper protocol is the shared one with their shared rows), each
    non-shared row labelled with its protocol, and a list of what each protocol changes."""
    from ddbench.methods import METHODS

    shared = summary.filter(pl.col("protocol") == SHARED)
    own = summary.filter(pl.col("protocol") != SHARED)
    lines: list[str] = []
    if not shared.is_empty():
        settings = _settings(shared["eval_params"][0])
        lines += [
            "## Top-1 by method and architecture: shared protocol",
            "",
            f"Every method trained with the same evaluation params ({settings}).",
            "",
            *pivot_tables(shared),
        ]
    if own.is_empty():
        return shared, lines
    with_own = own["method_label"].unique().to_list()
    view = pl.concat([own, shared.filter(~pl.col("method_label").is_in(with_own))])
    # a method with a paper protocol of its own that this run did not evaluate it under
    missing = [m for m in view["method"].unique().to_list() if METHODS.get(m).paper_protocol]
    view = view.with_columns(
        method_label=pl.when(pl.col("protocol") != SHARED)
        .then(pl.col("method_label") + " (" + pl.col("protocol") + ")")
        .when(pl.col("method").is_in(missing))
        .then(pl.col("method_label") + " (shared: its paper protocol not run)")
        .otherwise(pl.col("method_label"))
    )
    changes = []
    for method in sorted(own["method"].unique().to_list()):
        paper = METHODS.get(method).paper_protocol
        what = ", ".join(f"{k}: {v}" for k, v in sorted(paper.items()))
        changes.append(f"- `{paper_name(method)}`: the shared params with {what}")
    lines += [
        "## Top-1 by method and architecture: each method's paper protocol",
        "",
        "Each method evaluated the way its paper evaluates it (`Method.paper_protocol`); a "
        "method whose paper uses the DC recipe with hard labels has its shared-protocol rows "
        "here. Protocols other than the shared one:",
        "",
        *changes,
        "",
        *pivot_tables(view),
    ]
    return shared, lines


def _settings(eval_params: str) -> str:
    """`labels: hard, sampling: fixed, ...`: the protocol params of one eval params JSON."""
    params = json.loads(eval_params)
    return ", ".join(f"{k}: {params[k]}" for k in PROTOCOL_PARAMS if k in params)


def published_section(summary: pl.DataFrame) -> list[str]:
    """The papers' reported ConvNet top-1 (`Method.published`) beside ddbench's `convnet`
    number under the paper's protocol, for the run's dataset and IPCs. Where the run has no rows
    under the paper's protocol, ddbench's shared-protocol number is shown and the note says so;
    the note also names protocol params that differ from the DC recipe's defaults (epochs,
    augmentation). Empty when no method of the run has a published number for its dataset."""
    from ddbench.evals.cross_arch import CrossArchParams
    from ddbench.methods import METHODS

    convnet = summary.filter(pl.col("arch") == "convnet")
    body = []
    for (method, label, dataset, ipc), rows in sorted(
        convnet.group_by("method", "method_label", "dataset", "ipc"), key=_key
    ):
        cls = METHODS.get(method)
        reported = [p for p in cls.published if (p.dataset, p.ipc) == (dataset, ipc)]
        if not reported:
            continue
        own = paper_name(method) if cls.paper_protocol else SHARED
        matched = rows.filter(pl.col("protocol") == own)
        shown = matched if len(matched) else rows.filter(pl.col("protocol") == SHARED)
        if shown.is_empty():
            continue
        r = shown.row(0, named=True)
        expected = {**CrossArchParams().model_dump(), **cls.paper_protocol}
        params = json.loads(r["eval_params"])
        differs = [
            f"{k} {params[k]} (paper: {expected[k]})"
            for k in PROTOCOL_PARAMS
            if k in params and params[k] != expected[k]
        ]
        note = (
            "; ".join(differs)
            if len(matched)
            else f"not run under `{own}`: " + ("; ".join(differs) or "shared protocol")
        )
        for p in reported:
            paper = f"{p.top1:.1f}" + ("" if p.std is None else f" ± {p.std:.1f}")
            body.append(
                [label, str(ipc), _cell(r["mean"], r["std"], r["n"]), paper, own, p.source]
                + [note or "same protocol"]
            )
    if not body:
        return []
    return [
        "## Published numbers beside ddbench",
        "",
        "ConvNet test top-1 (%): ddbench's under the paper's protocol beside the number the "
        "paper reports (`Method.published`). The papers train on the whole train split "
        "(ddbench holds 10 % out as val) with their own code, so compare trends, not decimals; "
        "the note names where this run's protocol is not the paper's.",
        "",
        *_markdown_table(["method", "ipc", "ddbench", "paper", "protocol", "source", "note"], body),
        "",
    ]


LEADERBOARD_KEY = (  # one measured number: rows of the same cell read from two stores count once
    "job_id",
    "evaluator",
    "eval_config",
    "ipc",
    "arch",
    "eval_seed",
    "step",
    "split",
    "metric",
)


def leaderboard_table(
    rows: pl.DataFrame,
    metric: str = "top1",
    split: str = "test",  # reported numbers: test; selection reads val only
    protocol: str | None = None,  # glob over protocol names (`paper:*`); None = every protocol
    where: dict[str, str] | None = None,  # column or eval param -> value (as text)
) -> pl.DataFrame:
    """`ddbench leaderboard`: mean ± std (n) of `metric` per (dataset, IPC, method, arch,
    evaluator, protocol config) over distill seeds and eval seeds, from the rows of any number
    of runs (duplicates of a cell, by `LEADERBOARD_KEY`, counted once: the latest), with the
    protocol columns (`protocol`, labels, sampling, augment, epochs) and costs. Numbers of two
    protocols or configs are never averaged together."""
    from ddbench.tuning import SELECTION

    rows = protocol_params(fill_protocol(rows)).filter(pl.col("evaluator") != SELECTION)
    rows = rows.sort("created_at").unique(subset=list(LEADERBOARD_KEY), keep="last")
    if protocol is not None:
        names = [n for n in rows["protocol"].unique().to_list() if fnmatch.fnmatch(n, protocol)]
        rows = rows.filter(pl.col("protocol").is_in(names))
    for key, value in (where or {}).items():
        column = (
            pl.col(key).cast(pl.String)
            if key in rows.columns
            else pl.col("eval_params").str.json_path_match(f"$.{key}")
        )
        rows = rows.filter(column == value)
    table = summarise(
        rows, metric, split, by=("evaluator", "protocol", "eval_config", *PROTOCOL_PARAMS)
    )
    return (
        table.drop("method")  # the label names the entry (two configs of one method differ)
        .rename({"method_label": "method"})
        .with_columns(
            total_seconds=pl.col("distill_seconds") + pl.col("prerequisite_seconds").fill_null(0.0)
        )
    ).sort(
        "dataset", "ipc", "arch", "protocol", "mean", descending=[False, False, False, False, True]
    )


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (imported when a plot is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    _pyplot().close(fig)
    return path


def _line_plot(
    lines: pl.DataFrame,
    x: str,
    path: Path,
    xlabel: str,
    ylabel: str,
    log_x: bool = False,  # IPCs span 1 .. 50: a log axis spaces them evenly
    reference: float | None = None,  # a horizontal line for the whole-dataset reference
) -> Path:
    """One line per `method_label` of 100 x `mean` against column `x`."""
    fig, ax = _pyplot().subplots(figsize=(6, 4), dpi=120)
    for label in sorted(lines["method_label"].unique().to_list()):
        sub = lines.filter(pl.col("method_label") == label).sort(x)
        ax.plot(sub[x].to_list(), [100 * v for v in sub["mean"].to_list()], marker="o", label=label)
    if reference is not None:
        ax.axhline(100 * reference, color="grey", linestyle="--", label=REFERENCE)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_accuracy_vs_ipc(summary: pl.DataFrame, path: Path) -> Path | None:
    per_method = (
        summary.filter(pl.col("ipc") > 0).group_by("method_label", "ipc").agg(pl.col("mean").mean())
    )
    if per_method.is_empty():
        return None
    ref = summary.filter(pl.col("method") == REFERENCE)
    return _line_plot(
        per_method,
        "ipc",
        path,
        "images per class (IPC)",
        "test top-1 (%), mean over architectures",
        log_x=True,
        reference=ref["mean"].mean() if len(ref) else None,
    )


def cross_arch_section(summary: pl.DataFrame, out_dir: Path) -> list[str]:
    """`cross_arch_heatmap.png` under a heading; empty with fewer than two architectures."""
    plot = plot_cross_arch_heatmap(summary, out_dir / "cross_arch_heatmap.png")
    if plot is None:
        return []
    return [
        "## Cross-architecture heatmap",
        "",
        "Test top-1 (%) per method and architecture (the means of the tables above), one panel "
        "per IPC on one colour scale.",
        "",
        f"![cross-architecture heatmap]({plot.name})",
        "",
    ]


def plot_cross_arch_heatmap(summary: pl.DataFrame, path: Path) -> Path | None:
    """Mean test top1 (%) of each method (rows, the reference last) x arch (columns), values
    written in the cells, one panel per IPC. None with fewer than two archs or no IPC > 0."""
    import numpy as np

    archs = sorted(summary["arch"].unique().to_list())
    ipcs = sorted(i for i in summary["ipc"].unique().to_list() if i != 0)
    if len(archs) < 2 or not ipcs:
        return None
    labels = sorted(summary.filter(pl.col("ipc") != 0)["method_label"].unique().to_list())
    reference = summary.filter(pl.col("method") == REFERENCE)
    rows = labels + ([f"{REFERENCE} (reference)"] if len(reference) else [])
    low, high = 100 * summary["mean"].min(), 100 * summary["mean"].max()
    fig, axes = _pyplot().subplots(
        1,
        len(ipcs),
        figsize=(2.8 + 0.9 * len(archs) * len(ipcs), 1.2 + 0.4 * len(rows)),
        dpi=110,
        squeeze=False,
        sharey=True,
    )
    for ax, ipc in zip(axes.flat, ipcs, strict=True):
        grid = np.full((len(rows), len(archs)), np.nan)
        part = pl.concat([summary.filter(pl.col("ipc") == ipc), reference])
        for r in part.iter_rows(named=True):
            row = len(labels) if r["method"] == REFERENCE else labels.index(r["method_label"])
            grid[row, archs.index(r["arch"])] = 100 * r["mean"]
        ax.imshow(grid, cmap="viridis", vmin=low, vmax=high, aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            missing = np.isnan(value)
            light = missing or (value - low) / (high - low or 1) > 0.6  # viridis: bright on top
            text, ink = "–" if missing else f"{value:.1f}", "black" if light else "white"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=ink)
        ax.set_xticks(range(len(archs)), archs, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.set_title(f"IPC {ipc}", fontsize=9)
    return _save(fig, path)


def continual_section(rows: pl.DataFrame, out_dir: Path) -> list[str]:
    """Per evaluator config and IPC: test top1 per method x step (mean ± std (n) over class
    orders, models and distill seeds), the reduce rows' average incremental and final top1, and
    a plot of accuracy against the number of classes seen. Empty without per-step rows."""
    import json

    ok = rows.filter((pl.col("status") == "ok") & (pl.col("split") == "test"))
    stepped = ok.filter(pl.col("step").is_not_null() & (pl.col("metric") == "top1"))
    if stepped.is_empty():
        return []
    reduced = ok.filter(
        pl.col("evaluator").is_in(stepped["evaluator"].unique().to_list())
        & pl.col("step").is_null()
    )
    lines: list[str] = []
    configs = stepped.select("evaluator", "eval_params", "ipc").unique().sort(pl.all())
    for evaluator, eval_params, ipc in configs.iter_rows():
        params = json.loads(eval_params)
        per_step = params["num_classes"] // params["steps"]
        same = (
            (pl.col("evaluator") == evaluator)
            & (pl.col("eval_params") == eval_params)
            & (pl.col("ipc") == ipc)
        )
        curve = (
            stepped.filter(same)
            .group_by("method_label", "step")
            .agg(*mean_std_n())
            .sort("method_label", "step")
        )
        totals = reduced.filter(same).group_by("method_label", "metric").agg(*mean_std_n())
        steps = list(range(params["steps"]))
        body = []
        for label in sorted(curve["method_label"].unique().to_list()):
            at = {
                r["step"]: _cell(r["mean"], r["std"], r["n"])
                for r in curve.filter(pl.col("method_label") == label).iter_rows(named=True)
            }
            end = {
                r["metric"]: _cell(r["mean"], r["std"], r["n"])
                for r in totals.filter(pl.col("method_label") == label).iter_rows(named=True)
            }
            body.append(
                [label]
                + [at.get(t, "–") for t in steps]
                + [end.get("avg_inc_top1", "–"), end.get("top1", "–")]
            )
        name = f"{evaluator}_{params['steps']}steps_ipc{ipc}.png"
        header = [f"{(t + 1) * per_step} classes" for t in steps]
        lines += [
            f"## Continual learning: {evaluator}, {params['steps']} steps of {per_step} classes, "
            f"IPC {ipc}",
            "",
            f"Test top-1 on the classes seen so far (%), mean ± std (n runs: {params['orders']} "
            f"class orders x {params['models']} models x distill seeds).",
            "",
        ]
        lines += _markdown_table(["method", *header, "avg incremental", "final"], body) + [""]
        plot_accuracy_vs_classes(curve, per_step, out_dir / name)
        lines += [f"![accuracy vs classes]({name})", ""]
    return lines


def plot_accuracy_vs_classes(curve: pl.DataFrame, per_step: int, path: Path) -> Path:
    """Test top1 (mean) against the number of classes seen, one line per method."""
    seen = curve.with_columns(((pl.col("step") + 1) * per_step).alias("classes"))
    return _line_plot(
        seen, "classes", path, "number of classes seen", "test top-1 (%) on the classes seen"
    )


NAS_TABLE = (  # reduce metric -> column of the NAS table (ddbench.evals._nas)
    ("num_candidates", "candidates"),
    ("spearman_rho", "Spearman ρ"),
    ("kendall_tau", "Kendall τ"),
    ("top20_spearman_rho", "top-20 % ρ"),
    ("selected_test_top1", "selected test top-1"),
    ("oracle_test_top1", "oracle test top-1"),
    ("early_stop_spearman_rho", "early-stop ρ"),
    ("early_stop_selected_test_top1", "early-stop selected"),
    ("proxy_search_seconds", "proxy search s"),
    ("whole_search_seconds", "whole-set search s"),
)


def nas_section(rows: pl.DataFrame, out_dir: Path) -> list[str]:
    """NAS evaluators (`nas720`, `nas_bench_201`): per evaluator, the reduce metrics per method
    and IPC and `nas_<evaluator>.png`, proxy against whole-set val top1 of every candidate (a
    panel per method and IPC, plus the early-stopping baseline). Empty without NAS rows."""
    ok = rows.filter(pl.col("status") == "ok")
    cells = ok.filter(pl.col("metric").is_in(["proxy_top1", "whole_top1", "early_stop_top1"]))
    if cells.is_empty():
        return []
    lines = [
        "## Architecture search with distilled data",
        "",
        "Candidates ranked by val top-1 after training on the distillate (proxy) against training "
        "on the whole train split; ρ / τ over all candidates, top-20 % ρ over the best fifth by "
        "whole-set val top-1; *selected*: whole-set test top-1 (%) of the best proxy candidate, "
        "*oracle*: of the best whole-set candidate; early-stop: the whole set trained for the "
        "proxy's number of steps; search s: training seconds summed over the candidates.",
        "",
    ]
    for evaluator in sorted(cells["evaluator"].unique().to_list()):
        reduced = ok.filter((pl.col("evaluator") == evaluator) & pl.col("arch").is_null())
        body = []
        for (label, ipc), sub in sorted(reduced.group_by("method_label", "ipc"), key=_key):
            values = dict(zip(sub["metric"].to_list(), sub["value"].to_list(), strict=True))
            body.append([str(label), str(ipc)] + [_nas_value(m, values) for m, _ in NAS_TABLE])
        header = ["method", "ipc"] + [title for _, title in NAS_TABLE]
        name = f"nas_{evaluator}.png"
        plot_nas_scatter(cells.filter(pl.col("evaluator") == evaluator), out_dir / name)
        lines += [f"### {evaluator}", ""] + _markdown_table(header, body) + [""]
        lines += [f"![proxy vs whole-set accuracy]({name})", ""]
    return lines


def _key(group: tuple[tuple[object, ...], pl.DataFrame]) -> tuple[str, ...]:
    return tuple(str(k) for k in group[0])


def _nas_value(metric: str, values: dict[str, float]) -> str:
    if metric not in values:
        return "–"
    value = values[metric]
    if metric == "num_candidates" or metric.endswith("seconds"):
        return f"{value:,.0f}"
    return f"{100 * value:.1f}" if metric.endswith("top1") else f"{value:.3f}"


def plot_nas_scatter(cells: pl.DataFrame, path: Path) -> Path:
    """Per candidate: proxy val top1 (mean over eval seeds) against whole-set val top1, one panel
    per (method, IPC) and one per IPC for the early-stopping baseline."""
    from scipy.stats import spearmanr

    val = cells.filter(pl.col("split") == "val")
    whole = (
        val.filter(pl.col("metric") == "whole_top1")
        .group_by("arch")
        .agg(pl.col("value").mean().alias("whole"))
    )
    proxies = (
        val.filter(pl.col("metric") != "whole_top1")
        .with_columns(
            pl.when(pl.col("metric") == "early_stop_top1")
            .then(pl.lit("early stop"))
            .otherwise(pl.col("method_label"))
            .alias("panel")
        )
        .group_by("panel", "ipc", "arch")
        .agg(pl.col("value").mean().alias("proxy"))
        .join(whole, on="arch")
    )
    panels = sorted(proxies.select("panel", "ipc").unique().iter_rows())
    cols = min(3, len(panels))
    rows_n = -(-len(panels) // cols)
    fig, axes = _pyplot().subplots(
        rows_n, cols, figsize=(4 * cols, 3.6 * rows_n), dpi=110, squeeze=False
    )
    for ax, (panel, ipc) in zip(axes.flat, panels, strict=False):
        sub = proxies.filter((pl.col("panel") == panel) & (pl.col("ipc") == ipc))
        x, y = sub["whole"].to_numpy() * 100, sub["proxy"].to_numpy() * 100
        rho = spearmanr(x, y).statistic if len(x) > 1 else float("nan")
        ax.scatter(x, y, s=12, alpha=0.7)
        ax.set_title(f"{panel}, ipc {ipc}: ρ = {rho:.2f} (n = {len(x)})", fontsize=9)
        ax.set_xlabel("whole-set val top-1 (%)")
        ax.set_ylabel("proxy val top-1 (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    return _save(fig, path)


def write_grids(run: Store, rows: pl.DataFrame, out_dir: Path) -> list[str]:
    """Copy each distillate's grid (drawn at distill time) into the report; markdown lines."""
    jobs = (
        rows.filter(pl.col("method") != REFERENCE)
        .select("job_id", "method_label", "ipc")
        .unique(subset="job_id")
        .sort("method_label", "ipc")
    )
    lines: list[str] = []
    for job in jobs.iter_rows(named=True):
        grid = f"artifacts/{job['job_id']}/{GRID_FILE}"
        if not run.exists(grid):
            continue
        name = f"grids/{job['method_label']}_{job['job_id']}.png"
        (out_dir / "grids").mkdir(parents=True, exist_ok=True)
        (out_dir / name).write_bytes(run.read_bytes(grid))
        lines.append(f"**{job['method_label']}** (job {job['job_id']})\n\n![{name}]({name})\n")
    return lines


def write_report(run: Store, out_dir: Path, formats: tuple[str, ...] = ("md",)) -> Path:
    from ddbench.ddranking import dd_ranking_section  # imported here: it imports this module
    from ddbench.report_tune import tune_section
    from ddbench.tuning import SELECTION

    loaded, unreadable = load_rows(run)
    # Tune's selection rows differ in eval params per trial: shown apart, never "left out"
    selection = loaded.filter(pl.col("evaluator") == SELECTION)
    every = loaded.filter(pl.col("evaluator") != SELECTION)  # DD-Ranking reads every config
    rows, left_out = latest_config(every, by=("protocol",))
    out_dir.mkdir(parents=True, exist_ok=True)
    every_protocol = summarise(rows)
    summary, protocol_lines = protocol_sections(every_protocol)
    suite = rows["suite"].drop_nulls().first() or PurePosixPath(run.uri).name
    status = rows.group_by("status").len().sort("status")
    counts = ", ".join(f"{r['len']} {r['status']}" for r in status.iter_rows(named=True))
    lines = [
        f"# ddbench report: {suite}",
        "",
        f"Dataset: {', '.join(sorted(rows['dataset'].unique().to_list()))}. Rows: {counts}. "
        "Test-split top-1 of the final epoch, in %, as mean ± std (n models).",
        "",
    ]
    if left_out:
        lines += [
            f"{left_out} rows measured with other evaluation params (an earlier run, or another "
            "entry of the same evaluator) are left out of the main tables (each evaluator is "
            "shown with the params of its latest run per protocol); they are under Other "
            "evaluation configs.",
            "",
        ]
    if protocol_lines:  # a continual-only suite has just its own section
        lines += protocol_lines
        lines += published_section(every_protocol)
        lines += gain_table(summary)
        lines += cost_table(summary)
    plot = plot_accuracy_vs_ipc(summary, out_dir / "accuracy_vs_ipc.png")
    if plot is not None:
        lines += ["## Accuracy against IPC", "", f"![accuracy vs ipc]({plot.name})", ""]
    lines += other_configs_section(every, rows)
    lines += cross_arch_section(summary, out_dir)
    lines += continual_section(rows, out_dir)
    lines += nas_section(rows, out_dir)
    lines += dd_ranking_section(every.filter(pl.col("protocol") == SHARED))
    lines += tune_section(selection, out_dir)
    grids = write_grids(run, rows, out_dir)
    if grids:
        lines += ["## Distilled images", ""] + grids
    failed = rows.filter(pl.col("status") == "failed")
    if len(failed):
        lines += ["## Failed cells", ""]
        for r in failed.iter_rows(named=True):
            last = (r["error"] or "").strip().splitlines()[-1:] or [""]
            lines.append(f"- {r['method_label']} ipc={r['ipc']} {r['arch']}: {last[0]}")
        lines.append("")
    lines += unreadable_section(unreadable)
    path = out_dir / "README.md"
    path.write_text("\n".join(lines))
    if "csv" in formats:
        every_protocol.write_csv(out_dir / "summary.csv")
    if "html" in formats:
        write_html("\n".join(lines), out_dir)
    return path
