"""Suite -> distill jobs x eval cells, with content-hash ids, so a rerun can skip what is done.

A `DistillJob` is one (method config, dataset, ipc, distill_seed); methods whose artifact serves
every IPC (`ipc_independent`) get one job for all IPCs. Its `job_id` hashes everything that
determines the artifact (method, version, params with defaults filled in, dataset and its params,
ipc, distill seed, suite seed), so equal work has equal ids across suites and reruns.
An `EvalCell` is one unit of an evaluator's work on one job at one IPC; its file under
`results/<evaluator>/<job_id>/` is named by the hash of what determines its rows.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from ddbench.schema import to_json
from ddbench.seeding import content_hash
from ddbench.spec import LoadedSuite


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
    tune: dict[str, Any] | None = None

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

    @property
    def relpath(self) -> str:
        return f"results/{self.evaluator}/{self.job.job_id}/{self.cell_id}.parquet"

    def describe(self) -> str:
        keys = " ".join(f"{k}={v}" for k, v in self.cell.items())
        return f"{self.job.label} ipc={self.ipc} {self.evaluator} {keys}"


@dataclass
class Plan:
    suite: str
    loaded: LoadedSuite
    jobs: list[DistillJob] = field(default_factory=list)
    cells: list[EvalCell] = field(default_factory=list)

    def cells_of(self, job: DistillJob) -> list[EvalCell]:
        return [c for c in self.cells if c.job.job_id == job.job_id]


def make_plan(loaded: LoadedSuite, only: str | None = None) -> Plan:
    """Expand a validated suite. `only` keeps methods whose name or label matches a glob."""
    from ddbench.evals import EVALS
    from ddbench.methods import METHODS

    suite = loaded.suite
    plan = Plan(suite.name, loaded)
    dataset_params = loaded.dataset_params.model_dump(mode="json")
    for spec, params in zip(suite.methods, loaded.method_params, strict=True):
        if only and not (fnmatch.fnmatch(spec.name, only) or fnmatch.fnmatch(spec.key, only)):
            continue
        method = METHODS.get(spec.name)()
        full_params = params.model_dump(mode="json")
        job_ipcs: list[int | None] = [None] if method.ipc_independent else list(suite.ipc)
        for distill_seed in suite.distill_seeds:
            for ipc in job_ipcs:
                identity = {
                    "method": spec.name,
                    "version": method.version,
                    "params": full_params,
                    "dataset": suite.dataset.name,
                    "dataset_params": dataset_params,
                    "ipc": ipc,
                    "distill_seed": distill_seed,
                    "suite_seed": suite.seed,
                    "tune": spec.tune.model_dump(mode="json") if spec.tune else None,
                }
                job = DistillJob(
                    job_id=content_hash(to_json(identity)),
                    method=spec.name,
                    label=spec.key,
                    method_version=method.version,
                    params=full_params,
                    dataset=suite.dataset.name,
                    dataset_params=dataset_params,
                    ipc=ipc,
                    eval_ipcs=tuple(method.eval_ipcs(suite.ipc) if ipc is None else [ipc]),
                    distill_seed=distill_seed,
                    suite_seed=suite.seed,
                    tune=identity["tune"],
                )
                plan.jobs.append(job)
                for espec, eparams in zip(suite.evals, loaded.eval_params, strict=True):
                    evaluator = EVALS.get(espec.name)()
                    eval_params = eparams.model_dump(mode="json")
                    for eval_ipc in job.eval_ipcs:
                        for cell in evaluator.cells(eparams):
                            key = to_json(
                                [espec.name, evaluator.version, eval_params, eval_ipc, cell]
                            )
                            plan.cells.append(
                                EvalCell(
                                    job,
                                    espec.name,
                                    evaluator.version,
                                    eval_params,
                                    eval_ipc,
                                    cell,
                                    content_hash(key),
                                )
                            )
    return plan
