"""`cross_arch`: train each architecture from scratch on the distillate, report top1.

Cells are (arch, eval_seed). Each trains one network with the shared recipe of `fit.py` and
writes top1 on the val and test splits. Where `vectorise` says so (`auto`: the suite gives eval
cells a GPU, the arch is a ConvNet, fixed sampling without a teacher; `ddbench.fit_vmap`) an
arch's seeds form one cell `{"arch", "eval_seeds"}` trained in one vectorised run, which writes
the same rows, one per seed; the cost rows of a generator are measured once per such cell.

The whole-dataset reference (`whole_dataset` method, ipc 0) is trained for `whole_set_epochs`
instead of `epochs`, since a full split needs far fewer passes than a ten-image set.

`sampling` says how a generator artifact (cgan, dim, d2m) is turned into training data
(`fixed` | `fresh` | `time_matched`, see `ddbench.fit`); it is part of `eval_params`, so every
row records it. Image sets ignore it. For generator artifacts each cell also writes cost rows
(split `test`, lower is better): `generator_params`, `gen_ms_per_image` and
`gen_train_time_ratio` (generating a batch of 128 over one training step of the cell's
architecture on it, DiM's Tab. 9), and under `time_matched` the images per class, epochs and
seconds it actually used.

`labels` says what the student learns (`ddbench.fit`): `hard` labels (default), the artifact's own
`soft` labels, or a `teacher`'s soft labels regenerated every epoch under that epoch's augmentation,
with KL at `temperature` (D4M's training-time matching). The teacher (`teacher_arch`) is trained on
the whole train split with SGD (the shared recipe's optimiser and schedule) for `teacher_epochs` at
`teacher_lr` on batches of `teacher_batch_size` (a fixed seed; `ddbench.protocols` gives the
defaults' measurement) and cached under `<out>/cache/teachers/`, so every cell of a run shares one
(`ddbench.teacher`). These are in `eval_params`, so every row records the label mode and the
teacher; such a cell also writes the teacher's `teacher_top1` (val, test) and the
`teacher_confidence` / `teacher_certainty` of the targets it gave, and warns when they were near
uniform. Teacher labels pay under D4M's AdamW + cosine student recipe
(`ddbench.protocols.SOFT_LABEL_RECIPE`, d4m's paper protocol) and trail hard labels under the shared
DC recipe (benchmarks/RESULTS.md).

`protocol` says which evaluation protocols a job is evaluated under (`ddbench.protocols`):
`shared` (default) trains every method with these params; `paper` trains each with its
method's `paper_protocol` over them (DiM and the cgan: fresh sampling, D2M: time-matched, D4M:
a teacher's soft labels); `both` does each, as separate cells whose eval params differ and whose
rows name the protocol. A method whose paper protocol is the shared one (pixel methods, coresets)
gets one set of cells either way. The cells' eval params leave `protocol` out (a plan field):
they hold the settings it resolved to, so the shared cells keep their ids under `both`.

`precision` and `compile` (`auto` | ..., `ddbench.fit`) are in `eval_params` as asked; the
execution path they resolved to on the cell's device (`ddbench.fastpath`: calibrated there) is
written as rows of each model (split `test`): `precision_bits` (16 = bf16 autocast, 32 = fp32),
`channels_last`, `compiled` (0 / 1), `micro_batch` (images per gradient-accumulation block, 0 =
whole batches), `test_batch` (images per test forward) and, where calibrated, `step_ms` and
`fp32_step_ms`, since they depend on where the cell ran.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from ddbench.archs import ArchName, ArchNames
from ddbench.context import Context
from ddbench.evals import EvalJob, EvalParams, Evaluator, register_eval
from ddbench.fit import Recipe, fit_artifact, generator_costs, is_generator
from ddbench.fit_vmap import use_vectorised
from ddbench.methods import Method
from ddbench.protocols import (
    NEAR_UNIFORM_CERTAINTY,
    SHARED,
    TEACHER_ARCH,
    TEACHER_BATCH_SIZE,
    TEACHER_EPOCHS,
    TEACHER_LR,
    TEACHER_TEMPERATURE,
    paper_name,
    teacher_certainty,
)
from ddbench.schema import WHOLE_SPLIT_IPC

if TYPE_CHECKING:
    from ddbench.teacher import TeacherLabels

LOGGER = logging.getLogger("ddbench")


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
    temperature: float = Field(TEACHER_TEMPERATURE, gt=0)  # KD temperature T of `teacher`
    teacher_arch: ArchName = TEACHER_ARCH  # the teacher network (`ddbench.protocols`)
    teacher_epochs: int = Field(TEACHER_EPOCHS, ge=1)  # its whole-split epochs
    teacher_lr: float = Field(TEACHER_LR, gt=0)  # its SGD learning rate
    teacher_batch_size: int = Field(TEACHER_BATCH_SIZE, ge=1)  # its images per step
    # train an arch's seeds at once with torch.func.vmap: auto = on GPUs only (faster there,
    # slower on this CPU: benchmarks/RESULTS.md); on = also on CPUs; off = one cell per seed
    vectorise: Literal["auto", "on", "off"] = "auto"
    # evaluation protocols per job: these params for every method (shared, the fair default),
    # each method's paper protocol over them (paper), or both as separate cells (module docstring)
    protocol: Literal["shared", "paper", "both"] = "shared"
    plan_fields: ClassVar[frozenset[str]] = frozenset({"protocol"})

    @model_validator(mode="after")
    def _vectorise_needs_fixed_runs(self) -> CrossArchParams:
        if self.vectorise == "on" and (self.labels == "teacher" or self.sampling != "fixed"):
            raise ValueError(
                "vectorise: on needs sampling: fixed and labels hard or soft "
                "(fresh draws, time budgets and teacher labels are per run)"
            )
        return self


@register_eval
class CrossArch(Evaluator):
    """Train each architecture from scratch on the distillate, several seeds each, and report
    val and test top-1 (plus a generator's costs and the execution path each model took).

    The flagship evaluation: one cell per (arch, eval_seed), or per arch when its seeds train
    vectorised; under `protocol: both` each job is also trained under its paper's protocol."""

    name = "cross_arch"
    version = 1
    Params = CrossArchParams
    # seconds per cell on digits (the teacher of `labels: teacher`, e.g. d4m's paper protocol,
    # included: its default 40 whole-split epochs would outlast every smoke cell)
    smoke = {"epochs": 20, "seeds": 2, "whole_set_epochs": 3, "teacher_epochs": 5}

    def cells(self, device: str, params: CrossArchParams) -> list[dict[str, Any]]:
        cells: list[dict[str, Any]] = []
        for arch in params.archs:
            if self._vectorised(params, arch, device):
                cells.append({"arch": arch, "eval_seeds": list(range(params.seeds))})
            else:
                cells += [{"arch": arch, "eval_seed": s} for s in range(params.seeds)]
        return cells

    def protocols(
        self, method: type[Method], params: CrossArchParams
    ) -> list[tuple[str, CrossArchParams]]:
        """(name, params) per protocol `params.protocol` asks for; the paper protocol only when
        it differs from the shared one, so no job is evaluated twice the same way."""
        shared = params.model_copy(update={"protocol": "shared"})
        paper = CrossArchParams.model_validate(
            {**shared.model_dump(), **method.paper_protocol, "protocol": "paper"}
        )
        own = paper.model_dump(exclude={"protocol"}) != shared.model_dump(exclude={"protocol"})
        variants: list[tuple[str, CrossArchParams]] = []
        if params.protocol in ("shared", "both") or not own:
            variants.append((SHARED, shared))
        if params.protocol in ("paper", "both") and own:
            variants.append((paper_name(method.name), paper))
        return variants

    @staticmethod
    def _vectorised(params: CrossArchParams, arch: str, device: str) -> bool:
        """Whether an arch's seeds form one vectorised cell (module docstring)."""
        per_run = params.labels == "teacher" or params.sampling != "fixed"
        return not per_run and use_vectorised(params.vectorise, arch, device, params.seeds)

    def run(
        self, cell: dict[str, Any], job: EvalJob, params: CrossArchParams, ctx: Context
    ) -> list[dict[str, Any]]:
        epochs = params.whole_set_epochs if job.ipc == WHOLE_SPLIT_IPC else params.epochs
        recipe = Recipe.of(params, epochs=epochs)
        if "eval_seeds" in cell:
            return self._run_vectorised(cell, job, params, recipe, ctx)
        arch, seed = cell["arch"], cell["eval_seed"]
        labeler = None
        if params.labels == "teacher":
            from ddbench.teacher import labels_for

            labeler = labels_for(params, job.real, recipe, ctx.cache_dir, ctx.device)
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
        if is_generator(job.artifact):
            extra = {**generator_costs(arch, job.artifact, job.real, recipe, ctx.device), **extra}
        rows = _seed_rows(arch, seed, top1, {**_distillate_metrics(job), **extra})
        if labeler is not None:
            rows += _teacher_rows(arch, seed, labeler, job.real.num_classes)
        return rows

    def _run_vectorised(
        self,
        cell: dict[str, Any],
        job: EvalJob,
        params: CrossArchParams,
        recipe: Recipe,
        ctx: Context,
    ) -> list[dict[str, Any]]:
        from ddbench.fit_vmap import fit_artifact_seeds

        arch, seeds = cell["arch"], cell["eval_seeds"]
        results = fit_artifact_seeds(
            arch,
            job.artifact,
            job.ipc,
            job.real,
            recipe,
            seeds,
            ctx.device,
            label_mode=params.labels,
            # auto trains one by one where the cell's device turns out not to be a GPU
            vectorise=params.vectorise,
        )
        costs = _distillate_metrics(job)
        if is_generator(job.artifact):
            costs |= generator_costs(arch, job.artifact, job.real, recipe, ctx.device)
        rows = []
        for i, (seed, (top1, path)) in enumerate(zip(seeds, results, strict=True)):
            rows += _seed_rows(arch, seed, top1, {**(costs if i == 0 else {}), **path})
        return rows


def _teacher_rows(
    arch: str, seed: int, labeler: TeacherLabels, num_classes: int
) -> list[dict[str, Any]]:
    """What the student learned from: the teacher's own top-1 per split (from its cache record),
    how confident the targets it gave were and how often their top class was the image's own
    label; warns when they were near uniform."""
    measured = {
        (split, "teacher_top1"): labeler.teacher_stats.get(f"{split}_top1")
        for split in ("val", "test")
    }
    confidence = labeler.confidence
    if confidence is not None:
        certainty = teacher_certainty(confidence, num_classes)
        measured[("test", "teacher_confidence")] = confidence
        measured[("test", "teacher_certainty")] = certainty
        measured[("test", "teacher_agreement")] = labeler.agreement
        if certainty < NEAR_UNIFORM_CERTAINTY:
            LOGGER.warning(
                "%s seed %d: the teacher's targets at T=%g were near uniform (mean largest "
                "probability %.3f over %d classes): the student learns little from them; lower "
                "the temperature or train the teacher longer",
                arch,
                seed,
                labeler.temperature,
                confidence,
                num_classes,
            )
    return [
        {
            "arch": arch,
            "eval_seed": seed,
            "split": split,
            "metric": metric,
            "value": value,
            "higher_is_better": True,
        }
        for (split, metric), value in measured.items()
        if value is not None
    ]


def _distillate_metrics(job: EvalJob) -> dict[str, float]:
    """What the distillate's meta says about the distillation itself: a pixel method's
    `image_change` (||S_T - S_0|| / ||S_0||, `ddbench.methods._pixel`)."""
    change = job.artifact.meta.get("image_change")
    return {} if change is None else {"image_change": float(change)}


def _seed_rows(
    arch: str, seed: int, top1: dict[str, float], extra: dict[str, float]
) -> list[dict[str, Any]]:
    """One eval seed's rows: top1 per split, then the `extra` measurements (the execution
    path's `precision_bits` and timings, generator costs, time-matched figures)."""
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
