"""Suite -> distill jobs x eval cells, with content-hash ids, so a rerun can skip what is done.

A `DistillJob` is one (method config, dataset, ipc, distill_seed); methods whose artifact serves
every IPC (`ipc_independent`) get one job for all IPCs. Its `job_id` hashes everything that
determines the artifact (method, version, params with defaults filled in but without the
params' `execution_fields` and `added_fields` left at their defaults, dataset and its params,
ipc, distill seed, suite seed), so equal work has equal ids across suites and reruns.
A method's `dependencies` (e.g. d2m's pre-trained cgan generator) become jobs of their own, placed
before the jobs that need them and shared when identical; they are evaluated only when the suite
lists them. An `EvalCell` is one unit of an evaluator's work on one job at one IPC under one
evaluation protocol (`Evaluator.protocols`: `cross_arch` may evaluate a job under the shared
protocol and its method's paper protocol, `ddbench.protocols`); its file under
`results/<evaluator>/<job_id>/` is named by the hash of what determines its rows.

A tuned job's selection (`ddbench.tuning`) scores its trials under the protocol the suite's
first `cross_arch` entry reports the method with (its paper protocol under `paper` or `both`),
unless the tune block sets `eval_sampling` / `eval_labels` itself (`_selection_spec`).

Class subsets (continual learning). An evaluator may ask, per cell, for the cell's method to be
distilled on subsets of the classes (`Evaluator.inputs(cell, params) -> {key: classes}`). For
each evaluated job the plan then adds one hidden (never evaluated) job per distinct subset: the
same method, params, IPC and seeds with `DistillJob.classes` set. The runner distils such a job on
`real.subset(classes)` (labels keep their global ids), and its prerequisites (`dependencies`) are
distilled on the same subset, so nothing outside the subset is ever seen. `classes` enters the job
id only when set, so jobs without a subset keep their ids, and an equal subset job is shared
across evaluators, suites and reruns. The cell names its inputs in `EvalCell.inputs` as
(key, job_id) pairs; it hangs off the method's normal job (rows carry that job's id and label)
and runs only once that job and all its inputs are distilled. Every subset job is placed before
every evaluated job in `Plan.jobs`, so running the jobs in order meets that condition.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ddbench.protocols import PROTOCOL_PARAMS, SHARED, TEACHER_SETTINGS, MethodFacts
from ddbench.schema import WHOLE_SPLIT_IPC, to_json
from ddbench.seeding import content_hash
from ddbench.spec import LoadedSuite, TuneSpec

if TYPE_CHECKING:
    from ddbench.methods import MethodParams


@dataclass(frozen=True)
class DistillJob:
    job_id: str
    method: str
    label: str
    method_version: int
    params: dict[str, Any]
    dataset: str
    dataset_params: dict[str, Any]
    ipc: int | None  # None: one artifact for every IPC (generators, whole dataset)
    eval_ipcs: tuple[int, ...]
    distill_seed: int
    suite_seed: int
    tune: TuneSpec | None = None  # a Ray Tune sweep picks this job's params (ddbench.tuning)
    depends: tuple[tuple[str, str], ...] = ()  # (key, job_id) of prerequisite jobs
    classes: tuple[int, ...] | None = None  # distil on these classes only (None: all classes)
    # the protocol name of a tuned job's selection rows (`_selection_spec`); not in the job id
    selection_protocol: str = "shared"

    @property
    def params_json(self) -> str:
        return to_json(self.params)


@dataclass(frozen=True)
class EvalCell:
    job: DistillJob
    evaluator: str
    eval_version: int
    eval_params: dict[str, Any]
    ipc: int
    cell: dict[str, Any]
    cell_id: str
    inputs: tuple[tuple[str, str], ...] = ()  # (key, job_id) of class-subset jobs the cell reads
    protocol: str = "shared"  # the evaluation protocol of its rows (`ddbench.protocols`)

    @property
    def relpath(self) -> str:
        return f"results/{self.evaluator}/{self.job.job_id}/{self.cell_id}.parquet"

    def describe(self) -> str:
        keys = " ".join(f"{k}={v}" for k, v in self.cell.items())
        shown = "" if self.protocol == SHARED else f" [{self.protocol}]"
        return f"{self.evaluator}{shown} {self.job.label} ipc={ipc_text(self.ipc)} {keys}"


def ipc_text(ipc: int | None) -> str:
    """How logs, labels and MLflow tags spell an IPC: `every` for a job that serves every IPC
    (`None`), `whole` for the whole train split (`WHOLE_SPLIT_IPC`), else the number."""
    if ipc is None:
        return "every"
    return "whole" if ipc == WHOLE_SPLIT_IPC else str(ipc)


@dataclass
class Plan:
    suite: str
    loaded: LoadedSuite
    jobs: list[DistillJob] = field(default_factory=list)
    cells: list[EvalCell] = field(default_factory=list)

    def cells_of(self, job: DistillJob) -> list[EvalCell]:
        return [c for c in self.cells if c.job.job_id == job.job_id]

    def inputs_of(self, job: DistillJob) -> list[DistillJob]:
        """The class-subset jobs the cells of `job` read: distilled before those cells run."""
        ids = {job_id for cell in self.cells_of(job) for _, job_id in cell.inputs}
        return [j for j in self.jobs if j.job_id in ids]


def _make_job(
    loaded: LoadedSuite,
    method_name: str,
    label: str,
    params: dict[str, Any],
    ipc: int | None,
    distill_seed: int,
    tune: TuneSpec | None,
    plan: Plan,
    evaluate: bool,
    classes: tuple[int, ...] | None = None,
    selection_protocol: str = SHARED,  # `DistillJob.selection_protocol` of a tuned job
) -> DistillJob:
    """Create a job (and, first, the jobs it depends on); identical jobs are shared.

    `classes` restricts the job, and the jobs it depends on, to a class subset."""
    from ddbench.methods import METHODS

    suite = loaded.suite
    method = METHODS.get(method_name)()
    validated = method.Params.model_validate(params)
    full_params = validated.model_dump(mode="json")
    depends: dict[str, str] = {}
    for key, (dep_method, dep_params) in sorted(method.dependencies(validated).items()):
        dep_ipc = None if METHODS.get(dep_method).ipc_independent else ipc
        dep = _make_job(
            loaded,
            dep_method,
            dep_method,
            dep_params,
            dep_ipc,
            distill_seed,
            None,
            plan,
            evaluate=False,
            classes=classes,
        )
        depends[key] = dep.job_id
    dataset_params = loaded.dataset_params.model_dump(mode="json")
    identity = {
        "method": method_name,
        "version": method.version,
        "params": _identity_params(method.Params, full_params),
        "dataset": suite.dataset.name,
        "dataset_params": dataset_params,
        "ipc": ipc,
        "distill_seed": distill_seed,
        "suite_seed": suite.seed,
        "tune": _tune_identity(tune),
        "depends": depends,
    }
    if classes is not None:  # absent otherwise, so jobs on all classes keep their ids
        identity["classes"] = list(classes)
    job = DistillJob(
        job_id=content_hash(to_json(identity)),
        method=method_name,
        label=label,
        method_version=method.version,
        params=full_params,
        dataset=suite.dataset.name,
        dataset_params=dataset_params,
        ipc=ipc,
        eval_ipcs=tuple(method.eval_ipcs(suite.ipc) if ipc is None else [ipc]) if evaluate else (),
        distill_seed=distill_seed,
        suite_seed=suite.seed,
        tune=tune,
        depends=tuple(sorted(depends.items())),
        classes=classes,
        selection_protocol=selection_protocol,
    )
    known = {j.job_id: i for i, j in enumerate(plan.jobs)}
    if job.job_id in known:  # an identical job exists: keep one, evaluated if either asks
        existing = plan.jobs[known[job.job_id]]
        if evaluate and not existing.eval_ipcs:
            plan.jobs[known[job.job_id]] = job
        return plan.jobs[known[job.job_id]]
    plan.jobs.append(job)
    return job


# TuneSpec fields that only say how a sweep is executed, not what it computes: they stay out of
# the job id, so running a sweep with more trials at once reuses its artifacts. (Under `asha` the
# trials cut early can depend on their timing, so that choice is only as repeatable as ASHA.)
TUNE_EXECUTION_FIELDS = {"max_concurrent_trials"}
# the teacher's settings score nothing unless the selection trains on teacher labels: only then
# are they in the job id
TUNE_TEACHER_FIELDS = {f"eval_{name}" for name in TEACHER_SETTINGS}
# fields added after tuned job ids were in use, each with the value (as `_selection_spec`
# resolves it) that scores trials as before: at that value the field stays out of the job id,
# so those jobs keep their ids (the rule of `MethodParams.added_fields`)
TUNE_ADDED_FIELDS: dict[str, Any] = {"eval_sampling": "fixed", "eval_recipe": {}}


def _identity_params(params_model: type[MethodParams], params: dict[str, Any]) -> dict[str, Any]:
    """The params that enter a job id: all but the execution fields and the added fields left
    at their defaults (`MethodParams`)."""
    fields = params_model.model_fields
    return {
        key: value
        for key, value in params.items()
        if key not in params_model.execution_fields
        and not (key in params_model.added_fields and value == fields[key].default)
    }


def _tune_identity(tune: TuneSpec | None) -> dict[str, Any] | None:
    """What of a tune block (resolved by `_selection_spec`) enters the job id."""
    if tune is None:
        return None
    exclude = (
        set(TUNE_EXECUTION_FIELDS)
        | {field for field, before in TUNE_ADDED_FIELDS.items() if getattr(tune, field) == before}
        | (set() if tune.eval_labels == "teacher" else TUNE_TEACHER_FIELDS)
    )
    return tune.model_dump(mode="json", exclude=exclude)


def _selection_spec(
    tune: TuneSpec | None, method_name: str, loaded: LoadedSuite
) -> tuple[TuneSpec | None, str]:
    """A tune block with its selection protocol filled in, and that protocol's name.

    Unset `eval_sampling` / `eval_labels` / `eval_recipe` (None) take the protocol the suite's
    first `cross_arch` entry reports the method with: its last protocol, i.e. the paper one
    under `paper` or `both` (the method's params are chosen for the protocol of its own paper),
    with that entry's teacher settings under teacher labels and its optimiser fields where they
    differ from the DC recipe; without such an entry, fixed sampling, hard labels and the DC
    recipe. A block that sets any of the three itself is named `tune` (its own protocol)."""
    from ddbench.evals import EVALS
    from ddbench.evals.cross_arch import CrossArch, CrossArchParams
    from ddbench.fit import OPTIMISER_FIELDS, Recipe
    from ddbench.methods import METHODS

    if tune is None:
        return None, SHARED
    name, protocol = SHARED, CrossArchParams()
    for espec, eparams in zip(loaded.suite.evals, loaded.eval_params, strict=True):
        if espec.name == CrossArch.name:
            evaluator = EVALS.get(espec.name)()
            name, protocol = evaluator.protocols(METHODS.get(method_name), eparams)[-1]
            break
    update: dict[str, Any] = {}
    if tune.eval_sampling is None:
        update["eval_sampling"] = protocol.sampling
    if tune.eval_labels is None:
        update["eval_labels"] = protocol.labels
        if protocol.labels == "teacher":  # the same teacher as cross_arch's: one cached model
            update |= {f"eval_{name}": getattr(protocol, name) for name in TEACHER_SETTINGS}
    if tune.eval_recipe is None:
        dc_recipe = Recipe()
        update["eval_recipe"] = {
            key: getattr(protocol, key)
            for key in OPTIMISER_FIELDS
            if getattr(protocol, key) != getattr(dc_recipe, key)
        }
    own = any(
        field is not None for field in (tune.eval_sampling, tune.eval_labels, tune.eval_recipe)
    )
    return tune.model_copy(update=update), "tune" if own else name


def _class_subsets(loaded: LoadedSuite) -> list[tuple[int, ...]]:
    """Every class subset some cell of the suite's evaluators asks for, in first-asked order."""
    from ddbench.evals import EVALS

    subsets: dict[tuple[int, ...], None] = {}
    for espec, eparams in zip(loaded.suite.evals, loaded.eval_params, strict=True):
        evaluator = EVALS.get(espec.name)()
        for cell in evaluator.cells(loaded.suite.resources.eval.device, eparams):
            subsets.update(dict.fromkeys(evaluator.inputs(cell, eparams).values()))
    return list(subsets)


def method_facts(methods: Sequence[str]) -> MethodFacts:
    """The registries' paper protocols and published numbers of `methods`, and cross_arch's
    protocol defaults (imports the method plugins, hence torch). A name no registry knows (a
    run's plugin not loaded here) has no facts."""
    from ddbench.evals.cross_arch import CrossArchParams
    from ddbench.methods import METHODS

    defaults = CrossArchParams().model_dump()
    known = [METHODS.get(name) for name in sorted(set(methods)) if name in METHODS]
    return MethodFacts(
        {m.name: dict(m.paper_protocol) for m in known},
        {m.name: tuple(m.published) for m in known},
        {key: defaults[key] for key in PROTOCOL_PARAMS},
    )


def make_plan(loaded: LoadedSuite, only: str | Sequence[str] | None = None) -> Plan:
    """Expand a validated suite. `only` keeps methods whose name or label matches a glob (or
    one of several globs)."""
    from ddbench.evals import EVALS
    from ddbench.methods import METHODS

    suite = loaded.suite
    plan = Plan(suite.name, loaded)
    globs = [only] if isinstance(only, str) else list(only or [])
    subsets = _class_subsets(loaded)
    selected = []  # (spec, params, tune, ipc, distill_seed) of every evaluated job
    for spec, params in zip(suite.methods, loaded.method_params, strict=True):
        if globs and not any(
            fnmatch.fnmatch(spec.name, glob) or fnmatch.fnmatch(spec.key, glob) for glob in globs
        ):
            continue
        method = METHODS.get(spec.name)()
        tune, selection = _selection_spec(spec.tune, spec.name, loaded)
        job_ipcs: list[int | None] = [None] if method.ipc_independent else list(suite.ipc)
        for distill_seed in suite.distill_seeds:
            for ipc in job_ipcs:
                selected.append(
                    (spec, params.model_dump(mode="json"), tune, selection, ipc, distill_seed)
                )
    # subset jobs first (see the module docstring), then the evaluated jobs
    subset_ids: list[dict[tuple[int, ...], str]] = []
    for spec, params, tune, selection, ipc, seed in selected:
        args = (loaded, spec.name, spec.key, params, ipc, seed, tune, plan)
        subset_ids.append(
            {
                c: _make_job(*args, evaluate=False, classes=c, selection_protocol=selection).job_id
                for c in subsets
            }
        )
    inputs_of: dict[str, dict[tuple[int, ...], str]] = {}  # evaluated job id -> subset job ids
    for (spec, params, tune, selection, ipc, seed), ids in zip(selected, subset_ids, strict=True):
        args = (loaded, spec.name, spec.key, params, ipc, seed, tune, plan)
        job = _make_job(*args, evaluate=True, selection_protocol=selection)
        inputs_of[job.job_id] = ids
    for job in plan.jobs:
        for espec, eparams in zip(suite.evals, loaded.eval_params, strict=True):
            evaluator = EVALS.get(espec.name)()
            for protocol, pparams in evaluator.protocols(METHODS.get(job.method), eparams):
                plan.cells += _cells(plan, job, espec.name, protocol, pparams, inputs_of)
    return plan


def _cells(
    plan: Plan,
    job: DistillJob,
    name: str,
    protocol: str,
    params: Any,
    inputs_of: dict[str, dict[tuple[int, ...], str]],
) -> list[EvalCell]:
    """The cells of evaluator `name` on `job` under one protocol, at each of its IPCs.

    The cell id hashes the evaluator, its version, the eval params (without the plan fields),
    the IPC and the cell, plus the protocol's name unless it is `shared` (so cells of the
    shared protocol keep the ids they had before protocols were named)."""
    from ddbench.evals import EVALS

    evaluator = EVALS.get(name)()
    eval_params = params.model_dump(mode="json", exclude=set(params.plan_fields))
    cells = []
    for eval_ipc in job.eval_ipcs:
        for cell in evaluator.cells(plan.loaded.suite.resources.eval.device, params):
            named = [] if protocol == SHARED else [protocol]
            key = to_json([name, evaluator.version, eval_params, eval_ipc, cell, *named])
            inputs = tuple(
                (input_key, inputs_of[job.job_id][classes])
                for input_key, classes in sorted(evaluator.inputs(cell, params).items())
            )
            cells.append(
                EvalCell(
                    job,
                    name,
                    evaluator.version,
                    eval_params,
                    eval_ipc,
                    cell,
                    content_hash(key),
                    inputs,
                    protocol,
                )
            )
    return cells
