"""Reports from the result table, with Polars: `write_report(run, out_dir, formats)` reads every
result file of a run's `Store` (`<out>/<suite>`, a local directory or a URI) and writes
`<out_dir>/README.md`, its plots and image grids, `summary.csv` and `report.html` when asked.
Numbers are test-split, final-epoch accuracies in percent (the rows hold fractions in [0, 1]).

The package, one module per role:

- `format.py`: what every section shares: markdown tables, mean ± std (n) cells, the
  aggregation behind them, pyplot and line plots;
- `rows.py`: loading the rows, filling old files' columns, each evaluator's latest config, the
  summary behind the tables, reduce rows;
- `accuracy.py`: the main tables per protocol (from `cross_arch`'s test top-1), gains, costs,
  published numbers, other configs, the cross-arch heatmap, accuracy against IPC, and the
  leaderboard's aggregation (`leaderboard_table`);
- `ddranking.py`: DD-Ranking scores from the `cross_arch` rows;
- `tune.py`: the Ray Tune selection rows (evaluator `tune`, split `val`), which never enter the
  test tables;
- `sections.py`: report sections as plugins, one per evaluator (`SECTIONS`), and the generic
  section of the reduce metrics of an evaluator without one; the built-ins `continual.py` and
  `nas.py` register when this package is imported;
- `html.py`: the same markdown as one self-contained `report.html`;
- this module: the assembly (`write_report`) and the run-level sections (image grids, where
  the suite's values were chosen, failed cells, unreadable files).

`write_report` renders, after the accuracy sections, the section of every other evaluator in the
rows (`ddbench.report.sections`), then DD-Ranking, Tune, grids, failures. Extending: a section
for a new evaluator is a `ReportSection` registered under its name (a file of its own, in this
folder or passed with `ddbench report --include`); a new accuracy table is a function in
`accuracy.py` called below. A report imports no torch and no method plugin: the methods' paper
protocols and published numbers come from the record the run wrote (`rows.run_method_facts`).
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import polars as pl

from ddbench.choices import CHOSEN_ON_FILE, UNRECORDED
from ddbench.protocols import SHARED
from ddbench.report import continual, nas  # noqa: F401 - the built-in sections register
from ddbench.report.accuracy import (
    MAIN_EVALUATOR,
    accuracy_vs_ipc_section,
    cost_table,
    cross_arch_section,
    gain_table,
    image_change_section,
    other_configs_section,
    protocol_sections,
    published_section,
    teacher_section,
)
from ddbench.report.ddranking import dd_ranking_section
from ddbench.report.format import markdown_table
from ddbench.report.html import write_html
from ddbench.report.rows import REFERENCE, latest_config, load_rows, run_method_facts, summarise
from ddbench.report.sections import evaluator_section
from ddbench.report.tune import tune_section
from ddbench.selection import SELECTION
from ddbench.storage import Store
from ddbench.viz import GRID_FILE


def write_report(run: Store, out_dir: Path, formats: tuple[str, ...] = ("md",)) -> Path:
    """Write the run's report into `out_dir` (README.md, plots, grids; `csv`: summary.csv,
    `html`: report.html); returns the path of README.md."""
    loaded, unreadable = load_rows(run)
    # Tune's selection rows differ in eval params per trial: shown apart, never "left out"
    selection = loaded.filter(pl.col("evaluator") == SELECTION)
    every = loaded.filter(pl.col("evaluator") != SELECTION)  # DD-Ranking reads every config
    rows, left_out = latest_config(every, by=("protocol",))
    out_dir.mkdir(parents=True, exist_ok=True)
    every_protocol = summarise(rows)
    facts = run_method_facts(run, rows)
    summary, protocol_lines = protocol_sections(every_protocol, facts)
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
        lines += published_section(every_protocol, facts)
        lines += gain_table(summary)
        lines += cost_table(summary)
        lines += image_change_section(rows)
        lines += teacher_section(every)
    lines += accuracy_vs_ipc_section(summary, out_dir)
    lines += other_configs_section(every, rows)
    lines += cross_arch_section(summary, out_dir)
    for evaluator in sorted(set(rows["evaluator"].to_list()) - {MAIN_EVALUATOR}):
        lines += evaluator_section(
            evaluator, rows.filter(pl.col("evaluator") == evaluator), out_dir
        )
    lines += dd_ranking_section(every.filter(pl.col("protocol") == SHARED))
    lines += tune_section(selection, out_dir)
    grids = write_grids(run, rows, out_dir)
    if grids:
        lines += ["## Distilled images", ""] + grids
    lines += choices_section(run)
    lines += failed_section(rows)
    lines += unreadable_section(unreadable)
    path = out_dir / "README.md"
    path.write_text("\n".join(lines))
    if "csv" in formats:
        every_protocol.write_csv(out_dir / "summary.csv")
    if "html" in formats:
        write_html("\n".join(lines), out_dir)
    return path


VALUE_CHARS = 60  # a longer value (a nested mapping) is cut in the table


def choices_section(run: Store) -> list[str]:
    """Every value the suite's entries set and where it was chosen (`ddbench.choices`); empty
    for a run written before that record existed."""
    if not run.exists(CHOSEN_ON_FILE):
        return []
    records = json.loads(run.read_text(CHOSEN_ON_FILE))
    if not records:
        return []

    def short(text: str) -> str:
        return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "…"

    body = [
        [r["section"], r["entry"], r["param"], short(r["value"]), r["chosen_on"]] for r in records
    ]
    unrecorded = sum(r["chosen_on"] == UNRECORDED for r in records)
    return [
        "## Where the suite's values were chosen",
        "",
        "Every value the suite's method and eval entries set, and where it was chosen (the "
        "entry's `chosen_on`): val = measured on the val split, paper = the method's paper or "
        "code, budget = cut to fit a run time (not chosen for accuracy), val (Ray Tune) = the "
        f"sweep's selection, --set = an override of this run. {unrecorded} of {len(records)} "
        "values do not say where they were chosen (unrecorded).",
        "",
        *markdown_table(["section", "entry", "param", "value", "chosen on"], body),
        "",
    ]


def failed_section(rows: pl.DataFrame) -> list[str]:
    """One line per failed cell: method, IPC, arch and the last line of its error."""
    failed = rows.filter(pl.col("status") == "failed")
    if failed.is_empty():
        return []
    lines = ["## Failed cells", ""]
    for r in failed.iter_rows(named=True):
        last = (r["error"] or "").strip().splitlines()[-1:] or [""]
        lines.append(f"- {r['method_label']} ipc={r['ipc']} {r['arch']}: {last[0]}")
    return [*lines, ""]


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
