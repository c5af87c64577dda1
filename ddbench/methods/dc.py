"""`dc`: Dataset Condensation with Gradient Matching (Zhao, Mopuri & Bilen, ICLR 2021).

The synthetic images are learned so that, on many randomly initialised ConvNets and along their
training trajectory, the gradient of the cross-entropy on a class's synthetic images matches the
gradient on a batch of that class's real images. Algorithm (DC's official code, `main.py`):

    for each of `iterations` outer iterations:
        net <- a freshly initialised ConvNet
        repeat `outer_loop` times:
            loss = sum over classes c of D(grad_w CE(net(S_c), c), grad_w CE(net(R_c), c))
            one SGD step on the synthetic images S (lr_img 0.1, momentum 0.5)
            unless this was the last repetition: train net on the (detached) synthetic set for
            `inner_loop` epochs (SGD lr_net 0.01, batches of `batch_train`)

`D` is DC's layer-wise distance (`gradient_distance`): for every weight tensor, reshape to
[out, -1] (a conv's [out, in, k, k] becomes one row per output channel, a linear layer keeps one
row per output unit) and sum 1 - cosine similarity over the rows, then sum over layers.

How it sits on the shared pixel loop (`_pixel.distill_pixels`)
--------------------------------------------------------------
`distill_pixels` makes exactly one image update per call of the loss function, so one call is one
DC outer *step*: the shared loop runs `iterations x outer_loop` steps. `_GradientMatcher` keeps the
network across the `outer_loop` consecutive calls of one outer iteration; at the first step of an
iteration it builds the net with `random_net(..., iteration=it // outer_loop)`, and at the other
steps it first runs the inner-loop training that DC does after the previous image update (so the
update after the last step is skipped, as in DC). The user-facing `iterations` and
`checkpoint_every` count DC outer iterations; they are multiplied by `outer_loop` for the shared
loop, so checkpoints fall on outer-iteration boundaries and a resumed job continues exactly as an
uninterrupted one. (Should a checkpoint ever land mid-iteration, the resumed job restarts that
iteration's network from its deterministic initialisation and skips the inner updates it missed.)
The progress metric `iteration` reported by the shared loop counts outer steps (image updates);
the artifact's meta records `iterations` (DC's), `outer_loop`, `inner_loop` and `image_updates`.

Paper / official code vs this implementation
--------------------------------------------
* Loops by IPC: DC's table (outer, inner) = 1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20),
  40: (40, 15), 50: (50, 10); DC refuses other IPCs, here they take the entry of the nearest listed
  IPC (ties: the smaller), and `outer_loop` / `inner_loop` may be set explicitly.
* Distance: DC's `distance_wb`, including its 1e-6 added to the product of norms and returning 0
  for 1-D tensors (biases, norm scales/shifts). Here those 1-D parameters are left out of the
  gradient computation altogether, which gives the same loss and skips useless work.
* Gradients: as DC, the real-batch gradient is detached, the synthetic one is differentiated
  through (`create_graph=True`); the loss is summed (not averaged) over classes.
* Inner loop: DC trains with plain SGD (lr 0.01, no momentum; the optimiser persists across the
  steps of one iteration, which for momentum-free SGD is stateless) for `inner_loop` epochs over the
  shuffled synthetic set in batches of 256. With DSA on, those epochs use per-sample DSA, as DSA's
  code does; DC trains without augmentation.
* Network: ConvNet with DC's "instancenorm" (GroupNorm(C, C)) by default; `net_norm: batchnorm`
  reproduces DC's trick for BN nets (before each matching step, one train-mode forward of 16 real
  images per class sets the running statistics, which are then frozen for the matching).
* Initialisation: DC's code defaults to noise and notes that real and noise initialisations perform
  alike; ddbench's pixel methods start from real samples (`init: real`), which needs far fewer
  iterations. `init: noise` gives DC's default.
* Tiny images (digits, 8 px): there DC's default ConvNet applies GroupNorm(C, C) to 4x4 and 2x2
  maps, and the image gradient of the matching loss is uncorrelated from one random network to the
  next, so the images only drift; distilling with `net_norm: none` (DC's ConvNetNN ablation net)
  works (the measurements: docs/protocols.md#dc-and-dsa; on val, suites/acceptance/
  dc_norm_digits.yaml: 84.8 % against 28.7 % at IPC 1). The digits settings
  (suites/quickstart.yaml) are
  {iterations: 8, outer_loop: 5, inner_loop: 5, batch_real: 32, net_norm: none}, a few seconds
  per IPC on one CPU core; at 32 px the paper's defaults apply unchanged.
* Randomness: every draw (network, inner-loop order and augmentation, BatchNorm-freeze images) is
  a function of (job seed, draw, step), and each class's real batch and siamese DSA draw of
  (job seed, draw, step, class); never the clock (DC seeds its DSA draw from time), never the
  rank.
* Workers: with W data-parallel workers each rank matches only its block of the classes (the loss
  is a sum over classes) and the image gradients are summed, so a step is the one-worker step.
  The network's life (initialisation, inner-loop training on the whole detached synthetic set,
  BatchNorm freeze) runs identically on every rank from the same streams: duplicated, but exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from ddbench.artifact import ImageSet
from ddbench.augment import apply_dsa, dsa
from ddbench.context import Context
from ddbench.data import RealData
from ddbench.methods import Method, register_method
from ddbench.methods._pixel import (
    PixelParams,
    SyntheticSet,
    distill_pixels,
    draw_classes,
    dsa_strategy,
    iteration_rng,
    random_net,
    sample_real,
)
from ddbench.protocols import DATADAM_TABLE_1, published_table

# DC's (outer_loop, inner_loop) per IPC (`get_loops` of the official code).
DC_LOOPS: dict[int, tuple[int, int]] = {
    1: (1, 1),
    10: (10, 50),
    20: (20, 25),
    30: (30, 20),
    40: (40, 15),
    50: (50, 10),
}
COSINE_EPS = 1e-6  # added to the product of gradient norms in DC's distance (avoids 0 / 0)
BN_IMAGES_PER_CLASS = 16  # real images per class that set frozen BatchNorm statistics (DC)


class DCParams(PixelParams):
    """DC's hyper-parameters; the shared pixel-method names keep their meaning."""

    iterations: int = Field(1000, ge=1)  # DC outer iterations, a fresh ConvNet each (paper: 1000)
    lr_img: float = Field(0.1, gt=0)  # SGD step on pixels (DC / DSA: 0.1)
    momentum: float = Field(0.5, ge=0, lt=1)  # SGD momentum on pixels (DC's code: 0.5)
    batch_real: int = Field(256, ge=1)  # real images per class per matching step (DC: 256)
    dsa: bool = False  # DC matches without augmentation; True = siamese DSA (the `dsa` method)
    checkpoint_every: int = Field(50, ge=1)  # outer iterations (not steps) between checkpoints
    outer_loop: int | None = Field(None, ge=1)  # image updates per network; None = DC's table
    # by IPC (1 / 10 / 50 at IPC 1 / 10 / 50)
    inner_loop: int | None = Field(None, ge=1)  # epochs of network training on the synthetic
    # set between image updates; None = DC's table by IPC (1 / 50 / 10 at IPC 1 / 10 / 50)
    lr_net: float = Field(0.01, gt=0)  # SGD (no momentum) step of the inner loop (DC: 0.01)
    batch_train: int = Field(256, ge=1)  # synthetic images per inner-loop batch (DC: 256)
    net_norm: str = "instancenorm"  # ConvNet norm; DC's default is GroupNorm(C, C)

    @field_validator("net_norm")
    @classmethod
    def _known_norm(cls, value: str) -> str:
        from ddbench.archs import NORMS

        if value not in NORMS:
            raise ValueError(f"unknown net_norm {value!r}; allowed: {', '.join(NORMS)}")
        return value


