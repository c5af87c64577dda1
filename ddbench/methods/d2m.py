"""`d2m`: Data-to-Model Distillation (Sajedi et al., ECCV 2024) — first public implementation.

No reference code exists; this follows the paper (docs/protocols.md#d2m). D2M refines a
*pre-trained* class-conditional generator G so its images train classifiers better:

1. Start from a generator: the `cgan` job of the same data and seed (its parameters are
   `pretrain`, so the plan shares the job with a suite's own `cgan` entry), or a local checkpoint
   `generator: PATH` (a ddbench generator artifact folder, or weights + JSON config; see
   `ddbench.generators` for the formats and for BigGAN, which is not supported as such). The
   paper's default is BigGAN; its CGAN ablation (Tab. 7) is what runs by default here.
2. Every iteration: B = `batch_size` (z, y) pairs with y uniform over the classes -> G -> synthetic
   batch; a real batch with the same labels (position by position); one network from the model
   pool (an architecture of `pool` and a fresh random initialisation, "different initialisations
   from a model pool"); the same DSA draw on both batches (the paper applies DSA in distillation).
3. `L_emb` = Σ over the network's intermediate layers of MSE between class-wise means of the
   *channel attention* vectors of real and synthetic images + MSE between class-wise means of the
   last-layer features (the embedding the classifier sees);
   `L_pred` = KL(softmax(z_real / τ) ‖ softmax(z_syn / τ)) over the label-aligned pairs;
   `L = L_emb + λ · L_pred` with λ = `task_balance` = 100 and τ = `temperature` = 4 (paper).
4. 60 epochs (paper), an epoch being len(train) // B iterations; only G is updated (no
   discriminator: the paper's default; its appendix finds a small discriminator loss optional).

Choices the paper leaves open, as implemented here (all documented in the report). Measured on
val on digits (suites/acceptance/d2m_digits.yaml, one distill seed, table in
benchmarks/RESULTS.md): Adam at 1e-4 refines the cgan by about 20 points where SGD at the text's
1e-6 (or 1e-4) and Adam at 1e-6 leave it where it started, so Adam 1e-4 is the default on val;
λ 1 vs 100 and random vs trained pool networks stay within a point (L_pred of near-uniform τ = 4
predictions is about 1e-5 against L_emb's 8e-4: λ = 100 balances them), so the paper's λ and
random pool stay.

- channel attention of a map A [N, C, H, W]: `mean_{H,W} |A|^p` per channel, p =
  `attention_power` = 4 (DataDAM's power; same authors), L2-normalised over channels; layers are
  every intermediate map of `forward_features` (all but the last); the last map's information
  enters through the final-feature term;
- statistics are matched per class (means over the batch's samples of each class, as DataDAM
  does), the prediction KL per label-aligned pair (batch mean), without the τ² factor of
  knowledge distillation; MSE is the mean over elements;
- optimiser: Adam (the paper's hyper-parameter table; its text also says SGD with lr 1e-6:
  `optimizer: sgd`, momentum 0.9), lr `lr` = 1e-4 (the paper's table omits the value; 1e-4 is
  the pre-training lr), betas (0.5, 0.999);
- pool: ConvNet of the resolution's depth and ResNet-18 (the paper's ResNet-32 is not a ddbench
  architecture); networks stay at their random initialisation by default (`pool_train_steps: 0`;
  k > 0 trains each drawn network k SGD steps on real batches first, as DiM's code does);
- the generator trains in train mode (BatchNorm batch statistics) and samples in eval mode.

Workers: every rank draws the iteration's global batch (labels, paired real images, noise, pool
network, siamese DSA draw) and computes on its rows only; the class means of L_emb sum the ranks'
per-class sums (differentiably, `_parallel.all_reduce_sum`), L_pred is each rank's share of the
batch mean, the generator's BatchNorm layers (and the pool network's, if any) use the global
batch's statistics, and gradients are summed: the one-worker step up to floating-point summation
order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from ddbench.artifact import META_FILE, GeneratorSet, artifact_exists, load_artifact
from ddbench.augment import default_strategy, dsa_siamese
from ddbench.context import Context
from ddbench.data import RealData
from ddbench.errors import UserError
from ddbench.generators import (
    ConditionalGenerator,
    GeneratorCheckpointError,
    generator_from_state,
    load_generator_checkpoint,
)
from ddbench.methods import Method, register_method
from ddbench.methods._gan import (
    CGANParams,
    ClassIndex,
    ModelPool,
    PoolParams,
    PoolTrainer,
    adam,
    data_config,
    generator_set,
    matching_strategy,
    noise,
    random_labels,
    run_epochs,
)
from ddbench.methods._parallel import (
    all_reduce_sum,
    global_batch_stats,
    row_mean,
    row_slice,
    sum_metrics,
    sync_grads,
)
from ddbench.methods._pixel import iteration_rng
from ddbench.methods.cgan import CGAN_SMOKE

D2M_POOL = ["convnet", "resnet18"]  # the paper's pool: ConvNet-D(resolution) and ResNet-18/32
GENERATOR_SGD_MOMENTUM = 0.9  # `optimizer: sgd`: the momentum of the paper's network optimiser


class D2MParams(PoolParams):
    epochs: int = Field(60, ge=1)  # refinement epochs (paper: 60); len(train) // B steps each
    task_balance: float = Field(100.0, ge=0)  # λ on L_pred (paper: 100, Fig. 6c)
    temperature: float = Field(4.0, gt=0)  # τ softening both predictions (paper: 4, Fig. 6a)
    batch_size: int = Field(128, ge=1)  # B (z, y) pairs and real images per step (paper: 128)
    generator: str | None = None  # local checkpoint to start from; None = the `pretrain` cgan job
    pretrain: CGANParams = CGANParams()  # that cgan job's params (the plan's key)
    lr: float = Field(1e-4, gt=0)  # Adam step on the generator (paper's table: Adam, lr omitted)
    # the generator's optimiser: Adam (the paper's hyper-parameter table) or SGD with momentum
    # GENERATOR_SGD_MOMENTUM (the paper's text: "SGD ... learning rate of 1e-6", no momentum given)
    optimizer: Literal["adam", "sgd"] = "adam"
    # SGD steps (DC recipe, per-sample DSA) each iteration's pool network takes on real batches
    # before it serves; 0 = random initialisations, as the paper's "model pool" reads
    pool_train_steps: int = Field(0, ge=0)
    attention_power: float = Field(4.0, gt=0)  # p in mean |A|^p (DataDAM's value)
    pool: list[str] = Field(list(D2M_POOL), min_length=1)  # matching architectures
    checkpoint_every: int = Field(10, ge=1)  # epochs between checkpoints (resume points)
    execution_fields: ClassVar[frozenset[str]] = frozenset({"checkpoint_every"})  # not in job ids
    # their defaults are what d2m computed before they existed: those job ids stay
    added_fields: ClassVar[frozenset[str]] = frozenset({"optimizer", "pool_train_steps"})


def channel_attention(feature_map: Tensor, power: float) -> Tensor:
    """[N, C, H, W] -> [N, C]: mean over space of |A|^p per channel, L2-normalised over C."""
    return F.normalize(feature_map.abs().pow(power).mean(dim=(2, 3)), dim=1)


def class_means(x: Tensor, labels: Tensor, counts: Tensor, ctx: Context) -> Tensor:
    """Per class present in the global batch (sorted), the mean of its rows over the whole
    global batch. `x` and `labels` are this rank's rows, `counts` [num_classes] the global
    batch's class counts; the per-class sums are summed across ranks (differentiably)."""
    onehot = F.one_hot(labels, len(counts)).to(x.dtype).T  # [num_classes, rows]
    sums = all_reduce_sum(onehot @ x.flatten(1), ctx)
    present = counts > 0
    return sums[present] / counts[present].unsqueeze(1).to(x.dtype)


