"""Shared machinery of the generator methods (`cgan`, `dim`, `d2m`): what their distillate is.

All three produce a `GeneratorSet` (a class-conditional generator, `ddbench.generators`). This
module holds everything they share, so each method file only states its loss:

- `GeneratorArchParams` / `CGANParams`: parameter names common to the methods (`noise_dim`,
  `width`, `batch_size`, `lr`, ...), so suites and sweeps read the same everywhere;
- `new_generator` / `new_discriminator`: seeded initialisation (identical on every rank, then
  broadcast), `generator_set`: the artifact from a trained generator;
- `gan_step`: one conditional-GAN update (discriminator, then generator with an optional extra
  loss such as DiM's logit matching), non-saturating loss, DiffAugment-style augmentation of the
  discriminator's inputs;
- `ModelPool`: the matching networks (DiM, D2M): an architecture and an initialisation drawn per
  epoch or per iteration, optionally trained on real data between generator steps (`PoolTrainer`);
- `paired_real`: a real batch with exactly the labels of a synthetic batch;
- `run_epochs`: the outer loop every method uses: resume from `ctx.load_checkpoint()`, run
  epochs, NaN check, progress through `ctx.report`, a checkpoint (every module and optimiser +
  the epoch) every `checkpoint_every` epochs through `ctx.save_checkpoint`, BatchNorm statistics
  broadcast from rank 0 at the end.

Determinism and resuming: every random draw of epoch (or iteration) `i` comes from
`iteration_rng(ctx, name, i)` and every pool network from `random_net(..., i)`, so a job resumed
from a checkpoint continues exactly as an uninterrupted one (on the same device). Checkpoints are
taken at epoch boundaries.

Data parallelism (several Ray Train workers), as `ddbench.methods._parallel` describes: no draw
depends on the rank, so every rank draws the global batch of a step (permutation, labels, noise,
DiffAugment values) and the pool networks; each rank computes the losses on its rows of the
batch only, as its share of the one-worker batch mean, the generator's (and discriminator's)
gradients are summed across ranks before each optimiser step, and the generator's BatchNorm
layers normalise with the global batch's statistics (`global_batch_stats`, also applied to the
matching networks). A step of W workers is the one-worker step up to floating-point summation
order. Pool networks and their warm-up training run identically on every rank (the same streams
on the same full batches): duplicated, not split. The losses logged are the sums of the ranks'
shares, i.e. the one-worker values.

Adding a generator method: subclass `Method` with `ipc_independent = True`, build or load a
generator with the helpers here, write an `epoch_fn(epoch) -> metrics` and call `run_epochs`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ddbench.archs import ArchNames
from ddbench.artifact import GeneratorSet
from ddbench.augment import default_strategy, dsa
from ddbench.context import Context
from ddbench.data import RealData
from ddbench.errors import UserError
from ddbench.generators import (
    NOISE_DIM,
    WIDTH,
    build_discriminator,
    build_generator,
    generator_config,
)
from ddbench.methods import MethodParams
from ddbench.methods._parallel import (
    augment_rows,
    global_batch_stats,
    row_mean,
    row_slice,
    sum_metrics,
    sync_grads,
)
from ddbench.methods._pixel import iteration_rng, random_net

ADAM_BETAS = (0.5, 0.999)  # DCGAN's Adam betas for both networks (DiM's WGAN-GP code: (0, 0.9))
GAN_AUGMENT = "color_crop_cutout"  # DiffAugment's policy (colour, translation, cutout) for D
DIM_POOL = ["convnet", "resnet10", "resnet18", "resnet10_ap", "resnet18_ap"]  # DiM's pool
POOL_LR, POOL_MOMENTUM, POOL_WEIGHT_DECAY = 0.01, 0.9, 5e-4  # DC recipe (DiM's eval_lr etc.)


class GeneratorArchParams(MethodParams):
    """The generator's shape: must agree between methods compared 'with the same generator'."""

    noise_dim: int = Field(NOISE_DIM, ge=1)  # length of z (`generators.NOISE_DIM`: DiM's K)
    width: int = Field(WIDTH, ge=1)  # channels of every layer (`generators.WIDTH`: DiM's)


