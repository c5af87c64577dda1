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
changing the loss. The forward's memory layout (`channels_last`), whether it is compiled
(`compile`) and whether it runs in blocks of 64 images (`forward_blocks`) are chosen by timing a
matching step of the job's own shapes (`MatchingForward`): on a 2-core CPU, compiling halved DM's
iteration at IPC 10, and blocks, which keep the first layer's activations in cache, made a
compiled iteration about 1.24x faster at IPC 10 and 50 (benchmarks/RESULTS.md).

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

import functools
import time
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from pydantic import Field

from ddbench.archs import FeatureModel, build_arch
from ddbench.artifact import ImageSet
from ddbench.augment import DSAParams, apply_dsa
from ddbench.context import Context
from ddbench.data import RealData
from ddbench.fastpath import (
    MARGIN,
    Switch,
    calibrated,
    compile_allowed,
    compile_worth_trying,
    has_batch_statistics,
    interleaved_seconds,
    median_seconds,
    shape_key,
)
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
from ddbench.protocols import DATADAM_TABLE_1, published_table

# A matching forward's execution path: (channels_last, compiled, blocked).
Path = tuple[bool, bool, bool]
# Per-sample statistics of a batch: one [N, D_k] tensor per matched quantity (DM: the embedding;
# DataDAM: one attention vector per intermediate layer, then the embedding).
StatsFn = Callable[[FeatureModel, torch.Tensor], list[torch.Tensor]]


class MeanMatchParams(PixelParams):
    """Parameters shared by the mean-matching methods (`dm`, `datadam`)."""

    arch: str = "convnet"  # registry name of the random embedding network (DM / DataDAM: ConvNet)
    per_class_loop: bool = False  # True = reference per-class forwards (slow; for tests/benchmarks)
    # images per batched forward, 0 = every class in one; a bound on peak memory, same loss
    forward_chunk: int = Field(0, ge=0)
    # NHWC activations (on / off), or auto: the layout a calibration of this job's forward
    # measures faster (`MatchingForward`); the loss only changes by rounding
    channels_last: Switch = "auto"
    # torch.compile of the matching network's forward, one graph for the whole job (each
    # iteration's new random weights are inputs of it): auto = where the calibration says the
    # compile time pays over the job's iterations (`MatchingForward`)
    compile: Switch = "auto"
    # run each matching forward in blocks of FORWARD_BLOCK_ROWS images, so a block's large
    # first-layer activations stay in cache; only for networks without batch statistics (the
    # result is the same per image): auto = where the calibration measures it faster
    forward_blocks: Switch = "auto"
    execution_fields: ClassVar[frozenset[str]] = frozenset(
        {"checkpoint_every", "channels_last", "compile", "forward_blocks"}
    )  # rounding at most: not in job ids


PAIRED_ROUNDS = 3  # alternating rounds timing a forward whole and in blocks (median of each)
# images per block of a blocked matching forward (`forward_blocks`): the compiled ConvNet-3
# embedding of 2,560 CIFAR-shaped images took 2.97 s in one call, 2.16 s in blocks of 16, 1.97 s
# of 64 and 2.83 s of 256 (Xeon-AMX, 2 threads; benchmarks/RESULTS.md)
FORWARD_BLOCK_ROWS = 64


