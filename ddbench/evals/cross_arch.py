"""`cross_arch`: train each architecture from scratch on the distillate, report top1.

Cells are (arch, eval_seed). Each trains one network with the shared recipe of `fit.py` and
writes top1 on the val and test splits. The whole-dataset reference (`whole_dataset` method,
ipc 0) is trained for `whole_set_epochs` instead of `epochs`, since a full split needs far
fewer passes than a ten-image set.

`sampling` says how a generator artifact (cgan, dim, d2m) is turned into training data
(`fixed` | `fresh` | `time_matched`, see `ddbench.fit`); it is part of `eval_params`, so every
row records it. Image sets ignore it. For generator artifacts each cell also writes cost rows
(split `test`, lower is better): `generator_params`, `gen_ms_per_image` and
`gen_train_time_ratio` (generating a batch of 128 over one training step of the cell's
architecture on it, DiM's Tab. 9), and under `time_matched` the images per class, epochs and
seconds it actually used.

`labels` says what the student learns (`ddbench.fit`): `hard` labels (default), the artifact's
own `soft` labels, or a `teacher`'s soft labels regenerated every epoch under that epoch's
augmentation, with KL at `temperature` (D4M's training-time matching). The teacher
(`teacher_arch`) is trained on the whole train split with the shared recipe for
`teacher_epochs` (a fixed seed) and cached under `<out>/cache/teachers/`, so every cell of a run
shares one (`ddbench.teacher`). These are in `eval_params`, so every row records the label mode
and the teacher.

`precision` (`auto` | `fp32` | `bf16`, `ddbench.fit`) is in `eval_params` as asked; what `auto`
resolved to on the cell's device is written as one more row per cell, `precision_bits` (16 =
bf16 autocast, 32 = fp32; split `test`), since it depends on where the cell ran.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ddbench.archs import ArchName, ArchNames
from ddbench.context import Context
from ddbench.evals import EvalJob, EvalParams, Evaluator, register_eval
from ddbench.fit import Recipe, fit_artifact, generator_costs, is_generator, resolve_precision


class CrossArchParams(EvalParams, Recipe):
    archs: ArchNames = Field(default_factory=lambda: ["convnet"], min_length=1)  # registry names
    seeds: int = Field(5, ge=1)  # models per (method, ipc, arch): DC protocol uses >= 5
    whole_set_epochs: int = Field(100, ge=1)  # full-split training (NAS protocol: 100 epochs)
    # generator artifacts: one draw per eval seed (fixed, the fair default), a new draw every
    # epoch (fresh, DiM's INPC protocol) or generation + training within the wall-clock budget of
    # training on IPC images (time_matched, D2M's protocol); image sets always train as fixed
    sampling: Literal["fixed", "fresh", "time_matched"] = "fixed"
    # what the student learns: hard labels, the artifact's own soft labels, or a teacher's soft
    # labels regenerated every epoch under its augmentation (D4M's training-time matching)
    labels: Literal["hard", "soft", "teacher"] = "hard"
    temperature: float = Field(20.0, gt=0)  # KD temperature T of `teacher` (D4M's scripts: 20)
    teacher_arch: ArchName = (
        "convnet"  # teacher network (D4M: ConvNet-W128 for CIFAR, ResNet-18 INet)
    )
    # whole-split epochs of the teacher: a confident teacher matters (on digits a 60-epoch
    # ConvNet's soft labels are near-uniform and students learn little from them)
    teacher_epochs: int = Field(300, ge=1)


@register_eval
class CrossArch(Evaluator):
    name = "cross_arch"
    version = 1
    Params = CrossArchParams
    smoke = {"epochs": 20, "seeds": 2, "whole_set_epochs": 3}  # seconds per cell on digits

    def cells(self, params: CrossArchParams) -> list[dict[str, Any]]:
        return [{"arch": a, "eval_seed": s} for a in params.archs for s in range(params.seeds)]

    def run(
        self, cell: dict[str, Any], job: EvalJob, params: CrossArchParams, ctx: Context
    ) -> list[dict[str, Any]]:
        epochs = params.whole_set_epochs if job.ipc == 0 else params.epochs
        recipe = Recipe.of(params, epochs=epochs)
        arch, seed = cell["arch"], cell["eval_seed"]
        labeler = None
        if params.labels == "teacher":
            from ddbench.teacher import TeacherLabels, teacher_model

            teacher_recipe = recipe.model_copy(update={"epochs": params.teacher_epochs})
            teacher = teacher_model(
                job.real,
                params.teacher_arch,
                teacher_recipe,
                cache_dir=getattr(ctx, "cache_dir", None),
                device=ctx.device,
            )
            labeler = TeacherLabels(teacher, params.temperature)
        top1, extra = fit_artifact(
            arch,
            job.artifact,
            job.ipc,
            job.real,
            recipe,
            seed,
            params.sampling,
            ctx.device,
            label_mode=params.labels,
            labeler=labeler,
        )
        rows = [
            {
                "arch": arch,
                "eval_seed": seed,
                "split": split,
                "metric": "top1",
                "value": value,
                "higher_is_better": True,
            }
            for split, value in top1.items()
        ]
        if is_generator(job.artifact):
            extra = {**generator_costs(arch, job.artifact, job.real, recipe, ctx.device), **extra}
        precision = resolve_precision(recipe.precision, arch, ctx.device)
        extra["precision_bits"] = 16.0 if precision == "bf16" else 32.0
        rows += [
            {
                "arch": arch,
                "eval_seed": seed,
                "split": "test",
                "metric": metric,
                "value": value,
                "higher_is_better": False,
            }
            for metric, value in extra.items()
        ]
        return rows