def embedding_loss(
    real_out: tuple[list[Tensor], Tensor, Tensor],
    syn_out: tuple[list[Tensor], Tensor, Tensor],
    labels: Tensor,
    counts: Tensor,
    power: float,
    ctx: Context,
) -> Tensor:
    """L_emb: class-mean channel attention over intermediate layers + final features (MSE), of
    the global batch (the same value on every rank; see `class_means`)."""
    maps_r, emb_r, _ = real_out
    maps_s, emb_s, _ = syn_out

    def means(x: Tensor) -> Tensor:
        return class_means(x, labels, counts, ctx)

    loss = F.mse_loss(means(emb_s), means(emb_r))
    for a_r, a_s in zip(maps_r[:-1], maps_s[:-1], strict=True):
        att_r = means(channel_attention(a_r, power))
        att_s = means(channel_attention(a_s, power))
        loss = loss + F.mse_loss(att_s, att_r)
    return loss


def prediction_loss(logits_real: Tensor, logits_syn: Tensor, temperature: float, n: int) -> Tensor:
    """This rank's share of L_pred: KL(softmax(z_real/τ) ‖ softmax(z_syn/τ)) averaged over the
    `n` aligned pairs of the global batch (`logits_*` are this rank's rows)."""
    kl = F.kl_div(
        F.log_softmax(logits_syn / temperature, dim=1),
        F.log_softmax(logits_real / temperature, dim=1),
        reduction="none",
        log_target=True,
    )
    return row_mean(kl.sum(dim=1), n)


