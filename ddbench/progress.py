"""What `ddbench run` and `ddbench eval` print (docs/architecture.md#command-line).

- `RunOutput`: the run's `ddbench.runner.work.RunLog` over a rich console, at one of three
  verbosities (`--quiet`: problems and the final summary; `normal`; `--verbose`: also Ray's and
  MLflow's own logs). Every line starts with the seconds since the start; lines of ended units
  carry the run's tally (`[distill 3/21 · eval 57/138 · ETA 4 min]`). On a terminal, `bars()`
  adds live progress bars (distill jobs, eval cells, each with its count and time left); off a
  terminal (a file, a pipe, CI) the output is plain lines without colour codes.
- `next_steps`: the commands that follow a run (its report, its MLflow store, its Parquet rows).

A new kind of line: give `RunLog` (and so `RunOutput` and `ddbench.runner.work.LineLog`) a
method, and say which verbosities show it.
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

from rich.console import Console

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from ddbench.runner.work import RunSummary

Verbosity = Literal["quiet", "normal", "verbose"]


class RunOutput:
    """The console lines (and, on a terminal, the progress bars) of one run."""

    def __init__(self, verbosity: Verbosity = "normal", console: Console | None = None) -> None:
        self.verbosity = verbosity
        # rich writes colour and bars only to a terminal; a file or a pipe gets plain text
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.started = time.monotonic()
        self._bars: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        if verbosity != "verbose":  # MLflow's INFO lines (e.g. creating its sqlite tables)
            os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read at mlflow's import
            logging.getLogger("mlflow").setLevel(logging.WARNING)

    def __call__(self, message: str) -> None:
        """A detail line (what starts and ends, workers' progress): not with `--quiet`."""
        if self.verbosity != "quiet":
            self._print(message)

    def problem(self, message: str) -> None:
        """A failure or a warning: always shown."""
        self._print(message, style="red")

    def summary(self, message: str) -> None:
        """A line of the run's end (totals, next commands): always shown."""
        self._print(message)

    def next_steps(self, lines: list[str]) -> None:
        """The commands that follow the run (`next_steps`), as they are: always shown."""
        for line in lines:
            self.console.print(line, markup=False)

    def counts(self, summary: RunSummary) -> None:
        """The run's counts changed: move the bars (when there are bars)."""
        if self._bars is None:
            return
        for kind, done, total in (
            ("distill", summary.jobs_done, summary.jobs_total),
            ("eval", summary.cells_done, summary.cells_total),
        ):
            if kind in self._tasks:
                self._bars.update(self._tasks[kind], completed=done, total=total)
            else:  # done-at-start units (cached) are not taken for speed by the time left
                self._tasks[kind] = self._bars.add_task(kind, total=total, completed=done)

    @contextmanager
    def bars(self) -> Iterator[RunOutput]:
        """Progress bars below the lines while the run lasts, on a terminal (not `--quiet`)."""
        if not self.console.is_terminal or self.verbosity == "quiet":
            yield self
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._bars = Progress(
            TextColumn("{task.description:>7}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
        )
        try:
            with self._bars:
                yield self
        finally:
            self._bars, self._tasks = None, {}

    def _print(self, message: str, style: str | None = None) -> None:
        stamp = f"[{time.monotonic() - self.started:7.1f}s] "
        self.console.print(stamp + message, markup=False, style=style)


def next_steps(
    suite: str, out: str, tracking_uri: str, results: str, reports: str = "reports"
) -> list[str]:
    """The commands that follow a run of `suite` into `out` (the `--out` given): its report,
    its MLflow store (`mlflow ui` for a file or database URI, the server's URL as it is), and
    where its Parquet rows are."""
    runs = "" if out == "runs" else f" --runs {shlex.quote(out)}"
    if tracking_uri.startswith(("http://", "https://")):
        mlflow = f"open {tracking_uri} (MLflow server)"
    else:
        mlflow = f"mlflow ui --backend-store-uri {shlex.quote(tracking_uri)}"
    return [
        "next:",
        f"  ddbench report {shlex.quote(suite)}{runs} --format md,html"
        f"   # writes {reports}/{suite}/README.md and report.html",
        f"  {mlflow}   # every job's MLflow run",
        f"  rows (Parquet): {results}/**/*.parquet   # polars.scan_parquet(...)",
    ]
