"""Ray Tune sweeps of a method entry (`tune:` in a suite): trials, their scoring and the choice.

A method entry with a `tune:` block (`ddbench.spec.TuneSpec`) is one *tuned job* per (IPC, distill
seed), like any other job. `ddbench.runner` runs it as a Ray Tune experiment whose trial is the Ray
Train driver of one distill job (the Train V2 idiom): the trial's config (a point of `space`)
overrides the entry's params, giving a *trial job* (`trial_job`) with its own content-hash id,
distilled and saved like any job, so a rerun skips finished trials. The trial is scored on the **val
split only**: `selection_cells` are `eval_seeds` cells of the `TuneSelection` evaluator (`eval_arch`
trained for `eval_epochs` with the shared recipe of `ddbench.fit`, under the protocol the method is
reported with: `eval_sampling` for generators, and hard labels or, with `eval_labels: teacher`, the
soft labels of the teacher `cross_arch` would use for the same settings; the plan fills both in from
the suite's `cross_arch` entry, `ddbench.plan`), each writing one val top1 row (`results/tune/<trial
job id>/`, `eval_params` naming the tuned job and the config). `ddbench.selection.choose` picks the
trial with the best mean val top1 among those with every model scored (ties: the smaller trial job
id); the runner then publishes that trial's artifact as the tuned job's own, with
`chosen_params_json` and `tune` in its meta, so every evaluator of the suite evaluates the chosen
config, and its rows carry the chosen params (`method_params`).

This module is plain Python / PyTorch (no Ray): the runner builds the Tune experiment, the report
(`ddbench.report.tune`) and MLflow (`ddbench.tracking`, a child run per trial) read the
selection rows, through the torch-free `ddbench.selection` (the rows' evaluator name `SELECTION`
and the rule `choose`). Extending: another selection score is another evaluator class here with
`metric` in `TuneSpec` naming it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from pydantic import Field

from ddbench.context import Context
from ddbench.evals import EvalJob, EvalParams, Evaluator
from ddbench.fit import Recipe, fit_artifact
from ddbench.plan import DistillJob, EvalCell
from ddbench.protocols import TEACHER_SETTINGS
from ddbench.schema import to_json
from ddbench.seeding import content_hash
from ddbench.selection import SELECTION
from ddbench.spec import TuneSpec


class SelectionParams(EvalParams):
    """A trial's selection cells: every field is filled from the tuned job's `TuneSpec`
    (`selection_cells`), which states the defaults once."""

    tuned_job: str  # job id of the tuned job the trial belongs to
    config: dict[str, Any]  # the trial's point of the search space
    arch: str  # TuneSpec.eval_arch
    seeds: int = Field(ge=1)  # TuneSpec.eval_seeds
    epochs: int = Field(ge=1)  # TuneSpec.eval_epochs
    labels: Literal["hard", "soft", "teacher"]  # TuneSpec.eval_labels
    # TuneSpec.eval_sampling: how a generator becomes training data (`ddbench.fit`)
    sampling: Literal["fixed", "fresh", "time_matched"]
    temperature: float = Field(gt=0)  # TuneSpec.eval_temperature
    teacher_arch: str  # TuneSpec.eval_teacher_arch
    teacher_epochs: int = Field(ge=1)  # TuneSpec.eval_teacher_epochs
    teacher_lr: float = Field(gt=0)  # TuneSpec.eval_teacher_lr
    teacher_batch_size: int = Field(ge=1)  # TuneSpec.eval_teacher_batch_size
    recipe: dict[str, Any]  # TuneSpec.eval_recipe: optimiser fields over the DC recipe


class TuneSelection(Evaluator):
    """Scores a trial's distillate: one model per cell, top1 on the val split only."""

    name = SELECTION
    version = 1
    Params = SelectionParams

    def cells(self, device: str, params: SelectionParams) -> list[dict[str, Any]]:
        return [{"arch": params.arch, "eval_seed": s} for s in range(params.seeds)]

    def run(
        self, cell: dict[str, Any], job: EvalJob, params: SelectionParams, ctx: Context
    ) -> list[dict[str, Any]]:
        real = job.real.without_test()  # a choice made on val: the test split is not there
        real = real.subset(cell["classes"]) if "classes" in cell else real
        labeler = None
        if params.labels == "teacher":
            from ddbench.teacher import labels_for

            labeler = labels_for(params, real, Recipe(), ctx.cache_dir, ctx.device)
        top1, _ = fit_artifact(
            cell["arch"],
            job.artifact,
            job.ipc,
            real,
            Recipe(epochs=params.epochs, **params.recipe),
            cell["eval_seed"],
            params.sampling,
            ctx.device,
            label_mode=params.labels,
            labeler=labeler,
        )
        return [
            {
                "arch": cell["arch"],
                "eval_seed": cell["eval_seed"],
                "split": "val",  # never test: this row selects a config
                "metric": "top1",
                "value": top1["val"],
                "higher_is_better": True,
            }
        ]


def trial_job(job: DistillJob, config: dict[str, Any]) -> DistillJob:
    """The distill job of one trial: `job` with `config` over its params, no tune block, and an
    id hashing the tuned job's id and the config (equal trials share artifacts across reruns)."""
    from ddbench.methods import METHODS

    params = METHODS.get(job.method).Params.model_validate({**job.params, **config})
    identity = {"tuned_job": job.job_id, "config": config}
    return dataclasses.replace(
        job,
        job_id=content_hash(to_json(identity)),
        params=params.model_dump(mode="json"),
        eval_ipcs=(),
        tune=None,
    )


def trial_count(tune: TuneSpec) -> int:
    """Trials of a tune block: grid points (product of the grids' lengths) x num_samples."""
    return (
        math.prod(
            len(values)
            for dist in tune.space.values()
            for kind, values in dist.items()
            if kind == "grid"
        )
        * tune.num_samples
    )


def selection_ipc(job: DistillJob, suite_ipcs: list[int]) -> int:
    """The IPC a trial of `job` is scored at (TuneSpec.eval_ipc)."""
    assert job.tune is not None, "selection_ipc of a job without a tune block"
    return job.ipc or job.tune.eval_ipc or suite_ipcs[0]


def selection_cells(
    job: DistillJob, trial: DistillJob, config: dict[str, Any], suite_ipcs: list[int]
) -> list[EvalCell]:
    """The cells scoring `trial` (a trial job of the tuned `job`) on the val split."""
    assert job.tune is not None, "selection_cells of a job without a tune block"
    params = SelectionParams(
        tuned_job=job.job_id,
        config=config,
        arch=job.tune.eval_arch,
        seeds=job.tune.eval_seeds,
        epochs=job.tune.eval_epochs,
        labels=job.tune.eval_labels or "hard",  # None only on a block the plan did not resolve
        sampling=job.tune.eval_sampling or "fixed",
        **{name: getattr(job.tune, f"eval_{name}") for name in TEACHER_SETTINGS},
        recipe=job.tune.eval_recipe or {},  # None only on a block the plan did not resolve
    )
    eval_params = params.model_dump(mode="json")
    ipc = selection_ipc(job, suite_ipcs)
    cells = []
    for cell in TuneSelection().cells("cpu", params):
        if trial.classes is not None:  # a class-subset job (continual) is scored on its classes
            cell = {**cell, "classes": list(trial.classes)}
        key = to_json([SELECTION, TuneSelection.version, eval_params, ipc, cell])
        cells.append(
            EvalCell(
                trial,
                SELECTION,
                TuneSelection.version,
                eval_params,
                ipc,
                cell,
                content_hash(key),
                protocol=job.selection_protocol,
            )
        )
    return cells