def dc_loops(ipc: int) -> tuple[int, int]:
    """DC's (outer_loop, inner_loop) for `ipc`; unlisted IPCs take the nearest listed entry."""
    if ipc < 1:
        raise ValueError(f"ipc must be >= 1, got {ipc}")
    nearest = min(DC_LOOPS, key=lambda listed: (abs(listed - ipc), listed))
    return DC_LOOPS[nearest]


def resolve_loops(ipc: int, params: DCParams) -> tuple[int, int]:
    """(outer_loop, inner_loop): the explicit params, else DC's table for `ipc`."""
    outer, inner = dc_loops(ipc)
    return params.outer_loop or outer, params.inner_loop or inner


def gradient_distance(
    grads_syn: Sequence[torch.Tensor], grads_real: Sequence[torch.Tensor]
) -> torch.Tensor:
    """DC's layer-wise gradient distance: for each tensor with >= 2 dims, reshaped to [out, -1],
    the sum over rows of 1 - cos(row_syn, row_real); summed over tensors. 1-D tensors (biases,
    norm parameters) count 0, as in DC."""
    if len(grads_syn) != len(grads_real):
        raise ValueError(f"{len(grads_syn)} synthetic vs {len(grads_real)} real gradients")
    total = torch.zeros((), device=grads_syn[0].device) if grads_syn else torch.zeros(())
    for g_syn, g_real in zip(grads_syn, grads_real, strict=True):
        if g_syn.shape != g_real.shape:
            raise ValueError(f"gradient shapes differ: {tuple(g_syn.shape)} vs {g_real.shape}")
        if g_syn.dim() < 2:
            continue
        rows_syn = g_syn.reshape(g_syn.shape[0], -1).float()
        rows_real = g_real.reshape(g_real.shape[0], -1).float()
        dot = (rows_syn * rows_real).sum(dim=1)
        norms = rows_syn.norm(dim=1) * rows_real.norm(dim=1)
        total = total + (1.0 - dot / (norms + COSINE_EPS)).sum()
    return total