class GanTrainingParams(GeneratorArchParams):
    """How a generator is trained adversarially (`cgan`, and `dim`'s two stages)."""

    batch_size: int = Field(64, ge=1)  # real (and fake) images per step; DiM's B = 64
    lr: float = Field(1e-4, gt=0)  # Adam step of generator and discriminator (DiM: 1e-4)
    gan_augment: bool = True  # DiffAugment on D's inputs; keeps D from memorising small splits
    checkpoint_every: int = Field(10, ge=1)  # epochs between checkpoints (resume points)
    execution_fields: ClassVar[frozenset[str]] = frozenset({"checkpoint_every"})  # not in job ids


class CGANParams(GanTrainingParams):
    """A conditional GAN trained on the real data (the `cgan` method, and `d2m.pretrain`)."""

    epochs: int = Field(120, ge=1)  # passes over the train split; DiM's GAN-only stage N = 120


class PoolParams(MethodParams):
    """The matching networks of DiM / D2M."""

    pool: ArchNames = Field(list(DIM_POOL), min_length=1)  # matching architectures
    dsa: bool = True  # siamese DSA on the real and synthetic batch before the matching network
    dsa_strategy: str | None = None  # None = the dataset's default (no flip for digits / SVHN)


# --------------------------------------------------------------------------- networks


def data_config(real: RealData, noise_dim: int, width: int) -> dict[str, Any]:
    """The generator config for `real` (image shape, label space, normalisation)."""
    if real.zca_state is not None:
        raise UserError(
            "the generator methods (cgan, dim, d2m) do not support ZCA-whitened data: their "
            "generators output normalised pixels; set dataset.params.zca: false"
        )
    return generator_config(
        real.channels,
        real.image_size,
        real.num_classes,
        noise_dim=noise_dim,
        width=width,
        mean=real.mean,
        std=real.std,
    )


