"""THE train-from-scratch-and-test recipe every evaluator shares (DC protocol,
docs/protocols.md#training-recipe).

SGD (lr 0.01, momentum 0.9, weight decay 5e-4), batch 256, lr x0.1 at half the epochs, DSA
augmentation drawn per sample, final-epoch accuracy (never a checkpoint picked on test).
`optimizer: adamw` and `schedule: cosine` give the soft-label students of D4M / SRe2L instead
(`Recipe.optimiser`; the teacher-label protocol's choice is in `ddbench.protocols`).
A given `eval_seed` fixes the initialisation, the data order and the augmentation, so the same
cell always gives the same number on the same machine.

Labels may be hard ([N] int64) or soft ([N, K] probabilities: cross-entropy against them).
An artifact that carries a learned learning rate (`Artifact.learned_lr`, e.g. MTT's `syn_lr`
given to `from_files`) is trained with it instead of the recipe's `lr` (`artifact_recipe`, in
`fit_artifact` and `ddbench.fit_vmap.fit_artifact_seeds`); every cell then writes a
`learned_lr` row (`ddbench.runner.work.run_cell`).
The evaluator's `labels` mode picks them (`fit_artifact`): `hard` (default; soft labels become
their argmax), `soft` (the artifact's own soft labels when it has them, else hard) or `teacher`
(D4M's training-time matching: a `labeler` — `ddbench.teacher.TeacherLabels` — relabels every
batch *after* its augmentation, so the soft labels are regenerated every epoch under that
epoch's augmentation, and the loss is the labeller's KL at temperature T).

Generator artifacts (`GeneratorSet`: cgan, dim, d2m) are trained on under one of three
`sampling` modes (`fit_artifact`; the mode is an evaluator parameter, so it is in every row's
`eval_params`):

- `fixed` (default): one draw of IPC x classes images per eval seed (the draw depends on the eval
  seed and IPC only, so every architecture of a seed sees the same images), then the recipe;
- `fresh` (DiM's protocol, "INPC"): a new draw of IPC x classes images every epoch, so the number
  of forward passes equals training on IPC images;
- `time_matched` (D2M's protocol): generation plus training within the wall-clock budget of
  training on IPC x classes images. D2M generates a *fixed* number of images once within that
  budget (its appendix B: "not generating on the fly"). The budget is a documented estimate, not
  a second training run: the recipe's epochs times the per-epoch time of the fixed IPC set, with
  per-step times measured on a copy of the model at the IPC set's batch size and at the full
  batch (linear in the batch between them). The images per class `k` is the largest whose
  generation time plus `epochs` epochs over `k` x classes images fits the budget (at most
  `TIME_MATCHED_MAX_FACTOR` x IPC); training then stops at an epoch boundary if the wall clock
  would overrun the budget. On a CPU, step time grows about linearly with the batch, so `k` is
  about IPC (generation is pure overhead); on a GPU a small set under-fills the device and `k`
  grows, which is the trade-off D2M's protocol measures. Results depend on the machine's speed,
  unlike the other two modes; the rows record `time_matched_images_per_class`,
  `time_matched_epochs` and the budget.

For any other artifact (image sets, real subsets) `fresh` and `time_matched` behave as `fixed`:
they have nothing to re-draw and no generation to pay for.

Execution speed. `precision` (`auto`, `fp32`, `bf16`) and `compile` (`auto`, `on`, `off`) of
the recipe, and the memory format, are resolved per run by `ddbench.fastpath.choose_setup`: a
short calibration of the run's actual training step on its device (cached per device model,
torch version, architecture and shape class), which takes a faster path than fp32 eager only
when it measures one over the run's number of steps, compile time included; bf16 is a
candidate only for architectures that passed the fp32 accuracy parity check. The chosen path
and its timings become rows (`precision_bits`, `channels_last`, `compiled`, `step_ms`,
`fp32_step_ms`). `precision: fp32, compile: off` is the reference path, never calibrated.
Multi-seed vectorisation (`ddbench.fit_vmap`): several eval seeds of a ConvNet in one
`torch.func.vmap` step, selected on GPUs only (`cross_arch` groups the seeds of a ConvNet
into one cell when the suite gives eval cells a GPU).

`train_model` knows the architecture only when given `arch` (`fit_and_test` passes it); without
it the run is fp32 eager (models built elsewhere: teachers, coreset embeddings).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from ddbench.fastpath import (
    FP32_EAGER,
    TEST_BATCHES,
    Choice,
    Precision,
    Switch,
    TrainSetup,
    accumulate_gradients,
    autocast,
    choose_setup,
    choose_test_batch,
    median_seconds,
    train_step_fn,
)
from ddbench.seeding import derive_seed

if TYPE_CHECKING:
    from ddbench.artifact import Artifact
    from ddbench.data import RealData

Sampling = Literal["fixed", "fresh", "time_matched"]
LabelMode = Literal["hard", "soft", "teacher"]
# epoch -> (images, labels) to train on in that epoch (fresh generator draws)
DataSource = Callable[[int], tuple[torch.Tensor, torch.Tensor]]
TIME_MATCHED_MAX_FACTOR = 8  # time_matched draws at most 8 x IPC images per class
COST_BATCH = 128  # batch of DiM's Tab. 9 generation / training timings
# the ConvNet family: DC's ConvNet and variants (what `fit_vmap` can vectorise)
CONVNET_ARCHS = frozenset({"convnet", "convnet_bn"})


# the Recipe fields that make its optimiser and schedule: what a protocol's student recipe
# changes (`ddbench.protocols.SOFT_LABEL_RECIPE`) and Tune's selection follows
# (`TuneSpec.eval_recipe`)
OPTIMISER_FIELDS = ("optimizer", "schedule", "lr", "momentum", "weight_decay")


class Recipe(BaseModel):
    """Training hyper-parameters; evaluators embed these fields in their Params."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(1000, ge=1)  # DC protocol with augmentation (300 without)
    # the optimiser: SGD with momentum (DC protocol) or AdamW (D4M's and SRe2L's student
    # training with soft labels; its betas are torch's defaults, 0.9 and 0.999)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    # the learning-rate schedule, stepped once per epoch: `step` = x0.1 at half the epochs (DC
    # protocol), `cosine` = cosine annealing to 0 over the epochs (D4M / SRe2L students)
    schedule: Literal["step", "cosine"] = "step"
    lr: float = Field(0.01, gt=0)  # SGD learning rate of the DC protocol
    momentum: float = 0.9  # DC protocol (SGD only)
    weight_decay: float = 5e-4  # DC protocol (AdamW: decoupled, as torch.optim.AdamW)
    batch_size: int = Field(256, ge=1)  # DC protocol; an IPC-1 set is a single batch
    augment: bool = True  # DSA per sample at training time (DC/DSA evaluation)
    dsa_strategy: str | None = None  # None = the dataset's default (no flip for digits / SVHN)
    # arithmetic of training and testing: auto = the fastest path the device's calibration
    # measures (bf16 only where the parity check passed; ddbench.fastpath), fp32 or bf16 to
    # force one
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # torch.compile of the model: auto = when the calibration measures it paying off over the
    # run's steps, compile time included
    compile: Switch = "auto"

    @classmethod
    def of(cls, params: BaseModel, **changes: Any) -> Recipe:
        """The recipe fields of `params` (an evaluator's params, which embed them), `changes`
        applied (e.g. `epochs=` for a whole-set run)."""
        return cls(**{**{k: getattr(params, k) for k in cls.model_fields}, **changes})

    def optimiser(
        self, params: Iterable[torch.Tensor]
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """This recipe's optimiser over `params` and its learning-rate schedule (step it once
        per epoch). Both are element-wise, so over stacked per-seed leaves
        (`ddbench.fit_vmap`) each slice gets the update it would get alone."""
        opt: torch.optim.Optimizer
        if self.optimizer == "sgd":
            opt = torch.optim.SGD(
                params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
            )
        else:
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        sched: torch.optim.lr_scheduler.LRScheduler
        if self.schedule == "step":
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, [self.epochs // 2], gamma=0.1)
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.epochs)
        return opt, sched


class BatchLabeler(Protocol):
    """Targets for each augmented training batch and the loss against them (`ddbench.teacher`)."""

    def targets(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Targets for the augmented batch `x`, whose own labels are `labels` (class ids, or
        soft rows): what the student trains on instead of them."""
        ...

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...


def select_labels(y: torch.Tensor, label_mode: LabelMode) -> torch.Tensor:
    """`hard`: soft label rows become their argmax; `soft` / `teacher`: unchanged."""
    return y.argmax(dim=1) if label_mode == "hard" and y.dim() == 2 else y


def set_threads(cpus: float) -> None:
    """Ray sets OMP_NUM_THREADS=1 and reuses workers: give torch the cores the task reserved."""
    torch.set_num_threads(max(1, int(cpus)))


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def seeded_streams(seed: int) -> tuple[torch.Generator, torch.Generator]:
    """The data-order and augmentation generators of a training run seeded by `seed`."""
    order_gen = torch.Generator().manual_seed(derive_seed(seed, "data_order"))
    aug_gen = torch.Generator().manual_seed(derive_seed(seed, "augment"))
    return order_gen, aug_gen


def train_seed(eval_seed: int, arch: str) -> int:
    """The `train_model` seed (data order, augmentation) of an eval seed's run of `arch`."""
    return derive_seed(eval_seed, arch)


def seeded_model(
    arch: str, real: RealData, eval_seed: int, arch_kwargs: dict[str, Any] | None = None
) -> torch.nn.Module:
    """`arch` for `real`'s shapes, initialised from the eval seed (the init of `fit_and_test`)."""
    from ddbench.archs import build_arch

    torch.manual_seed(derive_seed(eval_seed, "init", arch))
    return build_arch(arch, real.channels, real.num_classes, real.image_size, **(arch_kwargs or {}))


def train_model(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: Recipe,
    dataset: str,
    seed: int,
    device: str = "cpu",
    data_source: DataSource | None = None,
    deadline_s: float | None = None,
    stats: dict[str, float] | None = None,
    labeler: BatchLabeler | None = None,
    arch: str | None = None,
) -> Choice:
    """Train `model` in place on (x, y) with the recipe; data order and DSA seeded by `seed`.
    Returns the execution path it took (`ddbench.fastpath.Choice`).

    `arch` (the registry name of `model`) lets the recipe's `auto` choices be calibrated for it
    (`ddbench.fastpath.choose_setup`, at the first batch); without it the run is fp32 eager.

    `labeler`, when given, replaces each batch's labels by `labeler.targets(augmented batch,
    its labels)` and the loss by `labeler.loss` (teacher soft labels, regenerated every epoch).

    `data_source(epoch)`, when given, replaces (x, y) every epoch (fresh generator draws).
    `deadline_s` stops training at the first epoch boundary where one more epoch (at the mean
    epoch time so far) would end after that many seconds. `stats` receives `epochs`, `seconds`
    and the path's metrics (`Choice.metrics`).
    """
    from ddbench.augment import default_strategy, dsa

    strategy = recipe.dsa_strategy or default_strategy(dataset)
    order_gen, aug_gen = seeded_streams(seed)
    model.to(device).train()
    x, y = x.to(device), y.to(device)
    loss_fn = soft_cross_entropy if y.dim() == 2 else F.cross_entropy
    opt, sched = recipe.optimiser(model.parameters())
    choice: Choice | None = None
    forward: Callable[[torch.Tensor], torch.Tensor] = model
    n = len(x)
    start_time, epochs_done = time.perf_counter(), 0
    for epoch in range(recipe.epochs):
        if deadline_s is not None and epoch > 0:
            elapsed = time.perf_counter() - start_time
            if elapsed * (epoch + 1) / epoch > deadline_s:
                break
        if data_source is not None:
            x, y = data_source(epoch)
            x, y = x.to(device), y.to(device)
            loss_fn = soft_cross_entropy if y.dim() == 2 else F.cross_entropy
            n = len(x)
        if choice is None:  # the run's shapes are known: calibrate (or look up) its path
            choice = run_choice(recipe, arch, model, x, y, dataset, device)
            if choice.setup.channels_last:
                model.to(memory_format=torch.channels_last)
            forward = torch.compile(model) if choice.setup.compile else model
        perm = torch.randperm(n, generator=order_gen).to(device)
        for start in range(0, n, recipe.batch_size):
            idx = perm[start : start + recipe.batch_size]
            xb, yb = x[idx], y[idx]
            if recipe.augment:
                xb = dsa(xb, strategy, aug_gen)
            if choice.setup.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            if labeler is not None:  # soft labels of this epoch's augmented batch
                yb = labeler.targets(xb, yb)
            opt.zero_grad(set_to_none=True)
            loss_of = labeler.loss if labeler is not None else loss_fn
            accumulate_gradients(forward, loss_of, xb, yb, choice.setup, device)
            opt.step()
        sched.step()
        epochs_done += 1
    choice = choice or Choice(FP32_EAGER)  # no epoch ran (a deadline of 0)
    if stats is not None:
        stats.update(epochs=float(epochs_done), seconds=time.perf_counter() - start_time)
        stats.update(choice.metrics)
    if choice.setup.channels_last:
        model.to(memory_format=torch.contiguous_format)
    return choice


def run_choice(
    recipe: Recipe,
    arch: str | None,
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    dataset: str,
    device: str,
) -> Choice:
    """The path of a run of the recipe on (x, y): `choose_setup` for its batch and steps."""
    if x.dim() != 4:  # not images (e.g. features): nothing to calibrate
        return choose_setup(recipe, None, model, (0, 0, 0), 0, dataset, 1, 0, device)
    batch = min(len(x), recipe.batch_size)
    steps = recipe.epochs * -(-len(x) // recipe.batch_size)
    num_classes = y.shape[1] if y.dim() == 2 else int(y.max()) + 1
    shape = (x.shape[1], x.shape[2], x.shape[3])
    return choose_setup(recipe, arch, model, shape, num_classes, dataset, batch, steps, device)


@torch.no_grad()
def accuracy(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    device: str = "cpu",
    batch: int = TEST_BATCHES[0],  # images per forward pass: speed and memory, not the result
    precision: Precision = "fp32",  # the precision the model was trained in (autocast)
) -> float:
    """Top-1 accuracy as a fraction in [0, 1]."""
    model.to(device).eval()
    correct = 0
    for start in range(0, len(x), batch):
        with autocast(device, precision):
            logits = model(x[start : start + batch].to(device))
        correct += int((logits.argmax(dim=1).cpu() == y[start : start + batch]).sum())
    return correct / max(1, len(x))


def fit_and_test(
    arch: str,
    real: RealData,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: Recipe,
    eval_seed: int,
    device: str = "cpu",
    arch_kwargs: dict[str, Any] | None = None,
    data_source: DataSource | None = None,
    deadline_s: float | None = None,
    stats: dict[str, float] | None = None,
    labeler: BatchLabeler | None = None,
) -> dict[str, float]:
    """Build `arch` from the eval seed, train it on (x, y), return top1 on val and test (under
    the precision the training took).

    `data_source`, `deadline_s`, `stats`: see `train_model` (generator sampling modes; `stats`
    also receives the execution path's metrics); `labeler`: see `train_model`."""
    model = seeded_model(arch, real, eval_seed, arch_kwargs)
    choice = train_model(
        model,
        x,
        y,
        recipe,
        real.name,
        train_seed(eval_seed, arch),
        device,
        data_source=data_source,
        deadline_s=deadline_s,
        stats=stats,
        labeler=labeler,
        arch=arch,
    )
    return val_test_top1(model, real, device, choice.setup.precision, arch, stats)


def val_test_top1(
    model: torch.nn.Module,
    real: RealData,
    device: str,
    precision: Precision,
    arch: str | None = None,
    stats: dict[str, float] | None = None,
) -> dict[str, float]:
    """Top-1 of a trained model on `real`'s val and test splits (a split without images, e.g.
    the test split of `RealData.without_test`, is left out). Given the model's registry name
    `arch`, the images per forward pass are chosen by measurement
    (`ddbench.fastpath.choose_test_batch`) and written to `stats` as `test_batch`."""
    splits = {"val": (real.val_x, real.val_y), "test": (real.test_x, real.test_y)}
    batch = TEST_BATCHES[0]
    if arch is not None:
        shape = (real.channels, real.image_size, real.image_size)
        batch = choose_test_batch(arch, model, shape, precision, device)
        if stats is not None:
            stats["test_batch"] = float(batch)
    return {
        split: accuracy(model, x, y, device, batch, precision)
        for split, (x, y) in splits.items()
        if len(y)
    }


# --------------------------------------------------------------------------- generator sampling


def draw_generator(eval_seed: int, ipc: int, *parts: object) -> torch.Generator:
    """The noise generator of a draw: a function of (eval seed, IPC, purpose) only."""
    return torch.Generator().manual_seed(derive_seed("generator_draw", eval_seed, ipc, *parts))


def fixed_data(
    artifact: Artifact, ipc: int, real: RealData, eval_seed: int, label_mode: LabelMode
) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels an eval seed trains on under `fixed` sampling (one draw)."""
    x, y = artifact.materialise(ipc, real, draw_generator(eval_seed, ipc, "fixed"))
    return x, select_labels(y, label_mode)


def artifact_recipe(recipe: Recipe, *artifacts: Artifact) -> Recipe:
    """`recipe` with the learning rate the artifacts were distilled with, when they carry one
    (`Artifact.learned_lr`: MTT / DATM learn it with the images, and their evaluation trains
    with it); the rest of the recipe (epochs, the x0.1 step at half, momentum, weight decay)
    is unchanged. Several artifacts (a continual memory) must agree."""
    lrs = {a.learned_lr() for a in artifacts}
    if lrs == {None} or not lrs:
        return recipe
    if len(lrs) > 1:
        raise ValueError(f"the artifacts trained on together carry different learned lrs: {lrs}")
    (lr,) = lrs
    return recipe.model_copy(update={"lr": lr})


def is_generator(artifact: Artifact) -> bool:
    from ddbench.artifact import GeneratorSet

    return isinstance(artifact, GeneratorSet)


def time_train_step(
    model: torch.nn.Module,
    real: RealData,
    recipe: Recipe,
    batch: int,
    device: str = "cpu",
    setup: TrainSetup = FP32_EAGER,  # the path the real training takes (`run_setup`)
) -> float:
    """Median seconds of one training step (`train_step_fn`) on a batch of `batch` images shaped
    like `real`'s, on a copy of `model`."""
    shape = (real.channels, real.image_size, real.image_size)
    step = train_step_fn(model, shape, real.num_classes, real.name, recipe, batch, device, setup)
    return median_seconds(step, device)


def run_setup(
    arch: str, model: torch.nn.Module, real: RealData, recipe: Recipe, n: int, device: str
) -> TrainSetup:
    """The path a run of the recipe on `n` images shaped like `real`'s would take."""
    shape = (real.channels, real.image_size, real.image_size)
    batch, steps = min(n, recipe.batch_size), recipe.epochs * -(-n // recipe.batch_size)
    choice = choose_setup(
        recipe, arch, model, shape, real.num_classes, real.name, batch, steps, device
    )
    return choice.setup


def time_generation(artifact: Artifact, real: RealData, n: int, device: str = "cpu") -> float:
    """Seconds to generate `n` images (labels cycling over the classes) with a generator."""
    labels = torch.tensor([real.classes[i % len(real.classes)] for i in range(n)])
    gen = torch.Generator().manual_seed(0)
    return median_seconds(lambda: artifact.sample(labels, gen, device), device, repeats=5)


def _timing_model(arch: str, real: RealData, arch_kwargs: dict[str, Any] | None) -> torch.nn.Module:
    """A throwaway instance of `arch` for timings (global RNG state restored afterwards)."""
    from ddbench.archs import build_arch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_arch(
            arch, real.channels, real.num_classes, real.image_size, **(arch_kwargs or {})
        )
    return model


def generator_costs(
    arch: str,
    artifact: Artifact,
    real: RealData,
    recipe: Recipe,
    device: str = "cpu",
    arch_kwargs: dict[str, Any] | None = None,
) -> dict[str, float]:
    """What sampling a generator costs (DiM's Tab. 9): parameters, ms per generated image, and
    the time to generate a batch of 128 over the time of one training step of `arch` on it."""
    gen_s = time_generation(artifact, real, COST_BATCH, device)
    model = _timing_model(arch, real, arch_kwargs)
    setup = run_setup(arch, model, real, recipe, COST_BATCH, device)
    train_s = time_train_step(model, real, recipe, COST_BATCH, device, setup)
    return {
        "generator_params": float(artifact.num_parameters()),
        "gen_ms_per_image": 1000.0 * gen_s / COST_BATCH,
        "gen_train_time_ratio": gen_s / max(train_s, 1e-12),
    }


def plan_time_matched(
    arch: str,
    artifact: Artifact,
    ipc: int,
    real: RealData,
    recipe: Recipe,
    device: str = "cpu",
    arch_kwargs: dict[str, Any] | None = None,
) -> dict[str, float]:
    """The time-matched budget and images per class (see the module docstring)."""
    classes = len(real.classes)
    batch, n_fixed = recipe.batch_size, ipc * classes
    model = _timing_model(arch, real, arch_kwargs)
    small = min(n_fixed, batch)
    setup = run_setup(arch, model, real, recipe, n_fixed, device)  # the fixed set's path
    t_small = time_train_step(model, real, recipe, small, device, setup)
    if small < batch:
        t_full = time_train_step(model, real, recipe, batch, device, setup)
    else:
        t_full = t_small
    slope = max(0.0, (t_full - t_small) / (batch - small)) if small < batch else t_full / batch
    intercept = max(0.0, t_full - slope * batch)

    def epoch_seconds(n: int) -> float:
        full, rest = divmod(n, batch)
        return full * t_full + (intercept + slope * rest if rest else 0.0)

    gen_per_image = time_generation(artifact, real, batch, device) / batch
    budget = recipe.epochs * epoch_seconds(n_fixed)

    def cost(k: int) -> float:
        return recipe.epochs * epoch_seconds(k * classes) + k * classes * gen_per_image

    lo, hi = 1, max(1, TIME_MATCHED_MAX_FACTOR * ipc)
    while lo < hi:  # the largest k with cost(k) <= budget (cost grows with k)
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(mid) <= budget else (lo, mid - 1)
    return {
        "budget_s": budget,
        "images_per_class": float(lo),
        "gen_s_per_image": gen_per_image,
        "planned_s": cost(lo),
    }


def fit_artifact(
    arch: str,
    artifact: Artifact,
    ipc: int,
    real: RealData,
    recipe: Recipe,
    eval_seed: int,
    sampling: Sampling = "fixed",
    device: str = "cpu",
    arch_kwargs: dict[str, Any] | None = None,
    label_mode: LabelMode = "hard",
    labeler: BatchLabeler | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Train `arch` on what `artifact` gives at `ipc` under `sampling`; returns (top1 on val and
    test, extra measurements: the execution path's metrics (`Choice.metrics`) and those of the
    time_matched mode). Non-generators: always `fixed`. `label_mode` / `labeler`: see the module
    docstring; `teacher` needs the labeler."""
    if (label_mode == "teacher") != (labeler is not None):
        raise ValueError("label mode 'teacher' needs a labeler, and a labeler needs 'teacher'")
    recipe = artifact_recipe(recipe, artifact)
    stats: dict[str, float] = {}
    if sampling == "fixed" or ipc < 1 or not is_generator(artifact):
        x, y = fixed_data(artifact, ipc, real, eval_seed, label_mode)
        top1 = fit_and_test(
            arch, real, x, y, recipe, eval_seed, device, arch_kwargs, stats=stats, labeler=labeler
        )
        return top1, path_metrics(stats)
    if sampling == "fresh":
        labels = artifact.class_labels(ipc, real)

        def source(epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
            draw = draw_generator(eval_seed, ipc, "fresh", epoch)
            return artifact.sample(labels, draw, device), labels

        unused = torch.empty(0)  # train_model takes each epoch's images from `source`
        top1 = fit_and_test(
            arch,
            real,
            unused,
            unused,
            recipe,
            eval_seed,
            device,
            arch_kwargs,
            data_source=source,
            stats=stats,
            labeler=labeler,
        )
        return top1, path_metrics(stats)
    if sampling != "time_matched":
        raise ValueError(f"unknown sampling {sampling!r}: use fixed, fresh or time_matched")
    plan = plan_time_matched(arch, artifact, ipc, real, recipe, device, arch_kwargs)
    tic = time.perf_counter()
    labels = artifact.class_labels(int(plan["images_per_class"]), real)
    x = artifact.sample(labels, draw_generator(eval_seed, ipc, "time_matched"), device)
    gen_s = time.perf_counter() - tic
    top1 = fit_and_test(
        arch,
        real,
        x,
        labels,
        recipe,
        eval_seed,
        device,
        arch_kwargs,
        deadline_s=plan["budget_s"] - gen_s,
        stats=stats,
        labeler=labeler,
    )
    return top1, {
        **path_metrics(stats),
        "time_matched_images_per_class": plan["images_per_class"],
        "time_matched_epochs": stats["epochs"],
        "time_matched_budget_s": plan["budget_s"],
        "time_matched_seconds": gen_s + stats["seconds"],
    }


def path_metrics(stats: dict[str, float]) -> dict[str, float]:
    """The execution-path metrics of a run's `stats` (its epochs and seconds left out)."""
    return {k: v for k, v in stats.items() if k not in ("epochs", "seconds")}
