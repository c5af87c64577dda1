"""The report's accuracy sections, from the test top-1 cell rows (in practice `cross_arch`'s):
the main method × arch tables per protocol, gains, costs, the papers' published numbers, other
eval configs, the cross-architecture heatmap and the accuracy-vs-IPC plot; and
`leaderboard_table`, the same aggregation over the rows of many runs (`ddbench leaderboard`).

Every number belongs to one evaluation protocol (`protocol`, `eval_config` columns;
`ddbench.protocols`) and no aggregate mixes two: the main tables are one set per protocol, the
shared protocol's (every method trained alike) and, when the run has any, each method's paper
protocol (the methods whose paper protocol is the shared one appear there with their shared
rows), each saying what it is. `published_section` sets the papers' own numbers
(`Method.published`) beside ddbench's where the run's dataset has them, and says where the run's
protocol is not the paper's. `teacher_section` shows the teacher behind teacher-label cells and
flags near-uniform targets; `image_change_section` how far pixel methods moved their images.
The cost table counts a job's prerequisites (d2m's cgan, d4m's diffusion model:
`prerequisite_seconds`). `other_configs_section` shows the rows of the eval
params left out of the main tables (only the latest config of an evaluator per protocol is
there), one table per config.

The rows carry neither a method's paper protocol nor its published numbers: those come from the
run's `MethodFacts` record (`rows.run_method_facts`), so the report imports no method plugin and
no torch. Extending: a new accuracy table is a function of the `summarise` frame returning
markdown lines, called from `ddbench.report.write_report`.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import polars as pl

from ddbench.protocols import (
    NEAR_UNIFORM_CERTAINTY,
    PROTOCOL_PARAMS,
    SHARED,
    MethodFacts,
    paper_name,
)
from ddbench.report.format import cell, line_plot, markdown_table, pyplot, save
from ddbench.report.rows import (
    BASELINE,
    REFERENCE,
    fill_protocol,
    protocol_params,
    sorted_groups,
    summarise,
)
from ddbench.selection import SELECTION

MAIN_EVALUATOR = "cross_arch"  # its rows are the main tables, not a section of their own


def other_configs_section(every: pl.DataFrame, shown: pl.DataFrame) -> list[str]:
    """Top-1 tables of the eval params `latest_config` left out of the main tables (an earlier
    run, or the same suite run again with, say, `labels: teacher`), one per config, titled by
    the params that differ from the shown config of that evaluator."""
    kept = shown.select("evaluator", "eval_params").unique()
    left = every.join(kept, on=["evaluator", "eval_params"], how="anti")
    lines: list[str] = []
    for (evaluator, params), group in sorted_groups(left, "evaluator", "eval_params"):
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
                r["arch"]: cell(r["mean"], r["std"], r["n"]) for r in sub.iter_rows(named=True)
            }
            body.append([label] + [cells.get(a, "–") for a in archs])
        if len(reference):
            cells = {
                r["arch"]: cell(r["mean"], r["std"], r["n"])
                for r in reference.iter_rows(named=True)
            }
            body.append([f"*{REFERENCE}* (reference)"] + [cells.get(a, "–") for a in archs])
        lines += markdown_table(["method"] + archs, body) + [""]
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
        + markdown_table(["method"] + [f"IPC {i}" for i in ipcs], body)
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
        + markdown_table(header, body)
        + [""]
    )


def image_change_section(rows: pl.DataFrame) -> list[str]:
    """How far each pixel method's images moved from their initialisation (`image_change`,
    ||S_T - S_0|| / ||S_0||), mean over its distill seeds, per method and IPC: a method that
    left its initial images almost as they were shows here. Empty when no row has it."""
    change = rows.filter(
        (pl.col("evaluator") == MAIN_EVALUATOR)
        & (pl.col("status") == "ok")
        & (pl.col("metric") == "image_change")
    )
    if change.is_empty():
        return []
    per_job = change.group_by("method_label", "ipc", "job_id").agg(pl.col("value").first())
    table = (
        per_job.group_by("method_label", "ipc")
        .agg(pl.col("value").mean().alias("mean"), pl.len().alias("n"))
        .sort("ipc", "method_label")
    )
    body = [
        [r["method_label"], str(r["ipc"]), f"{r['mean']:.3g} ({r['n']})"]
        for r in table.iter_rows(named=True)
    ]
    return [
        "## How far the distilled images moved",
        "",
        "‖S_T − S_0‖ / ‖S_0‖ of each pixel method's images against their initialisation, mean "
        "over distill seeds (n): near 0, the method left its initial images almost as they were.",
        "",
        *markdown_table(["method", "ipc", "image change"], body),
        "",
    ]


def teacher_section(rows: pl.DataFrame) -> list[str]:
    """What students trained on teacher soft labels learned from, per protocol, method, IPC and
    temperature, over every evaluation config of the run: the teacher's val and test top-1,
    the mean largest probability of its targets (`teacher_confidence`), its certainty
    (0 = uniform, 1 = one-hot) and how often the targets' top class was the image's own label
    (`teacher_agreement`); a row whose certainty is under `NEAR_UNIFORM_CERTAINTY` is
    flagged, since such targets teach little. Empty when no cell trained on a teacher's
    labels."""
    teacher = rows.filter(
        (pl.col("evaluator") == MAIN_EVALUATOR)
        & (pl.col("status") == "ok")
        & pl.col("metric").str.starts_with("teacher_")
    )
    if teacher.is_empty():
        return []
    keys = ["protocol", "method_label", "ipc", "temperature"]
    wide = (
        teacher.with_columns(
            name=pl.col("metric") + "_" + pl.col("split"),
            temperature=pl.col("eval_params").str.json_path_match("$.temperature"),
        )
        .group_by(*keys, "name")
        .agg(pl.col("value").mean())
        .pivot(on="name", index=keys, values="value")
        .sort(keys)
    )
    body, flagged = [], 0
    for r in wide.iter_rows(named=True):
        certainty = r.get("teacher_certainty_test")
        near_uniform = certainty is not None and certainty < NEAR_UNIFORM_CERTAINTY
        flagged += near_uniform
        body.append(
            [
                r["protocol"],
                r["method_label"],
                str(r["ipc"]),
                r["temperature"] or "–",
                *(_percent(r.get(f"teacher_top1_{split}")) for split in ("val", "test")),
                _fraction(r.get("teacher_confidence_test")),
                _fraction(certainty) + (" **near uniform**" if near_uniform else ""),
                _fraction(r.get("teacher_agreement_test")),
            ]
        )
    header = ["protocol", "method", "ipc", "T", "teacher val", "teacher test", "confidence"]
    lines = [
        "## Teacher soft labels",
        "",
        "The teacher behind every `labels: teacher` cell: its own top-1 (%), the mean largest "
        "probability of the targets it gave the students (confidence) and how far that is from "
        "uniform targets towards one-hot ones (certainty: 0 to 1), and the share of them whose "
        "top class was the training image's own label (agreement: low when the teacher reads "
        "the distillate's images as other classes, so the students learn another labelling "
        "than the one the images were made for), averaged over the cells.",
        "",
        *markdown_table([*header, "certainty", "agreement"], body),
        "",
    ]
    if flagged:
        lines += [
            f"**Warning**: in {flagged} row(s) the targets were near uniform (certainty under "
            f"{NEAR_UNIFORM_CERTAINTY}): those students learned from little more than noise. "
            "Lower the temperature or train the teacher longer.",
            "",
        ]
    return lines


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _fraction(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def protocol_sections(summary: pl.DataFrame, facts: MethodFacts) -> tuple[pl.DataFrame, list[str]]:
    """The main tables, one set per protocol, and the shared protocol's summary (gain, cost and
    plots use it). With paper-protocol rows, a second set shows each method under its paper's
    protocol (methods whose paper protocol is the shared one with their shared rows), each
    non-shared row labelled with its protocol, and a list of what each protocol changes."""
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
    missing = [m for m in view["method"].unique().to_list() if facts.paper_protocol.get(m)]
    view = view.with_columns(
        method_label=pl.when(pl.col("protocol") != SHARED)
        .then(pl.col("method_label") + " (" + pl.col("protocol") + ")")
        .when(pl.col("method").is_in(missing))
        .then(pl.col("method_label") + " (shared: its paper protocol not run)")
        .otherwise(pl.col("method_label"))
    )
    changes = []
    for method in sorted(own["method"].unique().to_list()):
        paper = facts.paper_protocol[method]
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


def published_section(summary: pl.DataFrame, facts: MethodFacts) -> list[str]:
    """The papers' reported ConvNet top-1 (`Method.published`) beside ddbench's `convnet`
    number under the paper's protocol, for the run's dataset and IPCs. Where the run has no rows
    under the paper's protocol, ddbench's shared-protocol number is shown and the note says so;
    the note also names protocol params that differ from the DC recipe's defaults (epochs,
    augmentation). Empty when no method of the run has a published number for its dataset."""
    convnet = summary.filter(pl.col("arch") == "convnet")
    body = []
    for (method, label, dataset, ipc), rows in sorted_groups(
        convnet, "method", "method_label", "dataset", "ipc"
    ):
        published = facts.published.get(str(method), ())
        reported = [p for p in published if (p.dataset, p.ipc) == (dataset, ipc)]
        if not reported:
            continue
        paper_protocol = facts.paper_protocol.get(str(method), {})
        own = paper_name(method) if paper_protocol else SHARED
        matched = rows.filter(pl.col("protocol") == own)
        shown = matched if len(matched) else rows.filter(pl.col("protocol") == SHARED)
        if shown.is_empty():
            continue
        r = shown.row(0, named=True)
        expected = {**facts.shared_defaults, **paper_protocol}
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
                [label, str(ipc), cell(r["mean"], r["std"], r["n"]), paper, own, p.source]
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
        *markdown_table(["method", "ipc", "ddbench", "paper", "protocol", "source", "note"], body),
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
    protocol columns (`protocol`, labels, sampling, augment, epochs, optimizer) and costs.
    Numbers of two protocols or configs are never averaged together."""
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


def accuracy_vs_ipc_section(summary: pl.DataFrame, out_dir: Path) -> list[str]:
    """`accuracy_vs_ipc.png` under a heading; empty without an IPC > 0."""
    plot = plot_accuracy_vs_ipc(summary, out_dir / "accuracy_vs_ipc.png")
    if plot is None:
        return []
    return ["## Accuracy against IPC", "", f"![accuracy vs ipc]({plot.name})", ""]


def plot_accuracy_vs_ipc(summary: pl.DataFrame, path: Path) -> Path | None:
    """Mean test top1 (mean over archs) against IPC, one line per method, the reference dashed;
    None without an IPC > 0."""
    per_method = (
        summary.filter(pl.col("ipc") > 0).group_by("method_label", "ipc").agg(pl.col("mean").mean())
    )
    if per_method.is_empty():
        return None
    ref = summary.filter(pl.col("method") == REFERENCE)
    return line_plot(
        per_method,
        "ipc",
        path,
        "images per class (IPC)",
        "test top-1 (%), mean over architectures",
        log_x=True,
        reference=(REFERENCE, ref["mean"].mean()) if len(ref) else None,
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
    fig, axes = pyplot().subplots(
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
    return save(fig, path)