def _seeded(build: Callable[[], nn.Module], ctx: Context, name: str) -> nn.Module:
    """Build under a named seed (same on every rank), move to the device, broadcast rank 0's."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.stream_seed(name))
        net = build()
    net = net.to(ctx.device)
    for tensor in [*net.parameters(), *net.buffers()]:
        ctx.broadcast_(tensor.data)
    return net


def new_generator(config: dict[str, Any], ctx: Context) -> nn.Module:
    return _seeded(lambda: build_generator(config), ctx, "init/generator")


def new_discriminator(config: dict[str, Any], ctx: Context) -> nn.Module:
    return _seeded(lambda: build_discriminator(config), ctx, "init/discriminator")


def adam(module: nn.Module, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam(module.parameters(), lr=lr, betas=ADAM_BETAS)


def generator_set(
    generator: nn.Module, config: dict[str, Any], meta: dict[str, Any]
) -> GeneratorSet:
    """The artifact: a CPU copy of the weights and BatchNorm statistics, plus the config."""
    state = {k: v.detach().cpu().clone() for k, v in generator.state_dict().items()}
    return GeneratorSet(state, dict(config), dict(meta))


def noise(n: int, dim: int, rng: torch.Generator, device: str) -> Tensor:
    return torch.randn(n, dim, generator=rng).to(device)


def random_labels(real: RealData, n: int, rng: torch.Generator) -> Tensor:
    """`n` labels drawn uniformly from the classes present in `real`."""
    classes = torch.tensor(real.classes, dtype=torch.long)
    return classes[torch.randint(len(classes), (n,), generator=rng)]


def epoch_batches(n: int, batch_size: int, rng: torch.Generator) -> list[Tensor]:
    """Index batches of one pass over `n` samples (last partial batch dropped, as DiM's loader;
    a split smaller than the batch is one batch)."""
    perm = torch.randperm(n, generator=rng)
    if n <= batch_size:
        return [perm]
    return [perm[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


class ClassIndex:
    """Train-split indices per class, computed once; `paired_real` draws from it."""

    def __init__(self, real: RealData) -> None:
        self.real = real
        self.by_class = {c: real.class_indices(c) for c in real.classes}

    def paired_real(self, labels: Tensor, rng: torch.Generator, device: str) -> Tensor:
        """Real images with exactly `labels` (position by position), drawn at random per class
        without replacement (with replacement only when a class has fewer images than asked)."""
        picked = torch.empty(len(labels), dtype=torch.long)
        for c in labels.unique().tolist():
            where = (labels == c).nonzero().flatten()
            pool = self.by_class[int(c)]
            if len(where) <= len(pool):
                choice = torch.randperm(len(pool), generator=rng)[: len(where)]
            else:
                choice = torch.randint(len(pool), (len(where),), generator=rng)
            picked[where] = pool[choice]
        return self.real.train_x[picked].to(device, non_blocking=True)


# --------------------------------------------------------------------------- GAN step


def gan_step(
    generator: nn.Module,
    discriminator: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    x_real: Tensor,
    labels: Tensor,
    rng: torch.Generator,
    ctx: Context,
    augment: str | None,
    extra_loss: Callable[[Tensor, slice], Tensor] | None = None,
) -> dict[str, float]:
    """One conditional-GAN update with the non-saturating loss (DiM's Eq. 3 / D2M's Eq. 1).

    `x_real` and `labels` are the global batch of n rows (the same on every rank). The noise of
    both fake batches and the per-sample DiffAugment values (`augment`) of the discriminator's
    inputs (real and fake, each its own draw) are drawn from `rng` for all n rows; this rank then
    computes on its rows (`row_slice`) only, each loss being its share of the one-worker batch
    mean, and gradients are summed across ranks before each optimiser step.
    `extra_loss(fake_rows, rows)` (e.g. λ · logit matching) is added to the generator loss: it
    gets this rank's fake images and their slice of the global batch and returns its share.
    Returns this rank's shares of the scalar losses (summed over ranks: the one-worker values).
    """
    n, noise_dim = len(labels), generator.noise_dim
    rows = row_slice(ctx, n)
    x_real, labels = x_real[rows], labels[rows].to(ctx.device)

    def aug(x: Tensor) -> Tensor:
        return augment_rows(x, augment, n, rows, rng) if augment else x

    z = noise(n, noise_dim, rng, ctx.device)[rows]
    with torch.no_grad(), global_batch_stats(ctx, generator):
        fake = generator(z, labels)
    discriminator.requires_grad_(True)
    loss_d = row_mean(F.softplus(-discriminator(aug(x_real), labels)), n) + row_mean(
        F.softplus(discriminator(aug(fake), labels)), n
    )
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    sync_grads(discriminator, ctx)
    opt_d.step()

    discriminator.requires_grad_(False)  # the generator step needs no discriminator gradients
    z = noise(n, noise_dim, rng, ctx.device)[rows]
    with global_batch_stats(ctx, generator):
        fake = generator(z, labels)
    loss_g = row_mean(F.softplus(-discriminator(aug(fake), labels)), n)
    match = extra_loss(fake, rows) if extra_loss is not None else torch.zeros((), device=ctx.device)
    opt_g.zero_grad(set_to_none=True)
    (loss_g + match).backward()
    sync_grads(generator, ctx)
    opt_g.step()
    discriminator.requires_grad_(True)
    return {
        "loss_d": float(loss_d.detach()),
        "loss_g": float(loss_g.detach()),
        "loss_match": float(match.detach()),
    }


def gan_epoch(
    generator: nn.Module,
    discriminator: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    real: RealData,
    params: GanTrainingParams,
    ctx: Context,
    epoch: int,
    extra: Callable[[Tensor, Tensor, torch.Generator], Callable[[Tensor, slice], Tensor]]
    | None = None,
) -> dict[str, float]:
    """One pass over the train split in real batches of `params.batch_size`; the fake batch of
    each step has the real batch's labels. `extra(x_real, labels, rng)` (the global batch) makes
    the step's extra generator loss (DiM's matching, see `gan_step`). Returns mean losses over
    the epoch, summed over ranks; `loss` is the generator's total."""
    rng = iteration_rng(ctx, "gan", epoch)
    augment = GAN_AUGMENT if params.gan_augment else None
    generator.train()
    discriminator.train()
    totals: dict[str, float] = {}
    batches = epoch_batches(len(real.train_y), params.batch_size, rng)
    for idx in batches:
        x_real = real.train_x[idx].to(ctx.device, non_blocking=True)
        labels = real.train_y[idx]
        loss_fn = extra(x_real, labels, rng) if extra is not None else None
        out = gan_step(
            generator, discriminator, opt_g, opt_d, x_real, labels, rng, ctx, augment, loss_fn
        )
        for k, v in out.items():
            totals[k] = totals.get(k, 0.0) + v / len(batches)
    totals = sum_metrics(totals, ctx)
    totals["loss"] = totals["loss_g"] + totals["loss_match"]
    return totals


# --------------------------------------------------------------------------- model pool


