"""Evaluators: one file per evaluator in this folder, found automatically.

An evaluator measures what a distillate is worth. It declares `Params` (pydantic, every field
commented), splits its work into independent cells (each a Ray task) and turns each cell into
result rows::

    def cells(self, device, params) -> list[dict]    # e.g. [{"arch": "convnet", "eval_seed": 0}]
    def run(self, cell, job, params, ctx) -> list[dict]   # partial rows: metric, value, split ...
    def reduce(self, rows, params) -> list[dict]     # job-level rows from all cell rows (optional)
    def protocols(self, method, params) -> list[(name, params)]  # protocols per job (optional)
    def inputs(self, cell, params) -> dict[str, tuple[int, ...]]  # class subsets (optional)

Every hook of every plugin kind takes its arguments in one order: what it works on first, then
the validated `params`, then the `ctx` when it has one (`Method.distill(real, ipc, params, ctx)`
follows the same rule).

`device` is the device class the suite gives eval cells (`resources.eval.device`: "cuda" or
"cpu"), for evaluators whose cell layout depends on it (`cross_arch` groups seeds on GPUs).
`job` is an `EvalJob` carrying the artifact, the real data and the IPC. Partial rows hold only the
evaluator's columns (arch, eval_seed, step, split, metric, value, higher_is_better); the runner
adds provenance. `primary_metric` names the metric a failed cell's row carries. Register with
`@register_eval` on a class with a unique `name` and a docstring whose first paragraph says what
it measures (`ddbench ls evals -v`).

An evaluator that needs the method distilled on subsets of the classes (continual learning)
returns them from `inputs` as {key: sorted class ids}; the plan distils the cell's method on each
subset (`ddbench.plan`) and the cell finds those artifacts in `job.inputs[key]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ddbench.registry import Plugin, Registry

if TYPE_CHECKING:
    from ddbench.artifact import Artifact
    from ddbench.context import Context
    from ddbench.data import RealData
    from ddbench.methods import Method


class EvalParams(BaseModel):
    """Base of every evaluator's Params: unknown keys are errors.

    `plan_fields` names the params that only say how the plan expands an entry into cells
    (`cross_arch`'s `protocol`): they are left out of each cell's eval params, whose own
    protocol they already decided."""

    model_config = ConfigDict(extra="forbid")
    plan_fields: ClassVar[frozenset[str]] = frozenset()


@dataclass
class EvalJob:
    """What one eval cell works on."""

    artifact: Artifact
    real: RealData
    ipc: int  # `schema.WHOLE_SPLIT_IPC` (0): the whole train split (the reference job)
    dataset: str
    inputs: dict[str, Artifact] = field(default_factory=dict)  # `Evaluator.inputs`, distilled


class Evaluator(Plugin):
    version: ClassVar[int] = 1
    Params: ClassVar[type[EvalParams]] = EvalParams
    smoke: ClassVar[dict[str, Any]] = {}
    # the metric of the row a failed cell leaves (`ddbench.runner.work`): the evaluator's headline
    primary_metric: ClassVar[str] = "top1"

    def cells(self, device: str, params: Any) -> list[dict[str, Any]]:
        raise NotImplementedError

    def run(
        self, cell: dict[str, Any], job: EvalJob, params: Any, ctx: Context
    ) -> list[dict[str, Any]]:
        raise NotImplementedError

    def reduce(self, rows: list[dict[str, Any]], params: Any) -> list[dict[str, Any]]:
        return []

    def inputs(self, cell: dict[str, Any], params: Any) -> dict[str, tuple[int, ...]]:
        """Class subsets the cell's method must be distilled on: {key: sorted class ids}."""
        return {}

    def protocols(self, method: type[Method], params: Any) -> list[tuple[str, EvalParams]]:
        """The protocols a job of `method` is evaluated under, as (name, params) pairs
        (`ddbench.protocols`); each becomes its own set of cells. Default: the entry's params,
        named `shared`."""
        from ddbench.protocols import SHARED

        return [(SHARED, params)]


EVALS: Registry[type[Evaluator]] = Registry("evaluator", "ddbench.evals", builtins=__name__)


register_eval = EVALS.register  # the class decorator of an evaluator plugin


def get_eval(name: str) -> Evaluator:
    return EVALS.get(name)()
