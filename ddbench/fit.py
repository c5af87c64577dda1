"""THE train-from-scratch-and-test recipe every evaluator shares (DC protocol, PROTOCOLS.md).

SGD (lr 0.01, momentum 0.9, weight decay 5e-4), batch 256, lr x0.1 at half the epochs, DSA
augmentation drawn per sample, final-epoch accuracy (never a checkpoint picked on test).
A given `eval_seed` fixes the initialisation, the data order and the augmentation, so the same
cell always gives the same number on the same machine.

Labels may be hard ([N] int64) or soft ([N, K] probabilities: cross-entropy against them).
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
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

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


class Recipe(BaseModel):
    """Training hyper-parameters; evaluators embed these fields in their Params."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(1000, ge=1)  # DC protocol with augmentation (300 without)
    lr: float = Field(0.01, gt=0)  # SGD learning rate of the DC protocol
    momentum: float = 0.9  # DC protocol
    weight_decay: float = 5e-4  # DC protocol
    batch_size: int = Field(256, ge=1)  # DC protocol; an IPC-1 set is a single batch
    augment: bool = True  # DSA per sample at training time (DC/DSA evaluation)
    dsa_strategy: str | None = None  # None = the dataset's default (no flip for digits / SVHN)


class BatchLabeler(Protocol):
    """Targets for each augmented training batch and the loss against them (`ddbench.teacher`)."""

    def targets(self, x: torch.Tensor) -> torch.Tensor: ...

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...


def select_labels(y: torch.Tensor, label_mode: LabelMode) -> torch.Tensor:
    """`hard`: soft label rows become their argmax; `soft` / `teacher`: unchanged."""
    return y.argmax(dim=1) if label_mode == "hard" and y.dim() == 2 else y


