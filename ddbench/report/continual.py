"""The report section of the `continual` evaluator (class-incremental learning,
`ddbench.evals.continual`).

Rows with a `step` stay out of the method × arch tables: per evaluator config and IPC this
section shows test top1 per method × step, the reduce rows' average incremental and final top1,
and `<evaluator>_<steps>steps_ipc<ipc>.png`, accuracy against the number of classes seen. The
evaluator keeps its latest config per number of steps (`ddbench.report.rows.latest_config`: a
suite runs 5 and 10 steps side by side; the tables never mix them).
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from ddbench.report.format import cell, line_plot, markdown_table, mean_std_n
from ddbench.report.sections import SECTIONS, ReportSection


@SECTIONS.register
class ContinualSection(ReportSection):
    """Continual learning: per config and IPC, test top-1 per method and step, the average
    incremental and final top-1, and accuracy against the number of classes seen."""

    name = "continual"

    def render(self, rows: pl.DataFrame, out_dir: Path) -> list[str]:
        """Per evaluator config and IPC: test top1 per method x step (mean ± std (n) over class
        orders, models and distill seeds), the reduce rows' average incremental and final top1,
        and a plot of accuracy against the number of classes seen. Empty without per-step
        rows."""
        ok = rows.filter((pl.col("status") == "ok") & (pl.col("split") == "test"))
        stepped = ok.filter(pl.col("step").is_not_null() & (pl.col("metric") == "top1"))
        if stepped.is_empty():
            return []
        reduced = ok.filter(pl.col("step").is_null())
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
                    r["step"]: cell(r["mean"], r["std"], r["n"])
                    for r in curve.filter(pl.col("method_label") == label).iter_rows(named=True)
                }
                end = {
                    r["metric"]: cell(r["mean"], r["std"], r["n"])
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
                f"## Continual learning: {evaluator}, {params['steps']} steps of {per_step} "
                f"classes, IPC {ipc}",
                "",
                "Test top-1 on the classes seen so far (%), mean ± std (n runs: "
                f"{params['orders']} class orders x {params['models']} models x distill seeds).",
                "",
            ]
            lines += markdown_table(["method", *header, "avg incremental", "final"], body) + [""]
            plot_accuracy_vs_classes(curve, per_step, out_dir / name)
            lines += [f"![accuracy vs classes]({name})", ""]
        return lines


def plot_accuracy_vs_classes(curve: pl.DataFrame, per_step: int, path: Path) -> Path:
    """Test top1 (mean) against the number of classes seen, one line per method."""
    seen = curve.with_columns(((pl.col("step") + 1) * per_step).alias("classes"))
    return line_plot(
        seen, "classes", path, "number of classes seen", "test top-1 (%) on the classes seen"
    )
