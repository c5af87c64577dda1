"""The scheduling policy of a run as plain Python (no Ray): which unit of work starts next, where.

A `Unit` is what the runner starts as one thing on Ray:
- a *distill* unit: one distill job, run by a distill runner (a Ray Train run holding the unit's
  bundles; when its job ends, `handoff` gives the runner the next ready distill job of the same
  shape, so a Train run's start-up is paid per runner, not per job);
- a *tune* unit: the Ray Tune experiment of a tuned job, which holds the bundles of its
  concurrent trials for its whole run (each trial's Train run, then its selection cells, inside
  the trial's share);
- a *cell*: one eval cell.
Each unit declares the bundles it holds (`ddbench.runner.resources`), the job ids that must be
published before it starts (`needs`) and the job ids it publishes (`publishes`).

`Scheduler` keeps the free resources of every node (`Ledger`) and the state of every unit.
`start()` returns the units to launch now, each with the node of each of its bundles: every unit
whose needs are published, in priority order, that fits into what is free. A unit that does not
fit does not hold back narrower ones behind it (greedy backfill): slots never idle while some
ready unit fits, at the price that a wide unit (many workers) can wait while narrow ones keep
arriving. `finish(unit, published, failed)` frees the unit's resources, records the jobs it
published and returns the units that can now never run (a job they need failed), transitively,
each with its cause; `handoff` does the same and passes the unit's resources straight on to the
best ready distill unit of the same bundles, if there is one. Nothing here reads the store or
polls: the runner feeds in what Ray reports.

Priority: distill and tune units before cells (they gate them); among those, the one more
units wait on (transitively: dependant jobs and cells) first; then plan order. Placement is
best-fit: a bundle goes to the node it leaves least free, and work that needs no GPU avoids
nodes with free GPUs while others fit, so GPUs stay free for GPU work.

Extending: another kind of unit is a `Unit` with its own `kind` and payload; the runner decides
how to start it, the policy here needs only bundles, needs and publishes.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ddbench.runner.resources import Bundle, distill_bundles, eval_bundle

if TYPE_CHECKING:
    from ddbench.plan import DistillJob, EvalCell, Plan
    from ddbench.spec import Resources

EPS = 1e-9  # resources are floats (fractional GPUs): a bundle fits up to rounding


@dataclass(eq=False)
class Unit:
    """One thing the runner starts; compared by identity."""

    kind: str  # "distill" | "tune" | "cell"
    bundles: list[Bundle]
    needs: frozenset[str] = frozenset()  # job ids published before it may start
    publishes: tuple[str, ...] = ()  # job ids it publishes when it succeeds
    priority: tuple[Any, ...] = ()  # smaller starts sooner
    payload: Any = None  # what the runner runs (jobs, a cell)
    placement: list[str] = field(default_factory=list)  # node id per bundle while running

    @property
    def signature(self) -> tuple[tuple[tuple[str, float], ...], ...]:
        """Units of one signature fit or fail to fit together (same bundles)."""
        return tuple(tuple(sorted(b.items())) for b in self.bundles)


def _waste(free: Bundle, bundle: Bundle, node: str) -> tuple[float, float, str]:
    """Best-fit order of the nodes a bundle fits on: GPUs a CPU-only bundle would sit beside,
    then CPUs left over, then the node id (a stable tie-break)."""
    spare_gpu = 0.0 if bundle.get("GPU", 0.0) > 0 else free.get("GPU", 0.0)
    return (spare_gpu, free.get("CPU", 0.0) - bundle.get("CPU", 0.0), node)


class Ledger:
    """Free resources per node; places a unit's bundles (best fit) or refuses the whole unit."""

    def __init__(self, nodes: dict[str, Bundle]) -> None:
        self.total: dict[str, Bundle] = {}
        self.free: dict[str, Bundle] = {}
        self.set_nodes(nodes)

    def set_nodes(self, nodes: dict[str, Bundle]) -> None:
        """The cluster now has `nodes` (node id -> total resources): new nodes join free, lost
        nodes leave (what ran there is the runner's business), changed totals move the free."""
        for node in list(self.total):
            if node not in nodes:
                del self.total[node], self.free[node]
        for node, total in nodes.items():
            old = self.total.get(node, {})
            free = self.free.setdefault(node, {})
            for key in set(total) | set(old):
                free[key] = free.get(key, 0.0) + total.get(key, 0.0) - old.get(key, 0.0)
            self.total[node] = dict(total)

    @staticmethod
    def _fits(free: Bundle, bundle: Bundle) -> bool:
        return all(free.get(k, 0.0) + EPS >= v for k, v in bundle.items())

    def place(self, bundles: list[Bundle]) -> list[str] | None:
        """Node ids for `bundles` (taken from the free resources), or None (nothing taken)."""
        free = {node: dict(res) for node, res in self.free.items()}
        placement = []
        for bundle in bundles:
            fits = [node for node, res in free.items() if self._fits(res, bundle)]
            if not fits:
                return None
            node = min(fits, key=lambda node: _waste(free[node], bundle, node))
            for k, v in bundle.items():
                free[node][k] = free[node].get(k, 0.0) - v
            placement.append(node)
        self.take(placement, bundles)
        return placement

    def take(self, placement: list[str], bundles: list[Bundle]) -> None:
        """Hold `bundles` on the nodes of `placement` (a placement made before)."""
        for node, bundle in zip(placement, bundles, strict=True):
            for k, v in bundle.items():
                self.free[node][k] = self.free[node].get(k, 0.0) - v

    def release(self, placement: list[str], bundles: list[Bundle]) -> None:
        for node, bundle in zip(placement, bundles, strict=True):
            if node in self.free:  # a lost node's resources left with it
                for k, v in bundle.items():
                    self.free[node][k] = self.free[node].get(k, 0.0) + v

    def capacity(self) -> Bundle:
        """Total resources of every node together."""
        out: Bundle = {}
        for res in self.total.values():
            for k, v in res.items():
                out[k] = out.get(k, 0.0) + v
        return out