def load_start(
    source: str | Path, config: dict[str, Any]
) -> tuple[ConditionalGenerator, dict[str, Any]]:
    """The generator d2m starts from and its complete config: a `GeneratorSet` artifact
    directory, or a weights file with its JSON config (`ddbench.generators`' module docstring).
    `config` holds what the dataset imposes (channels, image size, classes, mean / std)."""
    path = Path(source).expanduser()
    if not path.is_dir():
        return load_generator_checkpoint(path, config)
    if not artifact_exists(path):
        raise GeneratorCheckpointError(
            f"{path} is a folder but not a ddbench generator artifact (no {META_FILE}); pass a "
            f"weights file with a JSON config beside it instead"
        )
    try:
        artifact = load_artifact(path)
    except (OSError, ValueError) as exc:  # a missing tensor file, bad JSON, an unknown kind
        raise GeneratorCheckpointError(f"cannot read artifact {path}: {exc}") from None
    if not isinstance(artifact, GeneratorSet):
        raise GeneratorCheckpointError(
            f"{path} holds a {artifact.name!r} artifact, not a {GeneratorSet.name}"
        )
    return generator_from_state(artifact.state_dict, artifact.config, config, path)


@register_method
class D2M(Method):
    name = "d2m"
    paper = "Sajedi et al., Data-to-Model Distillation (D2M), ECCV 2024"
    version = 2  # 2: row-split data parallelism, no per-rank streams (new random streams)
    Params = D2MParams
    # appendix B: images generated once within the time of training on IPC images
    paper_protocol = {"sampling": "time_matched"}
    # seconds on digits: one epoch on the smoke cgan (the same params as cgan's smoke: shared)
    smoke = {"epochs": 1, "batch_size": 256, "pool": ["convnet"], "pretrain": dict(CGAN_SMOKE)}
    ipc_independent = True

    def dependencies(self, params: D2MParams) -> dict[str, tuple[str, dict[str, Any]]]:
        if params.generator:
            return {}
        return {"generator": ("cgan", params.pretrain.model_dump(mode="json"))}

    def _start(self, real: RealData, params: D2MParams, ctx: Context) -> tuple[Any, dict]:
        config = data_config(real, params.pretrain.noise_dim, params.pretrain.width)
        expected = {k: config[k] for k in ("channels", "image_size", "num_classes", "mean", "std")}
        if params.generator:
            source = params.generator
        elif "generator" in ctx.dependencies:
            source = ctx.dependencies["generator"]
        else:
            raise UserError(
                "d2m needs a pre-trained generator: run it through a suite (the plan adds the "
                "cgan job) or set params.generator to a local checkpoint"
            )
        generator, config = load_start(source, expected)
        generator = generator.to(ctx.device)
        for tensor in [*generator.parameters(), *generator.buffers()]:
            ctx.broadcast_(tensor.data)
        return generator, config

    def distill(
        self, real: RealData, ipc: int | None, params: D2MParams, ctx: Context
    ) -> GeneratorSet:
        generator, config = self._start(real, params, ctx)
        opt: torch.optim.Optimizer = adam(generator, params.lr)
        if params.optimizer == "sgd":
            opt = torch.optim.SGD(
                generator.parameters(), lr=params.lr, momentum=GENERATOR_SGD_MOMENTUM
            )
        pool = ModelPool(params.pool, real, ctx, salt="d2m/pool")
        strategy = matching_strategy(params, real)
        pool_strategy = params.dsa_strategy or default_strategy(real.name)
        index = ClassIndex(real)
        batch = params.batch_size
        iters = max(1, len(real.train_y) // batch)

        def step(it: int) -> dict[str, float]:
            """One generator update on this rank's rows of the iteration's global batch; returns
            this rank's shares of the losses."""
            rng = iteration_rng(ctx, "d2m", it)
            labels = random_labels(real, batch, rng)
            x_real = index.paired_real(labels, rng, ctx.device)
            z = noise(batch, generator.noise_dim, rng, ctx.device)
            counts = torch.bincount(labels, minlength=real.num_classes).to(ctx.device)
            rows = row_slice(ctx, batch)
            labels = labels[rows].to(ctx.device)
            with global_batch_stats(ctx, generator):
                fake = generator(z[rows], labels)
            _, net = pool.draw(it)
            # every rank trains it the same way, from the shared stream (PoolTrainer)
            PoolTrainer(net, real, batch, pool_strategy).train(
                params.pool_train_steps, rng, ctx.device
            )
            net.requires_grad_(False)  # only the generator learns from the matching
            xr, xs = x_real[rows], fake
            if strategy is not None:
                xr, xs = dsa_siamese([xr, xs], strategy, rng)
            with global_batch_stats(ctx, net):
                with torch.no_grad():
                    real_out = net.forward_features(xr)
                syn_out = net.forward_features(xs)
            # L_emb is a function of global class means, computed whole on every rank: each
            # rank's share is 1 / W of it
            l_emb = embedding_loss(real_out, syn_out, labels, counts, params.attention_power, ctx)
            l_emb = l_emb / ctx.world_size
            l_pred = prediction_loss(real_out[2], syn_out[2], params.temperature, batch)
            loss = l_emb + params.task_balance * l_pred
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sync_grads(generator, ctx)
            opt.step()
            return {
                "loss": float(loss.detach()),
                "loss_emb": float(l_emb.detach()),
                "loss_pred": float(l_pred.detach()),
            }

        def epoch_fn(epoch: int) -> dict[str, float]:
            generator.train()
            totals: dict[str, float] = {}
            for j in range(iters):
                for k, v in step(epoch * iters + j).items():
                    totals[k] = totals.get(k, 0.0) + v / iters
            return sum_metrics(totals, ctx)

        losses = run_epochs(
            ctx,
            {"generator": generator},
            {"generator": opt},
            params.epochs,
            epoch_fn,
            params.checkpoint_every,
            self.name,
            images_per_epoch=iters * batch,
        )
        meta = {**losses, "epochs": params.epochs, "start": params.generator or "cgan"}
        return generator_set(generator, config, meta)
