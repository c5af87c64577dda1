"""Row-split data parallelism of the batch-trained methods (`cgan`, `dim`, `d2m`,
`latent_diffusion`): one step of W workers is the one-worker step.

The rule every step follows:

1. every rank draws the GLOBAL batch of the step (the one a single worker would use: the same
   permutation, labels, noise and augmentation values) from the same non-rank streams;
2. rank r computes only on its rows `row_slice(ctx, B)` of the batch (`ctx.shard(B)`), and each
   loss term is the rank's SHARE of the one-worker term: a mean over the B rows becomes the sum
   over the rank's rows / B (`row_mean`), so the shares of all ranks add up to the one-worker
   loss;
3. `sync_grads` sums the parameter gradients across ranks before the optimiser step: every rank
   takes the one-worker step (up to floating-point summation order);
4. scalar metrics are shares too; `sum_metrics` adds them up, so every rank logs, and NaN-checks,
   the one-worker values.

A statistic over the whole batch needs a collective inside the forward pass. `all_reduce_sum` is
a differentiable sum across ranks (its backward sums the ranks' gradients, the gradient of the
total loss). `global_batch_stats` uses it so that BatchNorm layers in training mode normalise with
the per-channel mean and variance of the global batch, as one worker would (torch's SyncBatchNorm
does not run on CPU tensors); D2M's class means use it too. Per-sample DiffAugment/DSA values are
drawn for the whole global batch and sliced (`augment_rows`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ddbench.augment import DSAParams, apply_dsa, sample_dsa
from ddbench.context import Context
from ddbench.errors import UserError


def row_slice(ctx: Context, n: int) -> slice:
    """This rank's rows of a global batch of `n` (contiguous, balanced; see `Context.shard`)."""
    if n < ctx.world_size:
        raise UserError(
            f"a batch of {n} rows cannot be split across {ctx.world_size} workers: use a "
            f"batch size of at least the number of workers"
        )
    rows = ctx.shard(n)
    return slice(rows.start, rows.stop)


def row_mean(values: Tensor, n: int) -> Tensor:
    """This rank's share of the mean over the `n` rows of the global batch: the sum of its
    rows' `values` / n (the shares of all ranks add up to the mean)."""
    return values.sum() / n


def augment_rows(
    x: Tensor, strategy: str, n: int, rows: slice, generator: torch.Generator
) -> Tensor:
    """Per-sample DSA of this rank's `rows` `x` of a global batch of `n`: the values are drawn for
    all n rows (the one-worker draw, same stream position on every rank), then sliced."""
    params = sample_dsa(strategy, n, generator)
    return apply_dsa(x, DSAParams(params.family, {k: v[rows] for k, v in params.values.items()}))


def sync_grads(module: nn.Module, ctx: Context) -> None:
    """Sum every parameter's gradient across ranks (no-op with one worker): each rank holds the
    gradient of its share of the loss, the sum is the one-worker gradient."""
    if ctx.world_size > 1:
        for p in module.parameters():
            if p.grad is not None:
                ctx.all_reduce_sum_(p.grad)


def sum_metrics(metrics: dict[str, float], ctx: Context) -> dict[str, float]:
    """Add up the ranks' shares of scalar metrics (one collective; identity with one worker)."""
    if ctx.world_size == 1:
        return dict(metrics)
    keys = list(metrics)  # the same insertion order on every rank
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=ctx.device)
    return dict(zip(keys, ctx.all_reduce_sum_(values).tolist(), strict=True))


class _AllReduceSum(torch.autograd.Function):
    """y = sum over ranks of x. Every rank's loss depends on y, so the gradient of the total
    loss with respect to one rank's x is the sum of the ranks' gradients with respect to y."""

    @staticmethod
    def forward(fn_ctx: Any, tensor: Tensor, ctx: Context) -> Tensor:
        fn_ctx.ddbench_ctx = ctx
        return ctx.all_reduce_sum_(tensor.clone())

    @staticmethod
    def backward(fn_ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return fn_ctx.ddbench_ctx.all_reduce_sum_(grad.clone()), None


def all_reduce_sum(tensor: Tensor, ctx: Context) -> Tensor:
    """The sum of `tensor` over ranks, differentiable (a new tensor; `tensor` itself with one
    worker). Every rank must call it in the same order, forward and backward."""
    if ctx.world_size == 1:
        return tensor
    return _AllReduceSum.apply(tensor, ctx)


def _global_batch_norm(bn: nn.modules.batchnorm._BatchNorm, ctx: Context, x: Tensor) -> Tensor:
    """`bn`'s forward with the statistics of the global batch (rows split across ranks)."""
    if not bn.training:  # running statistics: nothing crosses ranks
        return type(bn).forward(bn, x)
    channels = x.shape[1]
    dims = [0, *range(2, x.dim())]
    shape = [1, channels] + [1] * (x.dim() - 2)
    local_count = x.new_full((1,), x.numel() // channels)
    sums = all_reduce_sum(torch.cat([x.sum(dims), local_count]), ctx)
    count = sums[-1].detach()
    mean = sums[:-1] / count
    centred = x - mean.view(shape)
    var = all_reduce_sum(centred.square().sum(dims), ctx) / count  # biased, as BatchNorm's
    out = centred * torch.rsqrt(var + bn.eps).view(shape)
    if bn.affine:
        out = out * bn.weight.view(shape) + bn.bias.view(shape)
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            m = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            unbiased = var * (count / (count - 1).clamp_min(1))
            bn.running_mean.mul_(1 - m).add_(mean, alpha=m)
            bn.running_var.mul_(1 - m).add_(unbiased, alpha=m)
    return out


@contextmanager
def global_batch_stats(ctx: Context, *modules: nn.Module) -> Iterator[None]:
    """Inside the block, the BatchNorm layers of `modules` in training mode normalise with the
    mean and variance of the global batch (per-channel sums all-reduced, differentiably), so a
    batch split by rows across ranks is normalised, and the running statistics updated, as one
    worker would do it. No-op with one worker; the modules are unchanged after the block."""
    if ctx.world_size == 1:
        yield
        return
    layers = [
        m
        for module in modules
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    for bn in layers:  # an instance attribute shadows the class's forward
        bn.forward = functools.partial(_global_batch_norm, bn, ctx)
    try:
        yield
    finally:
        for bn in layers:
            del bn.forward