class Scheduler:
    """The states of a run's units; see the module docstring for the policy."""

    def __init__(
        self, nodes: dict[str, Bundle], units: Iterable[Unit], published: Iterable[str] = ()
    ) -> None:
        self.ledger = Ledger(nodes)
        self.published: set[str] = set(published)
        self.failed: dict[str, str] = {}  # job id -> why it will never be published
        self.running: set[Unit] = set()
        self._waiting: dict[str, list[Unit]] = {}  # job id -> units that need it
        self._missing: dict[Unit, int] = {}  # unit -> how many of its needs are unpublished
        self._ready: dict[tuple, list[tuple[tuple[Any, ...], int, Unit]]] = {}  # heap per shape
        self._order = itertools.count()
        for unit in units:
            self._add(unit)

    def _add(self, unit: Unit) -> None:
        missing = [job for job in unit.needs if job not in self.published]
        if not missing:
            self._push(unit)
            return
        self._missing[unit] = len(missing)
        for job in missing:
            self._waiting.setdefault(job, []).append(unit)

    def _push(self, unit: Unit) -> None:
        entry = (unit.priority, next(self._order), unit)
        heapq.heappush(self._ready.setdefault(unit.signature, []), entry)

    @property
    def done(self) -> bool:
        """Nothing runs and nothing is left to start."""
        return not self.running and not self._missing and not any(self._ready.values())

    @property
    def ready(self) -> int:
        """Units whose jobs are published, waiting for resources."""
        return sum(len(heap) for heap in self._ready.values())

    @property
    def pending(self) -> int:
        """Units not started yet (ready, or waiting on jobs)."""
        return len(self._missing) + self.ready

    def start(self) -> list[Unit]:
        """Units to launch now, best priority first, each with its `placement` set."""
        started: list[Unit] = []
        blocked: set[tuple] = set()  # shapes that do not fit any more in this call
        while True:
            heads = [
                (heap[0], sig) for sig, heap in self._ready.items() if heap and sig not in blocked
            ]
            if not heads:
                return started
            (_, _, unit), sig = min(heads, key=lambda head: head[0][:2])
            placement = self.ledger.place(unit.bundles)
            if placement is None:
                blocked.add(sig)
                continue
            heapq.heappop(self._ready[sig])
            unit.placement = placement
            self.running.add(unit)
            started.append(unit)

    def set_nodes(self, nodes: dict[str, Bundle]) -> None:
        self.ledger.set_nodes(nodes)

    def finish(
        self, unit: Unit, published: Iterable[str] = (), failed: dict[str, str] | None = None
    ) -> list[tuple[Unit, str]]:
        """`unit` ended, publishing `published` and failing `failed` (job id -> error); its
        jobs neither published nor failed count as failed. Returns the units that can now
        never run, with their cause (their own jobs fail too, so this is transitive)."""
        self.running.discard(unit)
        self.ledger.release(unit.placement, unit.bundles)
        failed = dict(failed or {})
        for job in published:
            self.published.add(job)
            for waiter in self._waiting.pop(job, []):
                if waiter in self._missing:
                    self._missing[waiter] -= 1
                    if self._missing[waiter] == 0:
                        del self._missing[waiter]
                        self._push(waiter)
        for job in unit.publishes:
            if job not in self.published and job not in failed:
                failed[job] = "the distill run ended without publishing this job"
        return self._fail_jobs(failed)

    def handoff(
        self, unit: Unit, published: Iterable[str] = (), failed: dict[str, str] | None = None
    ) -> tuple[list[tuple[Unit, str]], Unit | None]:
        """`finish(unit, ...)`, then the best ready distill unit of the same bundles, if any,
        started on the unit's very placement (a distill runner keeps its processes and goes on
        with that job); returns (units lost, the unit handed over or None)."""
        lost = self.finish(unit, published, failed)
        heap = self._ready.get(unit.signature)
        if not heap or heap[0][2].kind != "distill" or unit.kind != "distill":
            return lost, None
        _, _, nxt = heapq.heappop(heap)
        self.ledger.take(unit.placement, nxt.bundles)
        nxt.placement = list(unit.placement)
        self.running.add(nxt)
        return lost, nxt

    def _fail_jobs(self, failed: dict[str, str]) -> list[tuple[Unit, str]]:
        lost: list[tuple[Unit, str]] = []
        queue = list(failed.items())
        while queue:
            job, error = queue.pop()
            if job in self.failed or job in self.published:
                continue
            self.failed[job] = error
            for waiter in self._waiting.pop(job, []):
                if self._missing.pop(waiter, None) is None:
                    continue  # already lost through another of its needs
                cause = f"job {job} was not distilled: {error}"
                lost.append((waiter, cause))
                queue.extend((dep, cause) for dep in waiter.publishes)
        return lost


