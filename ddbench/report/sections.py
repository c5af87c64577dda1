"""Report sections as plugins: one per evaluator, keyed by the evaluator's name.

`write_report` gives every evaluator of a run its own section, except `cross_arch` (the main
accuracy tables, `ddbench.report.accuracy`) and Tune's selection rows (`ddbench.report.tune`):
the section registered under the evaluator's name if there is one, else `generic_section`, a
table of the evaluator's reduce metrics (`ddbench.report.rows.reduce_rows`), so a new
evaluator's job-level numbers appear in the report without a line of report code.

A section is a class registered with `@SECTIONS.register`::

    from ddbench.report.sections import SECTIONS, ReportSection

    @SECTIONS.register
    class MyEvalSection(ReportSection):
        '''My evaluator: one table per config (the docstring's first paragraph describes it).'''
        name = "my_eval"  # the evaluator whose rows it renders
        def render(self, rows, out_dir):
            return ["## My evaluator", "", ...]  # markdown lines; PNGs go to out_dir

Built-ins live beside this module (`continual.py`, `nas.py`) and register when `ddbench.report`
is imported (its `__init__` imports them). A plugin file passed with `ddbench report --include
FILE` (or an installed distribution's entry point in group `ddbench.report_sections`) registers
its own the same way.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ddbench.protocols import SHARED
from ddbench.registry import Plugin, Registry
from ddbench.report.format import markdown_table, mean_std_n, number_cell
from ddbench.report.rows import reduce_rows


class ReportSection(Plugin):
    """Base of a report section: `render` one evaluator's rows as markdown lines."""

    def render(self, rows: pl.DataFrame, out_dir: Path) -> list[str]:
        """Markdown lines for `rows` (this evaluator's rows, its latest config per protocol and
        number of steps); plots are written into `out_dir` and linked by file name. Return []
        to leave the section out."""
        raise NotImplementedError


SECTIONS: Registry[type[ReportSection]] = Registry("report section", "ddbench.report_sections")


def evaluator_section(evaluator: str, rows: pl.DataFrame, out_dir: Path) -> list[str]:
    """The section of `evaluator`: its registered one, else `generic_section`."""
    if evaluator in SECTIONS:
        return SECTIONS.get(evaluator)().render(rows, out_dir)
    return generic_section(evaluator, rows)


def generic_section(evaluator: str, rows: pl.DataFrame) -> list[str]:
    """The reduce metrics of an evaluator without a section of its own: mean ± std (n) over
    distill seeds of each metric (a column per metric and split) per method and IPC, a
    method's non-shared protocol named beside it. Empty without reduce rows."""
    reduced = reduce_rows(rows).with_columns(
        column=pl.col("metric") + " (" + pl.col("split") + ")",
        method_label=pl.when(pl.col("protocol") == SHARED)
        .then(pl.col("method_label"))
        .otherwise(pl.col("method_label") + " (" + pl.col("protocol") + ")"),
    )
    if reduced.is_empty():
        return []
    columns = sorted(reduced["column"].unique().to_list())
    stats = (
        reduced.group_by("method_label", "ipc", "column")
        .agg(*mean_std_n())
        .sort("method_label", "ipc")
    )
    body = []
    for (label, ipc), sub in stats.group_by("method_label", "ipc", maintain_order=True):
        at = {
            r["column"]: number_cell(r["mean"], r["std"], r["n"]) for r in sub.iter_rows(named=True)
        }
        body.append([str(label), str(ipc)] + [at.get(c, "–") for c in columns])
    return [
        f"## {evaluator}",
        "",
        f"The job-level metrics of `{evaluator}` (its reduce rows), as mean ± std (n distill "
        "seeds) per method and IPC, in the metric's own unit.",
        "",
        *markdown_table(["method", "ipc", *columns], body),
        "",
    ]
