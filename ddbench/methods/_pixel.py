"""Shared machinery of the pixel-space methods (DC, DSA, DM, DataDAM): the learnable synthetic set.

`SyntheticSet` holds IPC x classes images as one `nn.Parameter` plus fixed labels. A method only
writes its matching loss, a sum over classes; `distill_pixels` owns the outer loop:

- initialisation (`init: real | noise | kcenter`), broadcast from rank 0 so ranks start identical;
- SGD on the pixels. With W data-parallel workers (Ray Train) the classes are split: rank r
  evaluates the loss only over its block `ctx.shard(len(classes))` of the classes, the image
  gradients of the ranks are summed (`ctx.all_reduce_sum_`) and every rank applies that sum, i.e.
  exactly the one-worker step (up to floating-point summation order). The logged loss is the
  all-reduced total, so every rank takes the same NaN decision; a rank without classes
  (W > classes) contributes zeros and still joins every collective;
- a checkpoint every `checkpoint_every` iterations (images + optimiser + iteration) through the
  Context; a restarted worker resumes there, and because every random draw is a function of
  (job seed, draw name, iteration[, class]), a resumed run continues exactly as an uninterrupted
  one would;
- progress (iteration, loss, images/s) through `ctx.report`; a non-finite loss stops the job with
  a clear error;
- how far the images moved from their initialisation, ||S_T - S_0|| / ||S_0|| over the whole set
  (Frobenius norms), in the artifact's meta as `image_change` (cross_arch writes it as a row), so
  a method whose step barely moves the pixels is visible.

Randomness never depends on the rank (so it does not depend on the number of workers either):
per-iteration draws come from `iteration_rng(ctx, name, it)`, per-class draws from
`iteration_rng(ctx, name, it, label)` (a class gets the same batch whichever rank owns it;
`draw_classes` draws a class's real batch and siamese DSA parameters that way), and a fresh
random network per iteration from `random_net(...)`, the same on every rank.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import Field

from ddbench.artifact import ImageSet
from ddbench.augment import DSAParams, default_strategy, sample_dsa
from ddbench.context import Context
from ddbench.data import RealData
from ddbench.methods import MethodParams


class PixelParams(MethodParams):
    """Parameter names shared by every pixel method, so suites and sweeps read the same."""

    iterations: int = Field(1000, ge=1)  # outer steps on the synthetic images
    lr_img: float = Field(1.0, gt=0)  # SGD step on pixels (DM / DataDAM: 1.0; DC: 0.1)
    momentum: float = Field(0.5, ge=0, lt=1)  # SGD momentum on pixels (DM's code: 0.5)
    batch_real: int = Field(256, ge=1)  # real images per class per step (DataDAM paper: 256)
    init: Literal["real", "noise", "kcenter"] = "real"  # start from real samples (all papers)
    dsa: bool = True  # siamese DSA on real and synthetic batches during matching
    dsa_strategy: str | None = None  # None = the dataset's default (no flip for digits / SVHN)
    checkpoint_every: int = Field(200, ge=1)  # iterations between checkpoints (resume points)
    execution_fields: ClassVar[frozenset[str]] = frozenset({"checkpoint_every"})  # not in job ids
    amp: bool = False  # bf16 autocast for the networks' forward passes (helps on GPUs)


def iteration_rng(
    ctx: Context, name: str, iteration: int, label: int | None = None
) -> torch.Generator:
    """A generator for draw `name` at `iteration` (of class `label`, for a per-class draw): the
    same on every rank, and resumable without saving generator state."""
    key = f"{name}/{iteration}" if label is None else f"{name}/{iteration}/class{label}"
    return torch.Generator().manual_seed(ctx.stream_seed(key))


def random_net(
    build: Callable[[], torch.nn.Module], ctx: Context, iteration: int, salt: str = "net"
) -> torch.nn.Module:
    """A freshly initialised network whose weights depend only on (job, iteration, salt): every
    rank builds the same one."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.stream_seed(f"{salt}/{iteration}"))
        net = build()
    return net.to(ctx.device)


def sample_real(
    real: RealData, label: int, n: int, generator: torch.Generator, device: str
) -> torch.Tensor:
    """`n` random real images of class `label` (all of them when the class has fewer)."""
    idx = real.class_indices(label)
    pick = idx[torch.randperm(len(idx), generator=generator)[:n]]
    return real.train_x[pick].to(device, non_blocking=True)


def dsa_strategy(params: PixelParams, real: RealData) -> str | None:
    """The siamese DSA strategy of matching (None: no augmentation)."""
    return (params.dsa_strategy or default_strategy(real.name)) if params.dsa else None


@dataclass
class ClassDraws:
    """One iteration's random draws: per class (in `classes` order) a real batch and the siamese
    DSA parameters (None without DSA)."""

    classes: list[int]
    real: list[torch.Tensor]
    augs: list[DSAParams | None]