class _GradientMatcher:
    """The loss function handed to `distill_pixels`: one call = one DC outer step."""

    def __init__(
        self,
        real: RealData,
        params: DCParams,
        ctx: Context,
        outer_loop: int,
        inner_loop: int,
        strategy: str | None,
    ) -> None:
        self.real, self.params, self.ctx = real, params, ctx
        self.outer_loop, self.inner_loop, self.strategy = outer_loop, inner_loop, strategy
        self.net: torch.nn.Module | None = None
        self.net_iteration = -1  # the DC outer iteration self.net belongs to
        self.opt: torch.optim.Optimizer | None = None
        self.weights: list[torch.nn.Parameter] = []
        self.has_bn = False

    def _build(self) -> torch.nn.Module:
        from ddbench.archs import build_arch

        real = self.real
        return build_arch(
            "convnet", real.channels, real.num_classes, real.image_size, norm=self.params.net_norm
        )

    def _autocast(self) -> torch.autocast:
        device_type = torch.device(self.ctx.device).type
        return torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.params.amp)

    def _new_net(self, iteration: int) -> None:
        self.net = random_net(self._build, self.ctx, iteration, salt="dc_net")
        self.net.train()
        self.net_iteration = iteration
        self.opt = torch.optim.SGD(self.net.parameters(), lr=self.params.lr_net)
        # DC's distance is 0 on 1-D tensors: no need to differentiate with respect to them
        self.weights = [p for p in self.net.parameters() if p.dim() >= 2]
        self.has_bn = any(
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in self.net.modules()
        )

    def _train_net(self, syn: SyntheticSet, step: int) -> None:
        """DC's inner loop: `inner_loop` epochs of SGD on the detached synthetic set."""
        assert self.net is not None and self.opt is not None
        x, y = syn.images.detach(), syn.labels
        gen = iteration_rng(self.ctx, "dc_inner", step)
        batch = self.params.batch_train
        self.net.train()
        for _ in range(self.inner_loop):
            order = torch.randperm(len(x), generator=gen).to(x.device)
            for start in range(0, len(x), batch):
                idx = order[start : start + batch]
                xb = x[idx]
                if self.strategy is not None:  # DSA's code augments the inner epochs per sample
                    xb = dsa(xb, self.strategy, gen)
                with self._autocast():
                    loss = F.cross_entropy(self.net(xb), y[idx])
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()

    @torch.no_grad()
    def _freeze_batchnorm(self, step: int) -> None:
        """DC for BatchNorm nets: set running statistics from real images, then freeze them."""
        assert self.net is not None
        gen = iteration_rng(self.ctx, "dc_bn", step)
        x = torch.cat(
            [
                sample_real(self.real, c, BN_IMAGES_PER_CLASS, gen, self.ctx.device)
                for c in self.real.classes
            ]
        )
        self.net.train()
        self.net(x)
        for module in self.net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()

    def _match(self, syn: SyntheticSet, step: int, classes: Sequence[int]) -> torch.Tensor:
        assert self.net is not None
        device = self.ctx.device
        batch = self.params.batch_real
        draws = draw_classes(self.real, classes, batch, self.strategy, self.ctx, "dc_match", step)
        loss = torch.zeros((), device=device)
        for label, x_real, aug in zip(draws.classes, draws.real, draws.augs, strict=True):
            x_syn = syn.of_class(label)
            if aug is not None:  # one draw, applied to both batches (siamese)
                x_real, x_syn = apply_dsa(x_real, aug), apply_dsa(x_syn, aug)
            y_real = torch.full((len(x_real),), label, dtype=torch.long, device=device)
            y_syn = torch.full((len(x_syn),), label, dtype=torch.long, device=device)
            with self._autocast():
                loss_real = F.cross_entropy(self.net(x_real), y_real)
            grads_real = [g.detach() for g in torch.autograd.grad(loss_real, self.weights)]
            with self._autocast():
                loss_syn = F.cross_entropy(self.net(x_syn), y_syn)
            grads_syn = torch.autograd.grad(loss_syn, self.weights, create_graph=True)
            loss = loss + gradient_distance(grads_syn, grads_real)
        return loss

    def __call__(self, syn: SyntheticSet, step: int, classes: Sequence[int]) -> torch.Tensor:
        """The matching loss of `step` summed over `classes`. The network's life (build, inner
        loop, BatchNorm freeze) does not depend on `classes`: every rank runs it identically."""
        iteration = step // self.outer_loop
        if iteration != self.net_iteration:
            self._new_net(iteration)  # first step of an outer iteration (or a resumed job)
        else:
            self._train_net(syn, step)  # the inner loop after the previous step's image update
        if self.has_bn:
            self._freeze_batchnorm(step)
        return self._match(syn, step, classes)