def plan_units(
    plan: Plan,
    todo: list[DistillJob],
    cells: list[EvalCell],
    resources: Resources,
    tune_trials: dict[str, int],
) -> list[Unit]:
    """The units of a run: a distill (or tune) unit per job of `todo`, and a cell unit per cell
    of `cells`. `tune_trials[job_id]` is the number of concurrent trials
    a tuned job's experiment runs (it holds their bundles)."""
    order = {job.job_id: i for i, job in enumerate(plan.jobs)}
    pending = {job.job_id for job in todo}
    # how many units (jobs and cells) wait on each job, transitively: gatekeepers start first
    direct: dict[str, set[str]] = {}
    for job in plan.jobs:
        for _, dep in job.depends:
            direct.setdefault(dep, set()).add(job.job_id)
    cells_on: dict[str, int] = {}
    for cell in cells:
        for job_id in {cell.job.job_id, *(job_id for _, job_id in cell.inputs)}:
            cells_on[job_id] = cells_on.get(job_id, 0) + 1

    def weight(job_id: str, seen: set[str]) -> int:
        total = cells_on.get(job_id, 0)
        for dependant in direct.get(job_id, ()):
            if dependant not in seen:
                seen.add(dependant)
                total += 1 + weight(dependant, seen)
        return total

    def job_priority(job: DistillJob) -> tuple[Any, ...]:
        return (0, -weight(job.job_id, set()), order[job.job_id])

    units: list[Unit] = []
    worker_bundles = distill_bundles(resources.distill)
    for job in todo:
        needs = frozenset(dep for _, dep in job.depends) & pending
        if job.tune:
            trial_bundles = worker_bundles * tune_trials[job.job_id]
            units.append(Unit("tune", trial_bundles, needs, (job.job_id,), job_priority(job), job))
        else:
            units.append(
                Unit("distill", worker_bundles, needs, (job.job_id,), job_priority(job), job)
            )
    cell_bundle = eval_bundle(resources.eval)
    for i, cell in enumerate(cells):
        needs = frozenset({cell.job.job_id, *(job_id for _, job_id in cell.inputs)}) & pending
        units.append(Unit("cell", [dict(cell_bundle)], needs, (), (1, i), cell))
    return units
