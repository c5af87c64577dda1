"""Shared machinery of the pixel-space methods (DC, DSA, DM, DataDAM): the learnable synthetic set.

`SyntheticSet` holds IPC x classes images as one `nn.Parameter` plus fixed labels. A method only
writes its matching loss; `distill_pixels` owns the outer loop:

- initialisation (`init: real | noise | kcenter`), broadcast from rank 0 so ranks start identical;
- SGD on the pixels; with several Ray Train workers each rank draws its own real batches and random
  networks (per-rank streams), and the image gradient is all-reduced (averaged) before the step,
  so every rank applies the same update and the sets stay identical;
- a checkpoint every `checkpoint_every` iterations (images + optimiser + iteration) through the
  Context; a restarted worker resumes there, and because every random draw is a function of
  (stream name, iteration, rank), a resumed run continues exactly as an uninterrupted one would;
- progress (iteration, loss, images/s) through `ctx.report`; a non-finite loss stops the job with
  a clear error.

Randomness per iteration comes from `iteration_rng(ctx, name, it)`; a method needing a fresh random
network per iteration seeds it with `random_net(...)`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field

from ddbench.artifact import ImageSet
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
    amp: bool = False  # bf16 autocast for the networks' forward passes (helps on GPUs)


def iteration_rng(
    ctx: Context, name: str, iteration: int, per_rank: bool = True
) -> torch.Generator:
    """A generator for draw `name` at `iteration`: resumable without saving generator state."""
    return torch.Generator().manual_seed(ctx.stream_seed(f"{name}/{iteration}", per_rank))


def random_net(
    build: Callable[[], torch.nn.Module], ctx: Context, iteration: int, salt: str = "net"
) -> torch.nn.Module:
    """A freshly initialised network whose weights depend only on (job, rank, iteration, salt)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.stream_seed(f"{salt}/{iteration}", per_rank=True))
        net = build()
    return net.to(ctx.device)


def sample_real(
    real: RealData, label: int, n: int, generator: torch.Generator, device: str
) -> torch.Tensor:
    """`n` random real images of class `label` (all of them when the class has fewer)."""
    idx = real.class_indices(label)
    pick = idx[torch.randperm(len(idx), generator=generator)[:n]]
    return real.train_x[pick].to(device, non_blocking=True)


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


LossFn = Callable[[SyntheticSet, int], torch.Tensor]


def distill_pixels(
    real: RealData,
    ipc: int,
    params: PixelParams,
    ctx: Context,
    loss_fn: LossFn,
    method: str,
) -> ImageSet:
    """Optimise a synthetic set by `loss_fn(syn, iteration)` (the outer loop of every pixel
    method); returns the distilled `ImageSet`."""
    syn = SyntheticSet.initialise(real, ipc, params.init, ctx)
    ctx.broadcast_(syn.images.data)
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
        loss = loss_fn(syn, it)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"{method}: matching loss became {value} at iteration {it}; lower lr_img or "
                f"check the data normalisation"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.all_reduce_mean_(syn.images.grad)
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
        },
    )