def draw_classes(
    real: RealData,
    classes: Sequence[int],
    batch_real: int,
    strategy: str | None,
    ctx: Context,
    name: str,
    iteration: int,
) -> ClassDraws:
    """Each of `classes`' real batch (`batch_real` images) and siamese DSA draw for `iteration`.

    A class draws from its own generator `iteration_rng(ctx, name, iteration, label)`, real
    indices first, then the DSA parameters: the numbers do not depend on which rank owns the
    class, nor on the other classes, so the batched and per-class paths, any split of the
    classes across workers, and a resumed run see exactly the same draws.
    """
    batches, augs = [], []
    for label in classes:
        gen = iteration_rng(ctx, name, iteration, label)
        batches.append(sample_real(real, label, batch_real, gen, ctx.device))
        augs.append(sample_dsa(strategy, 1, gen) if strategy is not None else None)
    return ClassDraws(list(classes), batches, augs)


class SyntheticSet(torch.nn.Module):
    """IPC images per class as one learnable tensor; rows are grouped by class."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, ipc: int) -> None:
        super().__init__()
        self.images = torch.nn.Parameter(images)
        self.register_buffer("labels", labels)
        self.ipc = ipc

    @property
    def classes(self) -> list[int]:
        return sorted(set(self.labels.tolist()))

    def of_class(self, label: int) -> torch.Tensor:
        return self.images[self.labels == label]

    @classmethod
    def initialise(cls, real: RealData, ipc: int, init: str, ctx: Context) -> SyntheticSet:
        """Real samples, Gaussian noise (in normalised space) or per-class k-center picks."""
        gen = ctx.rng("init")
        labels = torch.tensor([c for c in real.classes for _ in range(ipc)], dtype=torch.long)
        shape = (len(labels), real.channels, real.image_size, real.image_size)
        if init == "noise":
            images = torch.randn(shape, generator=gen)
        elif init == "real":
            images = torch.cat([sample_real(real, c, ipc, gen, "cpu") for c in real.classes])
            if len(images) != len(labels):
                raise ValueError(f"a class of {real.name} has fewer than ipc={ipc} images")
        elif init == "kcenter":
            from ddbench.methods._coreset import (
                EmbeddingParams,
                embed_train,
                kcenter_greedy,
                select_per_class,
            )

            features = embed_train(real, EmbeddingParams(), ctx)
            images = select_per_class(real, ipc, features, kcenter_greedy).images
        else:
            raise ValueError(f"unknown init {init!r}: use real, noise or kcenter")
        return cls(images.clone().float(), labels, ipc).to(ctx.device)


# loss_fn(syn, iteration, classes): the matching loss of `iteration` summed over `classes` only
LossFn = Callable[[SyntheticSet, int, Sequence[int]], torch.Tensor]


def distill_pixels(
    real: RealData,
    ipc: int,
    params: PixelParams,
    ctx: Context,
    loss_fn: LossFn,
    method: str,
) -> ImageSet:
    """Optimise a synthetic set by `loss_fn(syn, iteration, classes)` (the outer loop of every
    pixel method), this rank's `classes` being its shard of the classes; returns the distilled
    `ImageSet`."""
    classes = [real.classes[i] for i in ctx.shard(len(real.classes))]
    syn = SyntheticSet.initialise(real, ipc, params.init, ctx)
    ctx.broadcast_(syn.images.data)
    initial = syn.images.detach().clone()  # S_0: a resumed run rebuilds the same from its seed
    opt = torch.optim.SGD([syn.images], lr=params.lr_img, momentum=params.momentum)
    start = 0
    state = ctx.load_checkpoint()
    if state is not None:
        syn.images.data.copy_(state["images"].to(ctx.device))
        opt.load_state_dict(state["optimizer"])
        start = int(state["iteration"])
    first_loss = last_loss = float("nan")
    tic = time.perf_counter()
    for it in range(start, params.iterations):
        loss = loss_fn(syn, it, classes)
        value = float(ctx.all_reduce_sum_(loss.detach().float().reshape(1).clone()))
        if not math.isfinite(value):
            raise FloatingPointError(
                f"{method}: matching loss became {value} at iteration {it}; lower lr_img or "
                f"check the data normalisation"
            )
        syn.images.grad = torch.zeros_like(syn.images)  # also for a rank without classes
        if loss.requires_grad:
            loss.backward()
        ctx.all_reduce_sum_(syn.images.grad)  # the ranks' classes together: the one-worker step
        opt.step()
        first_loss = value if math.isnan(first_loss) else first_loss
        last_loss = value
        done = it + 1
        rate = (done - start) * len(syn.labels) / max(1e-9, time.perf_counter() - tic)
        metrics = {"iteration": float(done), "loss": value, "images_per_s": rate}
        if done % params.checkpoint_every == 0 and done < params.iterations:
            state = {
                "images": syn.images.detach().cpu(),
                "optimizer": opt.state_dict(),
                "iteration": torch.tensor(done),
            }
            ctx.save_checkpoint(state, **metrics)
        else:
            ctx.report(**metrics)
    return ImageSet(
        syn.images.detach().cpu(),
        syn.labels.cpu(),
        {
            "first_loss": first_loss,
            "last_loss": last_loss,
            "iterations": params.iterations,
            "resumed_from_iteration": start,
            "image_change": float(
                (syn.images.detach() - initial).norm() / initial.norm().clamp_min(1e-12)
            ),
        },
    )
