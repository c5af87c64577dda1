"""Running a validated suite: the one code path behind `ddbench run`, `ddbench eval` and the
Python API's `ddbench.run`.

`execute(loaded, options, source, log)` plans the suite (`make_plan`), lists the plan for a dry
run, or checks every job's inputs on the driver (`Method.check`), loads the dataset, runs the
plan in-process (`run_local`) or on Ray (`run_ray`) and logs it to MLflow, then returns a
`RunResult` (plan, the run's `Store`, the `RunSummary`). It never prints: its lines go to `log`,
a plain callable (the API's `print`) or a `ddbench.progress.RunOutput` (the CLI's: verbosity,
progress bars on a terminal, problems and totals kept under `--quiet`); the CLI prints a dry
run's lines and the next commands. `run_store` resolves a run named by suite name, directory
or URI (`ddbench report`, `ddbench export`, the API).

To add an execution option, add a field to `ExecOptions` (its default commented with unit and
reason) and pass it from the CLI's `_execution_args` and from `ddbench.api.run`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ddbench.errors import UserError

if TYPE_CHECKING:
    from ddbench.data import RealData
    from ddbench.plan import Plan
    from ddbench.runner.work import Log, RunLog, RunSummary
    from ddbench.spec import LoadedSuite
    from ddbench.storage import Store


@dataclass
class ExecOptions:
    """How to run a suite: the CLI's execution flags (`ddbench run --help`)."""

    out: str = "runs"  # output root, a path or a URI; the run goes to <out>/<suite name>
    local: bool = False  # True: in-process without Ray (debugging, notebooks, tests)
    address: str | None = None  # Ray cluster to join; None: an embedded Ray on 127.0.0.1
    force: bool = False  # True: recompute finished jobs and cells too
    dry_run: bool = False  # True: only list each job and what of it is done
    tracking_uri: str | None = None  # MLflow; None: $MLFLOW_TRACKING_URI, else <out>/mlflow.db
    dashboard: bool = False  # True: the embedded Ray starts its dashboard (127.0.0.1)
    verbose: bool = False  # True: Ray's own output (workers, Train, Tune) reaches `log` too
    # glob (or globs) over method names / labels; None: every method
    only: str | list[str] | None = None


@dataclass
class RunResult:
    """What `execute` did (`ddbench.run` returns it): the plan, the run's store (`<out>/<suite>`,
    what `ddbench.rows`, `ddbench.report` and `ddbench.load_distillate` take) and its summary."""

    plan: Plan
    store: Store
    summary: RunSummary | None  # None: a dry run
    status: list[str] = field(default_factory=list)  # a dry run's line per job
    tracking_uri: str = ""  # the MLflow store the run was logged to ("" for a dry run)

    @property
    def suite(self) -> str:
        return self.plan.suite

    @property
    def dir(self) -> Path | None:
        """The run's local directory; None when `out` is a URI."""
        return self.store.local_root

    @property
    def exit_code(self) -> int:
        """The CLI's: 0 every cell ok (or a dry run), 1 some cells failed."""
        return 0 if self.summary is None else self.summary.exit_code

    def __repr__(self) -> str:
        s = self.summary
        done = "dry run"
        if s is not None:
            done = (
                f"jobs {s.distilled} distilled, {s.distill_cached} cached; cells {s.cells_run} "
                f"run, {s.cells_cached} cached, {s.cells_failed} failed"
            )
        return f"RunResult({self.suite!r} in {self.store.uri}: {done})"


