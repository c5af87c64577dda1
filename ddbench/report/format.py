"""Formatting every report section shares: markdown tables, mean ± std (n) cells, the
aggregation behind them, and matplotlib plots saved as PNGs.

A section builds its markdown with `markdown_table` and `cell` (accuracies: fractions in [0, 1]
shown in %) or `number_cell` (any other metric, as measured), aggregates with `mean_std_n`, and
draws with `pyplot` + `save` (or `line_plot`, one line per method). A new format helper goes
here when two sections would need it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl


def mean_std_n() -> list[pl.Expr]:
    """The aggregation every table shows: mean, std (0 for a single value) and n of `value`."""
    return [
        pl.col("value").mean().alias("mean"),
        pl.col("value").std().fill_null(0.0).alias("std"),
        pl.len().alias("n"),
    ]


def cell(mean: float, std: float, n: int) -> str:
    """`mean ± std (n)` of a fraction in [0, 1], in percent with one decimal."""
    return f"{100 * mean:.1f} ± {100 * std:.1f} ({n})"


def number_cell(mean: float, std: float, n: int) -> str:
    """`mean ± std (n)` of a metric in its own unit, four significant digits."""
    return f"{mean:.4g} ± {std:.2g} ({n})"


def markdown_table(header: list[str], body: list[list[str]]) -> list[str]:
    """A pipe table's lines: the header, the rule and one line per row of `body`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return lines


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (imported when a plot is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> Path:
    """Lay out, write and close a figure; returns `path`."""
    fig.tight_layout()
    fig.savefig(path)
    pyplot().close(fig)
    return path


def line_plot(
    lines: pl.DataFrame,
    x: str,
    path: Path,
    xlabel: str,
    ylabel: str,
    log_x: bool = False,  # IPCs span 1 .. 50: a log axis spaces them evenly
    reference: tuple[str, float] | None = None,  # (label, value) of a dashed horizontal line
) -> Path:
    """One line per `method_label` of 100 x `mean` against column `x`."""
    fig, ax = pyplot().subplots(figsize=(6, 4), dpi=120)
    for label in sorted(lines["method_label"].unique().to_list()):
        sub = lines.filter(pl.col("method_label") == label).sort(x)
        ax.plot(sub[x].to_list(), [100 * v for v in sub["mean"].to_list()], marker="o", label=label)
    if reference is not None:
        ax.axhline(100 * reference[1], color="grey", linestyle="--", label=reference[0])
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, path)