class ModelPool:
    """Matching networks: draw `i` picks an architecture of `archs` and a fresh initialisation,
    both functions of (job seed, i, salt) only: every rank draws the same network."""

    def __init__(self, archs: list[str], real: RealData, ctx: Context, salt: str) -> None:
        self.archs, self.real, self.ctx, self.salt = list(archs), real, ctx, salt

    def draw(self, index: int) -> tuple[str, nn.Module]:
        from ddbench.archs import build_arch

        rng = iteration_rng(self.ctx, f"{self.salt}/arch", index)
        arch = self.archs[int(torch.randint(len(self.archs), (1,), generator=rng))]
        real = self.real

        def build() -> nn.Module:
            return build_arch(arch, real.channels, real.num_classes, real.image_size)

        return arch, random_net(build, self.ctx, index, salt=f"{self.salt}/{arch}")


class PoolTrainer:
    """Trains a drawn pool network on real data between generator steps (DiM's 'warm-up':
    its code gives the epoch's network 16 SGD steps on real batches before every generator
    step). DC recipe: SGD lr 0.01, momentum 0.9, weight decay 5e-4, per-sample DSA. With several
    workers every rank runs the same steps on the same batches (not split), from the shared
    stream `rng`, so the ranks' networks stay identical."""

    def __init__(self, net: nn.Module, real: RealData, batch_size: int, strategy: str) -> None:
        self.net, self.real, self.batch_size, self.strategy = net, real, batch_size, strategy
        self.opt = torch.optim.SGD(
            net.parameters(), lr=POOL_LR, momentum=POOL_MOMENTUM, weight_decay=POOL_WEIGHT_DECAY
        )
        net.requires_grad_(False)  # trainable only inside `train`; matching needs no net grads

    def train(self, steps: int, rng: torch.Generator, device: str) -> None:
        if steps <= 0:
            return
        self.net.train().requires_grad_(True)
        n = len(self.real.train_y)
        for _ in range(steps):
            idx = torch.randint(n, (min(self.batch_size, n),), generator=rng)
            x = dsa(self.real.train_x[idx].to(device), self.strategy, rng)
            loss = F.cross_entropy(self.net(x), self.real.train_y[idx].to(device))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.net.requires_grad_(False)


def matching_strategy(params: PoolParams, real: RealData) -> str | None:
    """The siamese DSA strategy of the matching step (None: no augmentation)."""
    if not params.dsa:
        return None
    return params.dsa_strategy or default_strategy(real.name)


# --------------------------------------------------------------------------- outer loop


def run_epochs(
    ctx: Context,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    epochs: int,
    epoch_fn: Callable[[int], dict[str, float]],
    checkpoint_every: int,
    method: str,
    images_per_epoch: int,
) -> dict[str, float]:
    """Run `epoch_fn(epoch)` for the epochs not done yet; checkpoint, report, NaN-check.

    Resumes from `ctx.load_checkpoint()` (module and optimiser states + `epoch`). Returns the
    first and last `loss` of this run (NaN when nothing was left to do)."""
    start = 0
    state = ctx.load_checkpoint()
    if state is not None:
        for name, module in modules.items():
            module.load_state_dict(state[name])
        for name, opt in optimizers.items():
            opt.load_state_dict(state[f"optimizer/{name}"])
        start = int(state["epoch"])
    first = last = float("nan")
    tic = time.perf_counter()
    for epoch in range(start, epochs):
        metrics = epoch_fn(epoch)
        value = float(metrics["loss"])
        if not math.isfinite(value):
            raise FloatingPointError(
                f"{method}: loss became {value} at epoch {epoch}; lower lr or task_balance"
            )
        first = value if math.isnan(first) else first
        last = value
        done = epoch + 1
        seconds = max(1e-9, time.perf_counter() - tic)
        metrics = {
            **metrics,
            "epoch": float(done),
            "images_per_s": (done - start) * images_per_epoch / seconds,
        }
        if done % checkpoint_every == 0 and done < epochs:
            snapshot: dict[str, Any] = {
                name: copy.deepcopy(m.state_dict()) for name, m in modules.items()
            }
            for name, opt in optimizers.items():
                snapshot[f"optimizer/{name}"] = copy.deepcopy(opt.state_dict())
            snapshot["epoch"] = torch.tensor(done)
            ctx.save_checkpoint(snapshot, **metrics)
        else:
            ctx.report(**metrics)
    # ranks hold the same values (summed gradients, global batch statistics); rank 0's copy of
    # the buffers makes them bit-identical, as the runner checks, whatever a device's kernels do
    for module in modules.values():
        for buffer in module.buffers():
            ctx.broadcast_(buffer.data)
    return {"first_loss": first, "last_loss": last}