def set_threads(cpus: float) -> None:
    """Ray sets OMP_NUM_THREADS=1 and reuses workers: give torch the cores the task reserved."""
    torch.set_num_threads(max(1, int(cpus)))


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


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
) -> torch.nn.Module:
    """Train `model` in place on (x, y) with the recipe; data order and DSA seeded by `seed`.

    `labeler`, when given, replaces each batch's labels by `labeler.targets(augmented batch)` and
    the loss by `labeler.loss` (teacher soft labels, regenerated every epoch).

    `data_source(epoch)`, when given, replaces (x, y) every epoch (fresh generator draws).
    `deadline_s` stops training at the first epoch boundary where one more epoch (at the mean
    epoch time so far) would end after that many seconds. `stats` receives `epochs` and `seconds`.
    """
    from ddbench.augment import default_strategy, dsa

    strategy = recipe.dsa_strategy or default_strategy(dataset)
    order_gen = torch.Generator().manual_seed(derive_seed(seed, "data_order"))
    aug_gen = torch.Generator().manual_seed(derive_seed(seed, "augment"))
    model.to(device).train()
    x, y = x.to(device), y.to(device)
    loss_fn = soft_cross_entropy if y.dim() == 2 else F.cross_entropy
    opt = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[recipe.epochs // 2], gamma=0.1)
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
        perm = torch.randperm(n, generator=order_gen).to(device)
        for start in range(0, n, recipe.batch_size):
            idx = perm[start : start + recipe.batch_size]
            xb, yb = x[idx], y[idx]
            if recipe.augment:
                xb = dsa(xb, strategy, aug_gen)
            if labeler is not None:  # soft labels of this epoch's augmented batch
                yb = labeler.targets(xb)
                loss = labeler.loss(model(xb), yb)
            else:
                loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        epochs_done += 1
    if stats is not None:
        stats.update(epochs=float(epochs_done), seconds=time.perf_counter() - start_time)
    return model


@torch.no_grad()
def accuracy(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: str = "cpu", batch: int = 1024
) -> float:
    """Top-1 accuracy as a fraction in [0, 1]."""
    model.to(device).eval()
    correct = 0
    for start in range(0, len(x), batch):
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
    """Build `arch` from the eval seed, train it on (x, y), return top1 on val and test.

    `data_source`, `deadline_s`, `stats`: see `train_model` (generator sampling modes);
    `labeler`: see `train_model` (teacher soft labels)."""
    from ddbench.archs import build_arch

    torch.manual_seed(derive_seed(eval_seed, "init", arch))
    model = build_arch(
        arch, real.channels, real.num_classes, real.image_size, **(arch_kwargs or {})
    )
    train_model(
        model,
        x,
        y,
        recipe,
        real.name,
        derive_seed(eval_seed, arch),
        device,
        data_source=data_source,
        deadline_s=deadline_s,
        stats=stats,
        labeler=labeler,
    )
    return {
        "val": accuracy(model, real.val_x, real.val_y, device),
        "test": accuracy(model, real.test_x, real.test_y, device),
    }


# --------------------------------------------------------------------------- generator sampling


def draw_generator(eval_seed: int, ipc: int, *parts: object) -> torch.Generator:
    """The noise generator of a draw: a function of (eval seed, IPC, purpose) only."""
    return torch.Generator().manual_seed(derive_seed("generator_draw", eval_seed, ipc, *parts))


def is_generator(artifact: Artifact) -> bool:
    from ddbench.artifact import GeneratorSet

    return isinstance(artifact, GeneratorSet)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _median_seconds(fn: Callable[[], object], device: str, repeats: int = 3) -> float:
    """Median wall time of `fn` over `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        tic = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def time_train_step(
    model: torch.nn.Module, real: RealData, recipe: Recipe, batch: int, device: str = "cpu"
) -> float:
    """Seconds of one training step (augmentation, forward, backward, SGD) on a batch of `batch`
    images shaped like `real`'s, measured on a copy of `model` (the model itself is untouched)."""
    from ddbench.augment import default_strategy, dsa

    net = copy.deepcopy(model).to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum)
    gen = torch.Generator().manual_seed(0)
    strategy = recipe.dsa_strategy or default_strategy(real.name)
    shape = (batch, real.channels, real.image_size, real.image_size)
    xb = torch.randn(shape, generator=gen).to(device)
    yb = torch.randint(real.num_classes, (batch,), generator=gen).to(device)

    def step() -> None:
        xa = dsa(xb, strategy, gen) if recipe.augment else xb
        loss = F.cross_entropy(net(xa), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _median_seconds(step, device)


def time_generation(artifact: Artifact, real: RealData, n: int, device: str = "cpu") -> float:
    """Seconds to generate `n` images (labels cycling over the classes) with a generator."""
    labels = torch.tensor([real.classes[i % len(real.classes)] for i in range(n)])
    gen = torch.Generator().manual_seed(0)
    return _median_seconds(lambda: artifact.sample(labels, gen, device), device, repeats=5)


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
    train_s = time_train_step(model, real, recipe, COST_BATCH, device)
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
    t_small = time_train_step(model, real, recipe, small, device)
    t_full = time_train_step(model, real, recipe, batch, device) if small < batch else t_small
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
    test, extra measurements of the time_matched mode). Non-generators: always `fixed`.
    `label_mode` / `labeler`: see the module docstring; `teacher` needs the labeler."""
    if (label_mode == "teacher") != (labeler is not None):
        raise ValueError("label mode 'teacher' needs a labeler, and a labeler needs 'teacher'")
    if sampling == "fixed" or ipc < 1 or not is_generator(artifact):
        x, y = artifact.materialise(ipc, real, draw_generator(eval_seed, ipc, "fixed"))
        y = select_labels(y, label_mode)
        top1 = fit_and_test(
            arch, real, x, y, recipe, eval_seed, device, arch_kwargs, labeler=labeler
        )
        return top1, {}
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
            labeler=labeler,
        )
        return top1, {}
    if sampling != "time_matched":
        raise ValueError(f"unknown sampling {sampling!r}: use fixed, fresh or time_matched")
    plan = plan_time_matched(arch, artifact, ipc, real, recipe, device, arch_kwargs)
    tic = time.perf_counter()
    labels = artifact.class_labels(int(plan["images_per_class"]), real)
    x = artifact.sample(labels, draw_generator(eval_seed, ipc, "time_matched"), device)
    gen_s = time.perf_counter() - tic
    stats: dict[str, float] = {}
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
        "time_matched_images_per_class": plan["images_per_class"],
        "time_matched_epochs": stats["epochs"],
        "time_matched_budget_s": plan["budget_s"],
        "time_matched_seconds": gen_s + stats["seconds"],
    }
