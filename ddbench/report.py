"""Reports from the result table, with Polars: tables, plots and image grids.

`write_report(results_root, out_dir, formats)` reads `<results_root>/results/**/*.parquet` and
writes `<out_dir>/README.md` (markdown tables: top1 mean ± std (n) per method × arch for each
IPC, gain over `random_real`, the whole-dataset reference), `accuracy_vs_ipc.png`, one image grid
per distillate, and `summary.csv` when asked. Numbers are test-split, final-epoch accuracies in
percent (the rows hold fractions in [0, 1]). Add a section by adding a function that takes the
rows DataFrame and returns markdown lines.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ddbench.errors import UserError
from ddbench.viz import GRID_FILE

REFERENCE = "whole_dataset"
BASELINE = "random_real"


def load_rows(results_root: Path) -> pl.DataFrame:
    files = list((results_root / "results").glob("**/*.parquet"))
    if not files:
        raise UserError(f"no result files under {results_root / 'results'}: run the suite first")
    return pl.scan_parquet([str(f) for f in files]).collect()


def latest_config(rows: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Keep, per evaluator, the rows of its most recently used eval params.

    Changing an evaluator's params (more epochs, another sampling mode) makes new cells beside
    the old ones; averaging across configs would mix protocols. Returns the kept rows and the
    number of rows left out.
    """
    latest = (
        rows.sort("created_at")
        .group_by("evaluator")
        .agg(pl.col("eval_params").last().alias("latest_params"))
    )
    kept = rows.join(latest, on="evaluator").filter(
        pl.col("eval_params") == pl.col("latest_params")
    )
    return kept.drop("latest_params"), rows.height - kept.height


def summarise(rows: pl.DataFrame, metric: str = "top1", split: str = "test") -> pl.DataFrame:
    """mean, std, n of a metric per (method_label, ipc, arch), over eval seeds and distill seeds."""
    ok = rows.filter(
        (pl.col("status") == "ok")
        & (pl.col("metric") == metric)
        & (pl.col("split") == split)
        & pl.col("arch").is_not_null()
    )
    return (
        ok.group_by("dataset", "method_label", "method", "ipc", "arch")
        .agg(
            pl.col("value").mean().alias("mean"),
            pl.col("value").std().fill_null(0.0).alias("std"),
            pl.len().alias("n"),
            pl.col("artifact_bytes").first(),
            pl.col("distill_seconds").mean(),
        )
        .sort("ipc", "method_label", "arch")
    )


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
    costs = (
        summary.group_by("method_label", "ipc")
        .agg(pl.col("artifact_bytes").first(), pl.col("distill_seconds").first())
        .sort("ipc", "method_label")
    )
    body = [
        [
            r["method_label"],
            str(r["ipc"]),
            f"{r['artifact_bytes']:,}",
            f"{r['distill_seconds']:.1f}",
        ]
        for r in costs.iter_rows(named=True)
    ]
    return (
        ["## Cost of each distillate", ""]
        + _markdown_table(["method", "ipc", "artifact bytes", "distill seconds"], body)
        + [""]
    )


def plot_accuracy_vs_ipc(summary: pl.DataFrame, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_method = (
        summary.filter(pl.col("ipc") > 0)
        .group_by("method_label", "ipc")
        .agg(pl.col("mean").mean())
        .sort("method_label", "ipc")
    )
    if per_method.is_empty():
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label in sorted(per_method["method_label"].unique().to_list()):
        sub = per_method.filter(pl.col("method_label") == label)
        ax.plot(
            sub["ipc"].to_list(), [100 * v for v in sub["mean"].to_list()], marker="o", label=label
        )
    ref = summary.filter(pl.col("method") == REFERENCE)
    if len(ref):
        ax.axhline(100 * ref["mean"].mean(), color="grey", linestyle="--", label=REFERENCE)
    ax.set_xscale("log")
    ax.set_xlabel("images per class (IPC)")
    ax.set_ylabel("test top-1 (%), mean over architectures")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 3.6 * rows_n), dpi=110, squeeze=False)
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
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_grids(results_root: Path, rows: pl.DataFrame, out_dir: Path) -> list[str]:
    """Copy each distillate's grid (drawn at distill time) into the report; markdown lines."""
    import shutil

    jobs = (
        rows.filter(pl.col("method") != REFERENCE)
        .select("job_id", "method_label", "ipc")
        .unique(subset="job_id")
        .sort("method_label", "ipc")
    )
    lines: list[str] = []
    for job in jobs.iter_rows(named=True):
        grid = results_root / "artifacts" / job["job_id"] / GRID_FILE
        if not grid.is_file():
            continue
        name = f"grids/{job['method_label']}_{job['job_id']}.png"
        (out_dir / "grids").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(grid, out_dir / name)
        lines.append(f"**{job['method_label']}** (job {job['job_id']})\n\n![{name}]({name})\n")
    return lines


def write_report(results_root: Path, out_dir: Path, formats: tuple[str, ...] = ("md",)) -> Path:
    rows, left_out = latest_config(load_rows(results_root))
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows)
    suite = rows["suite"].drop_nulls().first() or results_root.name
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
            f"{left_out} rows measured with earlier evaluation params are left out (each "
            "evaluator is shown with the params of its latest run).",
            "",
        ]
    lines += [
        "## Top-1 by method and architecture",
        "",
    ]
    lines += pivot_tables(summary)
    lines += gain_table(summary)
    lines += cost_table(summary)
    plot = plot_accuracy_vs_ipc(summary, out_dir / "accuracy_vs_ipc.png")
    if plot is not None:
        lines += ["## Accuracy against IPC", "", f"![accuracy vs ipc]({plot.name})", ""]
    lines += nas_section(rows, out_dir)
    grids = write_grids(results_root, rows, out_dir)
    if grids:
        lines += ["## Distilled images", ""] + grids
    failed = rows.filter(pl.col("status") == "failed")
    if len(failed):
        lines += ["## Failed cells", ""]
        for r in failed.iter_rows(named=True):
            last = (r["error"] or "").strip().splitlines()[-1:] or [""]
            lines.append(f"- {r['method_label']} ipc={r['ipc']} {r['arch']}: {last[0]}")
        lines.append("")
    path = out_dir / "README.md"
    path.write_text("\n".join(lines))
    if "csv" in formats:
        summary.write_csv(out_dir / "summary.csv")
    return path
