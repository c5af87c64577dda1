"""The report's Ray Tune section: every trial of every tuned job, and which one was chosen.

`tune_section(selection, out_dir)` takes the selection rows (`evaluator == "tune"`, split `val`, one
per scored model; `ddbench.tuning`) and returns markdown lines: per tuned job a table of its trials
(config, mean ± std (n) val top1, the chosen one in bold, chosen by `ddbench.selection.choose`, the
rule the runner applied), a plot of val top1 against each tuned parameter (every trial a dot, the
mean per value a line; a log axis for positive values spanning two decades or more) and, with two or
more trials, a parallel-coordinates view of the trials (one axis per tuned parameter plus val top1,
each trial a line coloured by its val top1). Extending: another view is another function of the
per-trial frame `trial_table` returns.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl

from ddbench.report.format import cell, markdown_table, mean_std_n, pyplot, save
from ddbench.selection import TrialScore, choose


def trial_table(selection: pl.DataFrame) -> pl.DataFrame:
    """One row per trial: tuned job, label, ipc, distill seed, trial job id, config (JSON),
    mean / std / n of val top1 and `seeds` (the models each trial should score)."""
    ok = selection.filter((pl.col("status") == "ok") & (pl.col("metric") == "top1"))
    params = pl.col("eval_params")
    return (
        ok.with_columns(
            tuned_job=params.str.json_path_match("$.tuned_job"),
            config=params.str.json_path_match("$.config"),
            seeds=params.str.json_path_match("$.seeds").cast(pl.Int64),
        )
        .group_by("tuned_job", "method_label", "ipc", "distill_seed", "job_id", "config", "seeds")
        .agg(*mean_std_n())
        .sort("method_label", "ipc", "distill_seed", "config")
    )


def tune_section(selection: pl.DataFrame, out_dir: Path) -> list[str]:
    """Markdown lines (and PNGs in `out_dir`) for every tuned job; [] without selection rows."""
    trials = trial_table(selection)
    if trials.is_empty():
        return []
    lines = [
        "## Ray Tune sweeps (selection on the val split)",
        "",
        "Each trial distils with its config and scores it by val top-1 (%) over its models; the "
        "tuned method's rows above use the chosen trial (**bold**).",
        "",
    ]
    for (job_id, label, ipc, seed), job_trials in trials.group_by(
        "tuned_job", "method_label", "ipc", "distill_seed", maintain_order=True
    ):
        configs = [json.loads(c) for c in job_trials["config"]]
        keys = sorted({k for c in configs for k in c})
        order = sorted(
            range(len(configs)), key=lambda i: [_sort_key(configs[i].get(k)) for k in keys]
        )
        job_trials, configs = job_trials[order], [configs[i] for i in order]
        scores = [
            TrialScore(r["job_id"], c, r["mean"], r["n"])
            for r, c in zip(job_trials.iter_rows(named=True), configs, strict=True)
        ]
        best = choose(scores, int(job_trials["seeds"].max()), "max")
        body = []
        for r, c in zip(job_trials.iter_rows(named=True), configs, strict=True):
            row = [str(c.get(k, "–")) for k in keys] + [cell(r["mean"], r["std"], r["n"])]
            chosen = best is not None and r["job_id"] == best.trial_job_id
            body.append([f"**{v}**" for v in row] if chosen else row)
        title = f"{label}, IPC {ipc}, distill seed {seed} (job {job_id})"
        lines += [f"### {title}", ""] + markdown_table([*keys, "val top-1 %"], body) + [""]
        stem = out_dir / f"tune_{label}_{job_id}"
        means, stds = job_trials["mean"].to_list(), job_trials["std"].to_list()
        curves = plot_tune_curves(configs, means, stds, keys, title, Path(f"{stem}_curves.png"))
        lines += [f"![{label} val top-1 per parameter]({curves.name})", ""]
        if len(configs) > 1:
            parallel = plot_parallel(configs, means, keys, title, Path(f"{stem}_parallel.png"))
            lines += [f"![{label} trials, parallel coordinates]({parallel.name})", ""]
    return lines


def _sort_key(value: object) -> tuple[int, float, str]:
    """Numbers in numeric order first, then anything else by its text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _numbers(values: list[object]) -> list[float] | None:
    """The values as floats when they are all numbers (not booleans), else None."""
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values]  # type: ignore[arg-type]
    return None


