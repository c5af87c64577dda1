"""The report section of the NAS evaluators (`nas720`, `nas_bench_201`; `ddbench.evals._nas`):
how well training on a distillate ranks architecture candidates.

Per evaluator: the reduce metrics per method and IPC (`NAS_TABLE`: rank correlations, the
selected and oracle candidates' test top-1, the early-stopping baseline, search seconds) and
`nas_<evaluator>.png`, proxy against whole-set val top1 of every candidate (a panel per method
and IPC, plus the early-stopping baseline). Another NAS evaluator registers a subclass of
`NasSection` with its name; a new reduce metric is a line of `NAS_TABLE`.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ddbench.report.format import markdown_table, pyplot, save
from ddbench.report.rows import sorted_groups
from ddbench.report.sections import SECTIONS, ReportSection

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


class NasSection(ReportSection):
    """Architecture search with distilled data: candidates ranked by the distillate against
    the whole train split."""

    def render(self, rows: pl.DataFrame, out_dir: Path) -> list[str]:
        """The heading (one per NAS evaluator of the run), the reduce table of the evaluator's
        rows and `nas_<evaluator>.png`. Empty without per-candidate rows."""
        ok = rows.filter(pl.col("status") == "ok")
        cells = ok.filter(pl.col("metric").is_in(["proxy_top1", "whole_top1", "early_stop_top1"]))
        if cells.is_empty():
            return []
        lines = [
            f"## Architecture search with distilled data: {self.name}",
            "",
            "Candidates ranked by val top-1 after training on the distillate (proxy) against "
            "training on the whole train split; ρ / τ over all candidates, top-20 % ρ over the "
            "best fifth by whole-set val top-1; *selected*: whole-set test top-1 (%) of the best "
            "proxy candidate, *oracle*: of the best whole-set candidate; early-stop: the whole set "
            "trained for the proxy's number of steps; search s: training seconds summed over the "
            "candidates.",
            "",
        ]
        reduced = ok.filter(pl.col("arch").is_null())
        body = []
        for (label, ipc), sub in sorted_groups(reduced, "method_label", "ipc"):
            values = dict(zip(sub["metric"].to_list(), sub["value"].to_list(), strict=True))
            body.append([str(label), str(ipc)] + [_nas_value(m, values) for m, _ in NAS_TABLE])
        header = ["method", "ipc"] + [title for _, title in NAS_TABLE]
        name = f"nas_{self.name}.png"
        plot_nas_scatter(cells, out_dir / name)
        lines += markdown_table(header, body) + [""]
        lines += [f"![proxy vs whole-set accuracy]({name})", ""]
        return lines


@SECTIONS.register
class Nas720Section(NasSection):
    """`nas720`: the 720-ConvNet grid ranked by the distillate against the whole train split."""

    name = "nas720"


@SECTIONS.register
class NasBench201Section(NasSection):
    """`nas_bench_201`: NAS-Bench-201 cells ranked by the distillate against the whole train
    split."""

    name = "nas_bench_201"


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
    fig, axes = pyplot().subplots(
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
    return save(fig, path)