class MatchingForward:
    """How the iteration's random network computes the matched statistics (`stats_fn(net, x)`):
    memory layout (NCHW or channels-last), eager or compiled, and in one call or in blocks of
    `FORWARD_BLOCK_ROWS` images, chosen once per job.

    Compiling. The network is rebuilt with new random weights every iteration, so the compiled
    function takes the weights as inputs (`torch.func.functional_call` on a copy of the first
    iteration's network): one graph serves every iteration (one per grad mode and batch shape).
    Inductor fuses each block's norm, activation and pooling around the convolutions, which on a
    CPU is a large share of an eager forward's time (benchmarks/RESULTS.md).

    Choosing (`auto`). At the job's first forward, a matching step is timed along each allowed
    path: the real batch's forward without gradient (the bulk of an iteration's work), then the
    synthetic images' forward and the backward to their pixels (`syn_rows` images: a share of
    the work that grows with IPC and that every path speeds up too). The allowed layouts are
    timed eager; where `iterations x` the best eager time is long enough to repay a compile
    (`fastpath.compile_worth_trying`), the compiled variants are timed too, compile time
    included. The path with the least `compile_s + iterations x step_s` is taken, a compiled one
    only when it beats the best eager by the calibration's margin. Then that path is timed in
    blocks (a network without batch statistics only: blocks change no image's result beyond
    rounding) and blocks are taken when they beat it by the margin: on a CPU the first layer's
    activations of thousands of images (1.3 GB for 2,560 CIFAR images) make one call
    memory-bound. Measurements are cached per device model and shape like `ddbench.fastpath`'s,
    so a node calibrates a shape once.

    Workers. The paths round differently (a channels-last convolution is another summation
    order), so the choice must not depend on the worker count. It is made for the job's
    one-worker first forward, `rows` real and `syn_rows` synthetic images (`matching_rows`),
    whatever the rank's shard: a rank with fewer rows times its rows repeated up to those. The
    1-worker and W-worker runs of a job on one node then look up the same cache entry and take
    the same path. (Ranks that calibrate at the same moment on an empty cache measure
    separately and may still disagree; the summed gradient keeps the ranks identical either way,
    only rounding moves.)"""

    def __init__(
        self, stats_fn: StatsFn, params: MeanMatchParams, name: str, rows: tuple[int, int]
    ) -> None:
        self.stats_fn, self.params, self.name = stats_fn, params, name
        # real and synthetic images of the one-worker job's first forwards: the calibrated step
        self.rows, self.syn_rows = rows
        self.path: Path | None = None  # (channels_last, compiled, blocked), once chosen
        self.compiled: dict[bool, Callable[..., list[torch.Tensor]]] = {}

    def __call__(self, net: FeatureModel, x: torch.Tensor) -> list[torch.Tensor]:
        if self.path is None:
            self.path = self._choose(net, x)
        return self._run(self.path, net, x)

    def _run(self, path: Path, net: FeatureModel, x: torch.Tensor) -> list[torch.Tensor]:
        channels_last, compiled, blocked = path
        layout = torch.channels_last if channels_last else torch.contiguous_format
        net.to(memory_format=layout)
        if blocked and len(x) > FORWARD_BLOCK_ROWS:
            parts = [
                self._run((channels_last, compiled, False), net, block)
                for block in torch.split(x, FORWARD_BLOCK_ROWS)
            ]
            return [torch.cat(column) for column in zip(*parts, strict=True)]
        x = x.contiguous(memory_format=layout)
        if not compiled:
            return self.stats_fn(net, x)
        if channels_last not in self.compiled:
            self.compiled[channels_last] = self._compile(net)
        state = {**dict(net.named_parameters()), **dict(net.named_buffers())}
        return self.compiled[channels_last](state, x)

    def _compile(self, net: FeatureModel) -> Callable[..., list[torch.Tensor]]:
        import copy

        template, stats_fn = copy.deepcopy(net), self.stats_fn

        class Stats(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = template

            def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
                return stats_fn(self.net, x)

        wrapper = Stats()

        def run(state: dict[str, torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
            named = {f"net.{key}": value for key, value in state.items()}
            return torch.func.functional_call(wrapper, named, (x,))

        return torch.compile(run)

    def _choose(self, net: FeatureModel, x: torch.Tensor) -> Path:
        allowed = {"auto": [False, True], "on": [True], "off": [False]}
        layouts = allowed[self.params.channels_last]
        compiles = allowed[self.params.compile]
        if not compile_allowed(str(x.device)):
            compiles = [False]
        blocks = allowed[self.params.forward_blocks]
        if has_batch_statistics(net):
            if blocks == [True]:
                raise ValueError(
                    f"forward_blocks: on needs a network without batch statistics; "
                    f"{self.params.arch} has BatchNorm (use forward_chunk to bound memory)"
                )
            blocks = [False]
        if self.rows <= FORWARD_BLOCK_ROWS:  # one block: nothing to split
            blocks = [False]
        if len(layouts) * len(compiles) * len(blocks) == 1:
            return layouts[0], compiles[0], blocks[0]
        device, iterations = str(x.device), self.params.iterations
        shape = (x.shape[1], x.shape[2], x.shape[3])
        key = shape_key(
            self.params.arch, shape, self.rows, device, stats=self.name, syn_rows=self.syn_rows
        )
        if len(x) != self.rows:  # a shard (or chunk) of the one-worker forward: time that
            x = x[torch.arange(self.rows, device=x.device) % len(x)]
        # stand-ins for the synthetic images: their number, with a gradient to the pixels
        syn = x[torch.arange(self.syn_rows, device=x.device) % len(x)].clone().requires_grad_()

        def step(path: Path) -> None:
            """One matching step's network work along `path`: the real forward without
            gradient, the synthetic forward and the backward to the synthetic pixels."""
            with torch.no_grad():
                self._run(path, net, x)
            with torch.enable_grad():
                torch.stack([s.sum() for s in self._run(path, net, syn)]).sum().backward()

        def name(path: Path) -> str:
            blocked = f"_blocks{FORWARD_BLOCK_ROWS}" if path[2] else ""
            return f"{'cl' if path[0] else 'nchw'}_{'compiled' if path[1] else 'eager'}{blocked}"

        def measure(paths: list[Path]) -> dict[str, float]:
            out = {}
            for path in paths:
                self.compiled.pop(path[0], None)  # a compiled path compiles afresh
                tic = time.perf_counter()
                step(path)  # warm-up (and, compiled, the compile of both graphs)
                first = time.perf_counter() - tic
                out[name(path)] = median_seconds(lambda p=path: step(p), device, 2, 0)
                if path[1]:
                    out[f"{name(path)}/compile"] = max(0.0, first - out[name(path)])
            return out

        def measure_pair(whole: Path, blocked: Path) -> dict[str, float]:
            """`whole` (measured above) against `blocked` in alternating rounds, after the
            blocked path's first call (its compile, if compiled): a compiled graph can slow
            down once a second shape makes it dynamic, which must hit both alike."""
            step(whole)  # compiled here if its timing came from the cache
            tic = time.perf_counter()
            step(blocked)
            out = {f"{name(blocked)}/first_call": time.perf_counter() - tic}
            pair = {f"{name(p)}/paired": functools.partial(step, p) for p in (whole, blocked)}
            return out | interleaved_seconds(pair, device, PAIRED_ROUNDS)

        def cost(seconds: dict[str, float], path: Path) -> float:
            return seconds.get(f"{name(path)}/compile", 0.0) + iterations * seconds[name(path)]

        def names(paths: list[Path]) -> list[str]:
            """The measurements `measure(paths)` writes: seconds, and compile time if compiled."""
            out = []
            for path in paths:
                out += [name(path), f"{name(path)}/compile"] if path[1] else [name(path)]
            return out

        first_blocked = blocks == [True]  # `on`: every candidate runs in blocks
        with torch.random.fork_rng(devices=[]):  # measuring draws nothing the job sees
            eager = [(cl, False, first_blocked) for cl in layouts] if False in compiles else []
            seconds = calibrated(key, names(eager), lambda: measure(eager))
            best = min(eager, key=lambda p: cost(seconds, p)) if eager else None
            arch = self.params.arch
            if True in compiles and (
                best is None or compile_worth_trying(arch, device, cost(seconds, best))
            ):
                fast = [(cl, True, first_blocked) for cl in layouts]
                seconds = {**seconds, **calibrated(key, names(fast), lambda: measure(fast))}
                quickest = min(fast, key=lambda p: cost(seconds, p))
                if best is None or cost(seconds, quickest) < cost(seconds, best) * (1 - MARGIN):
                    best = quickest
            assert best is not None
            if len(blocks) == 2:  # auto: the chosen path in blocks, taken where it pays
                blocked = (best[0], best[1], True)
                pair = [f"{name(best)}/paired", f"{name(blocked)}/paired"]
                first = f"{name(blocked)}/first_call"
                seconds = {
                    **seconds,
                    **calibrated(key, [*pair, first], lambda: measure_pair(best, blocked)),
                }
                extra_first_call = max(0.0, seconds[first] - seconds[pair[1]])
                blocked_cost = extra_first_call + iterations * seconds[pair[1]]
                if blocked_cost < iterations * seconds[pair[0]] * (1 - MARGIN):
                    best = blocked
        self.compiled.clear()  # the chosen compiled path recompiles (from inductor's cache)
        return best


def matching_rows(real: RealData, ipc: int, params: MeanMatchParams) -> tuple[int, int]:
    """Real and synthetic images in the first matching forwards of the job run on one worker:
    one class's (`per_class_loop`), else every class's, cut to `forward_chunk`."""
    classes = range(real.num_classes)
    per_class = [min(params.batch_real, len(real.class_indices(c))) for c in classes]
    if params.per_class_loop:
        return per_class[0], ipc
    rows, syn_rows = sum(per_class), ipc * real.num_classes
    if params.forward_chunk > 0:
        return min(rows, params.forward_chunk), min(syn_rows, params.forward_chunk)
    return rows, syn_rows


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
    # Tiny ImageNet IPC 50 is left out: that row of the extracted table is in doubt (see dsa)
    published = (
        *published_table(
            DATADAM_TABLE_1, "cifar10", {1: (26.0, 0.8), 10: (48.9, 0.6), 50: (63.0, 0.4)}
        ),
        *published_table(
            DATADAM_TABLE_1, "cifar100", {1: (11.4, 0.3), 10: (29.7, 0.3), 50: (43.6, 0.4)}
        ),
        *published_table(DATADAM_TABLE_1, "tiny_imagenet", {1: (3.9, 0.2), 10: (12.9, 0.4)}),
    )
    smoke = {"iterations": 5, "batch_real": 32}  # a second on digits: the loop, not the result

    def distill(self, real: RealData, ipc: int, params: DMParams, ctx: Context) -> ImageSet:
        return distill_pixels(
            real, ipc, params, ctx, self.matching_loss(real, ipc, params, ctx), self.name
        )

    def matching_loss(self, real: RealData, ipc: int, params: DMParams, ctx: Context) -> LossFn:
        """The loss of iteration `it` summed over `classes` for a set of `ipc` images per class:
        a pure function of (job, it, classes, images)."""
        strategy = dsa_strategy(params, real)
        rows = matching_rows(real, ipc, params)
        stats = MatchingForward(embedding_stats, params, self.name, rows)

        def loss_fn(syn: SyntheticSet, it: int, classes: Sequence[int]) -> torch.Tensor:
            net = matching_net(real, params, ctx, it)
            draws = draw_classes(real, classes, params.batch_real, strategy, ctx, self.name, it)
            return mean_matching_loss(net, stats, [1.0], draws, syn, params)

        return loss_fn