def _positions(values: list[object]) -> tuple[list[float], list[str], bool]:
    """Plot positions of a parameter's values, the labels of the axis ends (or of every
    category) and whether the positions are log10 (positive numbers spanning >= 2 decades)."""
    numbers = _numbers(values)
    if numbers is None:
        categories = sorted({str(v) for v in values})
        return [float(categories.index(str(v))) for v in values], categories, False
    ends = [f"{min(numbers):.3g}", f"{max(numbers):.3g}"]
    if min(numbers) > 0 and max(numbers) / min(numbers) >= 100:
        return [math.log10(v) for v in numbers], ends, True
    return numbers, ends, False


def plot_tune_curves(
    configs: list[dict],
    val_top1: list[float],
    val_std: list[float],
    keys: list[str],
    title: str,
    path: Path,
) -> Path:
    """Val top1 (%) against each tuned parameter: every trial a dot with its std over models as
    an error bar, the mean per parameter value a line."""
    plt = pyplot()
    width = max(6.0, 4.2 * len(keys))  # room for the title under a single panel
    fig, axes = plt.subplots(1, len(keys), figsize=(width, 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        trials = [
            (c[key], 100 * v, 100 * sd)
            for c, v, sd in zip(configs, val_top1, val_std, strict=True)
            if key in c
        ]
        points = [(x, y) for x, y, _ in trials]
        xs, labels, log = _positions([x for x, _ in points])
        ys = [y for _, y in points]
        ax.errorbar(xs, ys, yerr=[sd for _, _, sd in trials], fmt="none", alpha=0.4, capsize=3)
        ax.scatter(xs, ys, s=16, alpha=0.6)
        means: dict[float, list[float]] = {}
        for x, y in zip(xs, ys, strict=True):
            means.setdefault(x, []).append(y)
        line = sorted((x, sum(v) / len(v)) for x, v in means.items())
        ax.plot([x for x, _ in line], [y for _, y in line], marker="o")
        if _numbers([x for x, _ in points]) is None:
            ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(f"log10 {key}" if log else key)
        ax.set_ylabel("val top-1 (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    return save(fig, path)


def plot_parallel(
    configs: list[dict], val_top1: list[float], keys: list[str], title: str, path: Path
) -> Path:
    """Parallel coordinates: an axis per tuned parameter and one for val top1 (each scaled to
    [0, 1] between its extremes), each trial a line coloured by its val top1."""
    plt = pyplot()
    columns = [_positions([c.get(k, "–") for c in configs]) for k in keys]
    columns.append(_positions([100 * v for v in val_top1]))
    names = [*keys, "val top-1 %"]

    def scaled(values: list[float]) -> list[float]:
        low, high = min(values), max(values)
        return [0.5 if high == low else (v - low) / (high - low) for v in values]

    scaled_columns = [scaled(values) for values, _, _ in columns]
    fig, ax = plt.subplots(figsize=(1.8 * len(names) + 2, 3.6))
    cmap = plt.get_cmap("viridis")
    low, high = min(val_top1), max(val_top1)
    for i, score in enumerate(val_top1):
        shade = 0.5 if high == low else (score - low) / (high - low)
        ax.plot(range(len(names)), [col[i] for col in scaled_columns], color=cmap(shade), alpha=0.8)
    for j, (_, labels, log) in enumerate(columns):
        ax.axvline(j, color="grey", linewidth=0.8)
        ax.text(j, -0.08, labels[0], ha="center", va="top", fontsize=7)
        ax.text(
            j, 1.04, labels[-1] + (" (log)" if log else ""), ha="center", va="bottom", fontsize=7
        )
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks([])
    ax.set_ylim(-0.15, 1.12)
    ax.set_title(title, fontsize=9)
    return save(fig, path)