@register_method
class DC(Method):
    name = "dc"
    paper = "Zhao, Mopuri & Bilen, Dataset Condensation with Gradient Matching, ICLR 2021"
    version = 2  # 2: class-split data parallelism, per-class draws (new random streams)
    Params = DCParams
    # Tiny ImageNet IPC 50 is left out: in that row DC (12.7) falls below its IPC-10 number
    published = (
        *published_table(
            DATADAM_TABLE_1, "cifar10", {1: (28.3, 0.5), 10: (44.9, 0.5), 50: (53.9, 0.5)}
        ),
        *published_table(
            DATADAM_TABLE_1, "cifar100", {1: (12.8, 0.3), 10: (25.2, 0.3), 50: (30.6, 0.6)}
        ),
        *published_table(DATADAM_TABLE_1, "tiny_imagenet", {1: (5.3, 0.1), 10: (12.9, 0.1)}),
    )
    # seconds on digits at any IPC: 2 outer iterations of 2 short steps
    smoke = {"iterations": 2, "outer_loop": 2, "inner_loop": 2, "batch_real": 32}

    def distill(self, real: RealData, ipc: int, params: DCParams, ctx: Context) -> ImageSet:
        outer_loop, inner_loop = resolve_loops(ipc, params)
        strategy = dsa_strategy(params, real)
        steps = params.model_copy(
            update={
                "iterations": params.iterations * outer_loop,
                "checkpoint_every": params.checkpoint_every * outer_loop,
            }
        )
        matcher = _GradientMatcher(real, params, ctx, outer_loop, inner_loop, strategy)
        images = distill_pixels(real, ipc, steps, ctx, matcher, self.name)
        if "resumed_from_iteration" in images.meta:  # shared-loop steps -> outer iterations
            images.meta["resumed_from_iteration"] //= outer_loop
        images.meta.update(
            {
                "iterations": params.iterations,
                "outer_loop": outer_loop,
                "inner_loop": inner_loop,
                "image_updates": steps.iterations,
                "dsa_strategy": strategy,
            }
        )
        return images
