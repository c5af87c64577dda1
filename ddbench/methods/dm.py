"""`dm`: Dataset Condensation with Distribution Matching (Zhao & Bilen, WACV 2023), and the
class-batched mean-matching loss that `datadam` reuses.

The loss of one iteration: a freshly initialised ConvNet psi (`random_net`, so its weights are a
function of job and iteration), for every class c a real batch R_c of `batch_real` images and
the class's synthetic images S_c, both passed through ONE siamese DSA draw of that class (drawn
from the class's own stream, `draw_classes`), and::

    L = sum_c || mean_{x in R_c} psi(x) - mean_{s in S_c} psi(s) ||^2

with psi = `net.embed` (the flattened features the classifier sees); the network's weights are
frozen and the real side carries no gradient.

Workers: the sum over classes is split (`_pixel.distill_pixels`): with W workers each rank builds
the same psi, evaluates the terms of its block of classes and the image gradients are summed, so
the step is the one-worker step whatever W (bit for bit: a class's terms only have gradient in
its own images; BatchNorm networks are the exception, see below).

Batched evaluation (the default). Every class's real batch (of the rank's classes) goes through
the network in one forward and all their synthetic images in another; per-class means come from
one product with an averaging matrix. The DSA draw of each class is applied to its own rows only
(the draws are grouped by family and applied as per-sample values, so a family costs one call).
With a per-sample network (the default ConvNet's "instancenorm" is GroupNorm(C, C): no statistic
crosses samples) this is the same function as the per-class loop of the reference code, computed
with a few large batches instead of 2 x classes small ones; `per_class_loop: true` runs that loop
(for measuring and testing the equality). With a BatchNorm network (`arch: convnet_bn`) the two
differ, as they do in DM's code, whose BatchNorm branch also concatenates all classes; and with
several workers the batched forward's batch statistics span only the rank's classes (as they span
only a chunk with `forward_chunk`), so a BatchNorm matching network is worker-count invariant only
with `per_class_loop: true`.

Cost. The real forward (classes x batch_real images, no gradient) dominates an iteration; batching
removes the per-call overhead of 2 x classes small forwards and backwards, not FLOPs, so the gain is
largest where calls are expensive (GPU kernel launches) and smaller on a CPU (measured in
benchmarks/RESULTS.md). A single forward holds classes x batch_real activations at once (about
3.7 GB peak RSS for CIFAR-10 shapes at batch_real 256); `forward_chunk` bounds that without
changing the loss. Activations are channels-last (`channels_last`), oneDNN's and cuDNN's fast
layout.

Paper vs official code (VICO-UoE/DatasetCondensation, `main_DM.py`), and what ddbench uses:

- iterations 20,000, lr_img 1.0, batch_real 256 per class, init from real images: paper and code
  agree; these are the defaults.
- momentum 0.5 on the image SGD: code (the paper says only "SGD"); default 0.5.
- one random network per iteration shared by all classes (code); the same here.
- DSA: the code seeds `DiffAugment` from the wall clock per class; here each class draws its
  family and values from its own stream of the iteration (`iteration_rng(..., label)`), so runs
  are reproducible, a resumed run continues exactly and the worker count changes nothing.
- the code's real forward keeps no gradient (`.detach()`); here it runs under `torch.no_grad()`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from pydantic import Field

from ddbench.archs import FeatureModel, build_arch
from ddbench.artifact import ImageSet
from ddbench.augment import DSAParams, apply_dsa
from ddbench.context import Context
from ddbench.data import RealData
from ddbench.methods import Method, register_method
from ddbench.methods._pixel import (
    ClassDraws,
    LossFn,
    PixelParams,
    SyntheticSet,
    distill_pixels,
    draw_classes,
    dsa_strategy,
    random_net,
)

# Per-sample statistics of a batch: one [N, D_k] tensor per matched quantity (DM: the embedding;
# DataDAM: one attention vector per intermediate layer, then the embedding).
StatsFn = Callable[[FeatureModel, torch.Tensor], list[torch.Tensor]]


class MeanMatchParams(PixelParams):
    """Parameters shared by the mean-matching methods (`dm`, `datadam`)."""

    arch: str = "convnet"  # registry name of the random embedding network (DM / DataDAM: ConvNet)
    per_class_loop: bool = False  # True = reference per-class forwards (slow; for tests/benchmarks)
    # images per batched forward, 0 = every class in one; a bound on peak memory, same loss
    forward_chunk: int = Field(0, ge=0)
    # NHWC activations: oneDNN's (CPU) and cuDNN's fast layout; the loss only changes by rounding
    channels_last: bool = True


def owners(sizes: Sequence[int]) -> torch.Tensor:
    """Row -> block id for consecutive blocks of `sizes[k]` rows: [0, 0, .., 1, 1, .., k-1]."""
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(list(sizes)))


def augment_classes(
    x: torch.Tensor, sizes: Sequence[int], augs: Sequence[DSAParams | None]
) -> torch.Tensor:
    """Apply class k's DSA draw `augs[k]` to its rows of `x` (classes are consecutive blocks of
    `sizes[k]` rows). Draws of one family are applied together with per-sample values."""
    if all(a is None for a in augs):
        return x
    augs = [DSAParams("none", {}) if a is None else a for a in augs]
    owner = owners(sizes)
    pieces, order = [], []
    for family in dict.fromkeys(a.family for a in augs):
        members = [k for k, a in enumerate(augs) if a.family == family]
        rows = torch.cat([(owner == k).nonzero().flatten() for k in members])
        values = {
            key: torch.cat([augs[k].values[key].reshape(-1).expand(sizes[k]) for k in members])
            for key in augs[members[0]].values
        }
        pieces.append(apply_dsa(x[rows.to(x.device)], DSAParams(family, values)))
        order.append(rows)
    inverse = torch.empty(len(owner), dtype=torch.long)
    inverse[torch.cat(order)] = torch.arange(len(owner))
    return torch.cat(pieces)[inverse.to(x.device)]


def class_means(stat: torch.Tensor, owner: torch.Tensor, num: int) -> torch.Tensor:
    """Mean of the rows of `stat` [N, D] per owner id in 0..num-1 -> [num, D].

    One [num, N] x [N, D] product with an averaging matrix: a dense matmul is much faster than
    `index_add`'s scatter on the CPU and differentiates as simply.
    """
    ids = torch.arange(num, device=owner.device).unsqueeze(1)
    member = (owner.unsqueeze(0) == ids).to(stat.dtype)  # [num, N] one-hot of each row's owner
    return (member / member.sum(1, keepdim=True).clamp_min(1)) @ stat


def _stats_chunked(
    stats_fn: StatsFn, net: FeatureModel, x: torch.Tensor, chunk: int, params: MeanMatchParams
) -> list[torch.Tensor]:
    """`stats_fn` over `x` in one forward (chunk 0) or in chunks of `chunk` images, in float32."""
    device_type = x.device.type
    if params.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    parts = [x] if chunk <= 0 or chunk >= len(x) else list(torch.split(x, chunk))
    outs = []
    for part in parts:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=params.amp):
            outs.append([s.float() for s in stats_fn(net, part)])
    return [torch.cat(col) if len(col) > 1 else col[0] for col in zip(*outs, strict=True)]


def mean_matching_loss(
    net: FeatureModel,
    stats_fn: StatsFn,
    weights: Sequence[float],
    draws: ClassDraws,
    syn: SyntheticSet,
    params: MeanMatchParams,
) -> torch.Tensor:
    """sum_c sum_k weights[k] * || mean_real_c(stat_k) - mean_syn_c(stat_k) ||^2.

    `params.per_class_loop` selects two forwards per class (the reference codes' loop); otherwise
    one forward over every class's real batch and one over all synthetic images.
    """
    if not draws.classes:  # a rank without classes (more workers than classes)
        return syn.images.new_zeros(())
    syn_batches = [syn.of_class(c) for c in draws.classes]
    if params.per_class_loop:
        loss = syn.images.new_zeros(())
        for real_c, syn_c, aug in zip(draws.real, syn_batches, draws.augs, strict=True):
            if aug is not None:
                real_c, syn_c = apply_dsa(real_c, aug), apply_dsa(syn_c, aug)
            with torch.no_grad():
                stats_r = _stats_chunked(stats_fn, net, real_c, 0, params)
            stats_s = _stats_chunked(stats_fn, net, syn_c, 0, params)
            for w, r, s in zip(weights, stats_r, stats_s, strict=True):
                loss = loss + w * (r.mean(0) - s.mean(0)).pow(2).sum()
        return loss
    k = len(draws.classes)
    real_sizes = [len(b) for b in draws.real]
    syn_sizes = [len(b) for b in syn_batches]
    real_x = augment_classes(torch.cat(draws.real), real_sizes, draws.augs)
    syn_x = augment_classes(torch.cat(syn_batches), syn_sizes, draws.augs)
    real_owner, syn_owner = owners(real_sizes).to(real_x.device), owners(syn_sizes).to(syn_x.device)
    with torch.no_grad():
        stats_r = _stats_chunked(stats_fn, net, real_x, params.forward_chunk, params)
    stats_s = _stats_chunked(stats_fn, net, syn_x, params.forward_chunk, params)
    loss = syn.images.new_zeros(())
    for w, r, s in zip(weights, stats_r, stats_s, strict=True):
        diff = class_means(r, real_owner, k) - class_means(s, syn_owner, k)
        loss = loss + w * diff.pow(2).sum()
    return loss


def matching_net(real: RealData, params: MeanMatchParams, ctx: Context, it: int) -> FeatureModel:
    """The iteration's random network (weights frozen: only the images learn)."""

    def build() -> FeatureModel:
        return build_arch(params.arch, real.channels, real.num_classes, real.image_size)

    net = random_net(build, ctx, it)
    net.requires_grad_(False)
    if params.channels_last:
        net.to(memory_format=torch.channels_last)
    return net.train()


def embedding_stats(net: FeatureModel, x: torch.Tensor) -> list[torch.Tensor]:
    """DM's statistic: the embedding before the classifier, [N, feature_dim]."""
    return [net.embed(x)]


class DMParams(MeanMatchParams):
    iterations: int = Field(20000, ge=1)  # outer steps; DM paper and code: 20,000
    lr_img: float = Field(1.0, gt=0)  # SGD step on pixels; DM paper and code: 1.0
    momentum: float = Field(0.5, ge=0, lt=1)  # SGD momentum on pixels; DM code: 0.5
    batch_real: int = Field(256, ge=1)  # real images per class per iteration; DM code: 256


@register_method
class DM(Method):
    name = "dm"
    paper = "Zhao & Bilen, Dataset Condensation with Distribution Matching, WACV 2023"
    version = 2  # 2: class-split data parallelism, per-class draws (new random streams)
    Params = DMParams
    smoke = {"iterations": 5, "batch_real": 32}  # a second on digits: the loop, not the result

    def distill(self, real: RealData, ipc: int, params: DMParams, ctx: Context) -> ImageSet:
        return distill_pixels(
            real, ipc, params, ctx, self.matching_loss(real, params, ctx), self.name
        )

    def matching_loss(self, real: RealData, params: DMParams, ctx: Context) -> LossFn:
        """The loss of iteration `it` summed over `classes`: a pure function of (job, it, classes,
        images)."""
        strategy = dsa_strategy(params, real)

        def loss_fn(syn: SyntheticSet, it: int, classes: Sequence[int]) -> torch.Tensor:
            net = matching_net(real, params, ctx, it)
            draws = draw_classes(real, classes, params.batch_real, strategy, ctx, self.name, it)
            return mean_matching_loss(net, embedding_stats, [1.0], draws, syn, params)

        return loss_fn