def execute(loaded: LoadedSuite, options: ExecOptions, source: str, log: Log | RunLog) -> RunResult:
    """Plan, check, run (in-process or on Ray) and track a validated suite. `source` names the
    suite in messages (its file, or `ddbench eval`)."""
    from ddbench.choices import CHOSEN_ON_FILE, value_choices
    from ddbench.data import load_dataset
    from ddbench.plan import make_plan, method_facts
    from ddbench.protocols import METHOD_FACTS_FILE, MethodFacts
    from ddbench.runner.work import RunSummary, all_done, as_run_log, git_sha, write_reduce
    from ddbench.storage import Store
    from ddbench.tracking import default_tracking_uri

    out = as_run_log(log)

    plan = make_plan(loaded, options.only)
    if not plan.jobs:
        raise UserError(f"--only {options.only!r} matches no method of {source}")
    suite_dir = Store(options.out).child(loaded.suite.name)
    if options.dry_run:
        return RunResult(plan, suite_dir, None, _status_lines(plan, suite_dir))
    suite = loaded.suite
    real = load_dataset(suite.dataset.name, loaded.dataset_params)
    _check_inputs(plan, real)
    # the report reads the methods' paper data here (no plugin or torch needed to read them)
    facts = method_facts([job.method for job in plan.jobs])
    if suite_dir.exists(METHOD_FACTS_FILE):  # an earlier run of other methods (`--only`)
        facts = MethodFacts.from_json(suite_dir.read_text(METHOD_FACTS_FILE)).merged(facts)
    suite_dir.write_text(METHOD_FACTS_FILE, facts.to_json())
    choices = json.dumps(value_choices(loaded), indent=1)  # where each value set was chosen
    suite_dir.write_text(CHOSEN_ON_FILE, choices)
    out(
        f"suite {suite.name}: {len(plan.jobs)} distill jobs, {len(plan.cells)} eval cells; "
        f"{real.describe()}"
    )
    if not options.force and all_done(plan, suite_dir, out.problem):
        # a rerun with nothing to do starts no Ray (tens of seconds) and no runner; the
        # job-level rows of an evaluator are still written if a killed run missed them
        summary = RunSummary(
            jobs_total=len(plan.jobs),
            cells_total=len(plan.cells),
            distill_cached=len(plan.jobs),
            cells_cached=len(plan.cells),
        )
        write_reduce(plan, suite_dir, git_sha(), out)
    elif options.local:
        from ddbench.runner.local import run_local

        with out.bars():
            summary = run_local(plan, real, suite_dir, options.force, out)
    else:
        from ddbench.runner.cluster import check_resources, init_ray, shutdown_ray

        url = init_ray(options.address, dashboard=options.dashboard, verbose=options.verbose)
        from ddbench.runner.scheduler import run_ray  # imports ray: after init_ray set its env

        if url:
            out(
                f"Ray dashboard (Tune trials, tasks, actors) at {url}; "
                "`ray get-auth-token` prints its token"
            )
        try:
            check_resources(loaded, embedded=not options.address, log=out.problem)
            with out.bars():
                summary = run_ray(plan, real, suite_dir, options.force, out)
        finally:
            shutdown_ray()
    if summary.distilled == 0 and summary.cells_run == 0 and not summary.distill_failed:
        out.summary(
            f"nothing to do: all {summary.distill_cached} jobs and {summary.cells_cached} cells "
            f"are already done in {suite_dir} (use --force to recompute)"
        )
    else:
        failed = f", {summary.distill_failed} failed" if summary.distill_failed else ""
        out.summary(
            f"distilled {summary.distilled} jobs ({summary.distill_cached} cached{failed}); ran "
            f"{summary.cells_run} cells ({summary.cells_cached} cached, {summary.cells_failed} "
            f"failed); wrote {summary.rows_written} rows under {suite_dir.location('results')}"
        )
    uri = options.tracking_uri or default_tracking_uri(options.out)
    _track(plan, suite_dir, summary, uri, out)
    return RunResult(plan, suite_dir, summary, tracking_uri=uri)


def _status_lines(plan: Plan, suite_dir: Store) -> list[str]:
    """A dry run: each job with its id and whether its artifact and cells are done."""
    from ddbench.plan import ipc_text
    from ddbench.runner.work import artifact_done, cell_done
    from ddbench.tuning import trial_count

    lines = []
    for job in plan.jobs:
        cells = plan.cells_of(job)
        done = sum(cell_done(suite_dir, c) for c in cells)
        cached = artifact_done(suite_dir, job.job_id)
        tuned = f" tune: {trial_count(job.tune)} trials" if job.tune else ""
        lines.append(
            f"{job.job_id} {job.label:16s} ipc={ipc_text(job.ipc)} seed={job.distill_seed} "
            f"artifact={'cached' if cached else 'todo'} cells {done}/{len(cells)} done{tuned}"
        )
    return lines


def _check_inputs(plan: Plan, real: RealData) -> None:
    """Each job's `Method.check` on the driver before any work (bad inputs: exit code 2)."""
    from ddbench.methods import METHODS, Method

    for job in plan.jobs:
        method = METHODS.get(job.method)()
        if type(method).check is Method.check:
            continue
        params = method.Params.model_validate(job.params)
        data = real if job.classes is None else real.subset(job.classes)
        method.check(data, job.ipc, params)


def _track(plan: Plan, suite_dir: Store, summary: RunSummary, uri: str, log: RunLog) -> None:
    from ddbench.tracking import log_plan

    try:
        n = log_plan(plan, suite_dir, summary, uri, log.problem)
    except Exception as exc:  # noqa: BLE001 - results are safe on disk; tracking can catch up
        log.problem(
            f"MLflow at {uri} could not be reached ({type(exc).__name__}: {exc}); results are "
            f"written locally in {suite_dir}; rerun the same command to log them"
        )
        return
    log(f"MLflow: logged {n} job runs to {uri}" if n else f"MLflow: up to date at {uri}")


def run_store(target: str | Path, runs: str | Path = "runs") -> Store:
    """A run named by the user: a run directory or URI, else a suite name under `runs` (the
    output root it ran into)."""
    from ddbench.storage import Store, is_uri

    given = str(target).rstrip("/").removesuffix("/results")
    if is_uri(given) or Path(given).is_dir():
        return Store(given)
    return Store(runs).child(given)
