"""`run_ray`: a plan on a Ray cluster (embedded or joined), every unit of work side by side.

The run reads the store once, at the start, to skip what is done (artifacts and `ok` cells),
then turns the rest into units (`ddbench.runner.schedule.plan_units`): a distill job, the Ray
Tune experiment of a tuned job, an eval cell. The `Scheduler` says which units start, in priority
order, as far as the cluster's nodes hold their bundles, and the driver starts each on Ray:

- a distill job starts a *distill runner* (`ddbench.runner.train`): a Ray Train run driven by,
  and fed its jobs through, a `DistillRunner` actor. When its job ends, the feed reports the
  outcome and the scheduler hands the runner the next ready distill job (`handoff`), or stops
  it: as many runners work side by side as the cluster holds, each paying Train's start-up once;
- a tuned job starts a Tune driver task (`ddbench.runner.tune`);
- an eval cell starts a Ray task, softly pinned to the node it was packed on.

The driver waits on object refs (`ray.wait`): a runner's next report, a Tune driver's or a cell's
return value, a runner task's end, and the next batch of workers' progress lines (its
`ProgressInbox`, logged as the driver's own lines, so Ray's log forwarding can stay off). A
published job makes its dependants ready at once (d2m after its cgan, d4m after its latent
diffusion model, continual cells after their class-subset jobs, a job's cells after the job); a
failed one makes them `failed` rows. Nothing is polled: the loop
wakes when something ends, or every `NODES_REFRESH_S` to see nodes that joined or left.

Runner actors and Tune driver tasks hold no CPU; on a cluster whose head carries the custom
resource `driver` (cluster/) they run there.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ddbench.plan import EvalCell, Plan
from ddbench.runner.cluster import alive_nodes, cell_task
from ddbench.runner.resources import worker_slots
from ddbench.runner.schedule import Scheduler, Unit, plan_units
from ddbench.runner.train import DistillRunner, Outcome, ProgressInbox
from ddbench.runner.tune import concurrent_trials, tune_task
from ddbench.runner.work import (
    Log,
    RunLog,
    RunSummary,
    artifact_done,
    artifact_rel,
    as_run_log,
    cell_done,
    count,
    error_line,
    fail_cells,
    failed_rows,
    git_sha,
    job_name,
    write_reduce,
)
from ddbench.schema import write_rows
from ddbench.storage import Store

NODES_REFRESH_S = 30.0  # seconds between looks at the cluster's nodes while units run


def run_ray(
    plan: Plan, real: Any, store: Store, force: bool, log: Log | RunLog, max_failures: int = 2
) -> RunSummary:
    """Run every pending job and cell of `plan` on the connected Ray cluster; `log` gets the
    lines (a `RunLog` also the problems and counts)."""
    return RayRun(plan, real, store, force, log, max_failures).run()


@dataclass(eq=False)
class Runner:
    """A distill runner: its actor (`feed`), the ref of its Train run's end (`task`, its
    `drive` call), the unit it is on."""

    feed: Any
    task: Any
    unit: Unit | None = None
    report: Any = None  # the ref of its next report while it is on a job


class RayRun:
    """The state of one `run_ray`: the scheduler and what runs on Ray, by the refs it waits on."""

    def __init__(
        self, plan: Plan, real: Any, store: Store, force: bool, log: Log | RunLog, max_failures: int
    ) -> None:
        self.plan, self.store, self.force, self.log = plan, store, force, as_run_log(log)
        self.max_failures = max_failures
        self.summary = RunSummary(jobs_total=len(plan.jobs), cells_total=len(plan.cells))
        self.sha = git_sha()
        self.suite = plan.loaded.suite
        self.jobs = {job.job_id: job for job in plan.jobs}
        if force:
            for job in plan.jobs:
                store.delete(artifact_rel(job.job_id))
        published = {job.job_id for job in plan.jobs if artifact_done(store, job.job_id, log)}
        todo = [job for job in plan.jobs if job.job_id not in published]
        self.summary.distill_cached = len(plan.jobs) - len(todo)
        cells = [cell for cell in plan.cells if force or not cell_done(store, cell, log)]
        self.summary.cells_cached = len(plan.cells) - len(cells)
        res = self.suite.resources
        nodes = alive_nodes()
        tuned = [job for job in todo if job.tune is not None]
        self.trials = {
            job.job_id: concurrent_trials(job.tune, res.distill, list(nodes.values()), len(tuned))
            for job in tuned
            if job.tune is not None
        }
        self.scheduler = Scheduler(
            nodes, plan_units(plan, todo, cells, res, self.trials), published
        )
        runs = worker_slots(res.distill, list(nodes.values())) // res.distill.workers
        self.log(
            f"{len(todo) - len(tuned)} jobs to distill, {len(tuned)} to tune, {len(cells)} eval "
            f"cells; the cluster runs {runs} distill runners side by side on {len(nodes)} node(s)"
        )
        self.log.counts(self.summary)
        self.real_ref = ray.put(real)
        # On a cluster whose head carries the custom resource `driver` (cluster/), driver tasks
        # run there and never hold a GPU node's CPU.
        self.has_driver = "driver" in ray.cluster_resources()
        self.on_head = {"num_cpus": 0, "resources": {"driver": 0.01} if self.has_driver else None}
        self.runners: dict[Any, Runner] = {}  # by the refs the loop waits on (task, report)
        self.tunes: dict[Any, Unit] = {}
        self.cells: dict[Any, Unit] = {}
        self.names = (f"runner-{i}" for i in itertools.count())
        self.cell_task = ray.remote(cell_task)  # once: each ray.remote exports the function anew
        self.inbox = ProgressInbox.options(**self.on_head).remote()
        self.lines = self.inbox.drain.remote()  # the next batch of workers' progress lines

    # ------------------------------------------------------------------ the loop

    def run(self) -> RunSummary:
        waiting_for_nodes = False
        while not self.scheduler.done:
            for unit in self.scheduler.start():
                self.start(unit)
            refs = [*self.runners, *self.tunes, *self.cells]
            if not refs:  # units wait for nodes the cluster does not have (yet)
                if not waiting_for_nodes:
                    self.log(f"waiting for nodes to hold {self.scheduler.pending} pending units")
                    waiting_for_nodes = True
                time.sleep(NODES_REFRESH_S)
                self.scheduler.set_nodes(alive_nodes())
                continue
            waiting_for_nodes = False
            # progress lines last: when units end at the same time, they are handled first
            ready, _ = ray.wait([*refs, self.lines], num_returns=1, timeout=NODES_REFRESH_S)
            if not ready:
                self.scheduler.set_nodes(alive_nodes())
                continue
            (ref,) = ready
            if ref is self.lines:
                for line in ray.get(ref):
                    self.log(line)
                self.lines = self.inbox.drain.remote()
            elif ref in self.cells:
                self.cell_ended(ref)
            elif ref in self.tunes:
                self.tune_ended(ref)
            else:
                self.runner_event(ref)
        for runner in list(self.runners.values()):  # told to stop: let their Train runs end
            ray.get(runner.task)
            ray.kill(runner.feed)
        ray.kill(self.inbox)  # lines still on their way are of jobs that ended
        write_reduce(self.plan, self.store, self.sha, self.log)
        return self.summary

    def start(self, unit: Unit) -> None:
        res = self.suite.resources
        if unit.kind == "cell":
            task = self.cell_task.options(
                num_cpus=res.eval.cpus,
                num_gpus=res.eval.gpus,
                max_retries=1,
                scheduling_strategy=NodeAffinitySchedulingStrategy(unit.placement[0], soft=True),
            )
            ref = task.remote(
                unit.payload, self.real_ref, self.store, res.eval.device, res.eval.cpus, self.sha
            )
            self.cells[ref] = unit
        elif unit.kind == "tune":
            job = unit.payload
            self.log(f"tuning {job_name(job)}: a Ray Tune experiment")
            ref = (
                ray.remote(tune_task)
                .options(**self.on_head)
                .remote(
                    job,
                    [self.real_ref],
                    self.store,
                    self.suite,
                    self.max_failures,
                    self.sha,
                    self.force,
                    self.trials[job.job_id],
                    self.has_driver,
                    self.inbox,
                )
            )
            self.tunes[ref] = unit
        else:
            feed = DistillRunner.options(**self.on_head).remote()
            task = feed.drive.remote(
                [self.real_ref],
                self.store,
                self.suite.name,
                res.distill,
                self.max_failures,
                next(self.names),
                self.inbox,
            )
            runner = Runner(feed, task)
            self.runners[task] = runner
            self.give(runner, unit)

    def give(self, runner: Runner, unit: Unit | None) -> None:
        """Hand `unit`'s job to `runner` (None: stop it)."""
        runner.unit = unit
        runner.feed.give.remote(None if unit is None else unit.payload)
        runner.report = None if unit is None else runner.feed.next_report.remote()
        if runner.report is not None:
            self.runners[runner.report] = runner

    # ------------------------------------------------------------------ events

    def runner_event(self, ref: Any) -> None:
        runner = self.runners.pop(ref)
        if ref is runner.report:  # its job ended: hand it the next one, or stop it
            _, outcome = ray.get(ref)
            assert runner.unit is not None
            lost, nxt = self.scheduler.handoff(runner.unit, *self.job_ended(runner.unit, outcome))
            self.fail_lost(lost)
            self.give(runner, nxt)
            return
        # its task ended: after a stop, or because the Train run failed as a whole
        if runner.report is not None and ray.wait([runner.report], timeout=0)[0]:
            self.runners[ref] = runner  # its last report arrived too: take it first
            self.runner_event(runner.report)
            return
        if runner.unit is not None:
            self.runners.pop(runner.report, None)
            error = _task_error(ref) or "the distill runner ended without reporting its job"
            outcome = {"status": "failed", "error": error}
            self.fail_lost(
                self.scheduler.finish(runner.unit, *self.job_ended(runner.unit, outcome))
            )
        ray.kill(runner.feed)

    def tune_ended(self, ref: Any) -> None:
        unit = self.tunes.pop(ref)
        try:
            outcome = ray.get(ref)[unit.publishes[0]]
        except ray.exceptions.RayError as exc:  # the Tune driver task itself was lost
            outcome = {"status": "failed", "error": str(exc)}
        self.fail_lost(self.scheduler.finish(unit, *self.job_ended(unit, outcome)))

    def cell_ended(self, ref: Any) -> None:
        unit = self.cells.pop(ref)
        cell: EvalCell = unit.payload
        try:
            status, n, cause = ray.get(ref)
        except ray.exceptions.RayError as exc:  # the task's worker died twice
            rows = failed_rows(cell, f"eval task lost: {exc}", {}, self.sha)
            write_rows(self.store, cell.relpath, rows)
            status, n = "failed", len(rows)
            cause = f"eval task lost: {str(exc).strip().splitlines()[0]}"
        count(self.summary, cell, status, n, self.log, cause)
        self.scheduler.finish(unit)

    def job_ended(self, unit: Unit, outcome: Outcome) -> tuple[list[str], dict[str, str]]:
        """Log the outcome of a distill or tune unit's job; (published, failed) job ids."""
        (job_id,) = unit.publishes
        job = self.jobs[job_id]
        if outcome["status"] == "ok":
            self.summary.distilled += 1
            self.summary.changed_jobs.add(job_id)
            self.log.counts(self.summary)
            meta = outcome["meta"]
            self.log(
                f"{self.summary.tally()} distilled {job_name(job)} in "
                f"{meta.get('distill_seconds', float('nan')):.1f} s on {meta.get('node', '?')}"
            )
            return [job_id], {}
        self.summary.distill_failed += 1
        self.log.counts(self.summary)
        self.log.problem(
            f"{self.summary.tally()} distillation failed for {job_name(job)}: "
            f"{error_line(outcome['error'])}"
        )
        return [], {job_id: outcome["error"]}

    def fail_lost(self, lost: Iterable[tuple[Unit, str]]) -> None:
        """Units that can never run: cells become failed rows, jobs are reported."""
        by_cause: dict[str, list[EvalCell]] = {}
        for unit, cause in lost:
            if unit.kind == "cell":
                by_cause.setdefault(cause, []).append(unit.payload)
            else:
                self.summary.distill_failed += len(unit.publishes)
                self.log.counts(self.summary)
                names = ", ".join(job_name(self.jobs[job_id]) for job_id in unit.publishes)
                self.log.problem(
                    f"{self.summary.tally()} not distilled: {names}: {error_line(cause)}"
                )
        for cause, cells in by_cause.items():
            fail_cells(cells, cause, self.store, self.sha, self.summary, self.log)


def _task_error(ref: Any) -> str | None:
    """What a finished runner task returned (its run's error, or None), or how it was lost."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        return f"the runner's driver task was lost: {exc}"
