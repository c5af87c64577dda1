"""`latent_diffusion`: a small class-conditional latent diffusion model trained on the dataset.

The prerequisite of `d4m` (its `pretrain` parameters name this job, so the plan runs it once and
every IPC's d4m job reuses it, cached by content hash). D4M starts from Stable Diffusion; no
pre-trained weights can be downloaded here, so this job builds the same kind of model from
diffusers components and trains it on the real train split
(docs/architecture.md#prerequisite-and-reference-jobs: a cached reference job shared by every
method that needs it):

1. an `AutoencoderKL` (`vae_epochs` passes; reconstruction MSE in [-1, 1] pixels + `kl_weight`
   x KL to N(0, I), the LDM objective without its perceptual / adversarial terms), then its
   latents are scaled by 1 / std (Stable Diffusion's `scaling_factor`, measured here);
2. a `UNet2DConditionModel` on the frozen VAE's latents (`unet_epochs` passes; epsilon
   prediction, DDPM with Stable Diffusion's scaled-linear betas over `train_timesteps`). The
   label stands in for the text: `conditioning: cross_attention` (default, SD's mechanism) feeds
   a learned label embedding (class `c` -> one token of `embed_dim`) to the UNet's
   cross-attention; `conditioning: class_embedding` uses an attention-free UNet whose class
   embedding is added to the timestep embedding (ADM-style, ~2.5x faster on a CPU). Either way
   label `classes` is the null class, which replaces the label with probability `cond_drop` so
   classifier-free guidance works (as SD's empty prompt).

The artifact is a `DiffusionModel` (kind `diffusion_model`): the VAE, UNet (and label-embedding)
weights (safetensors) with their diffusers configs and the scheduler config in meta.json.

Evaluated on its own (listed in a suite), it is a plain class-conditional generator: it
`materialise`s IPC images per class from pure noise (DDIM, `SAMPLE_STEPS` steps, guidance
`SAMPLE_GUIDANCE`: D4M's value), drawn with the evaluator's generator. That is D4M without
prototypes, i.e. the `init: random` ablation.

Workers: every rank draws each step's global batch (permutation, VAE posterior noise, diffusion
noise, timesteps, label drops) from the same streams and computes on its rows only, each loss
being its share of the one-worker batch mean; gradients are summed across ranks before each step.
The VAE and UNet normalise with GroupNorm (per sample, no statistic crosses rows), so W workers
train the one-worker model up to floating-point summation order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from ddbench.artifact import ARTIFACT_KINDS, Artifact
from ddbench.context import Context
from ddbench.data import RealData
from ddbench.methods import Method, MethodParams, register_method
from ddbench.methods._diffusion import (
    Conditioning,
    LatentPipeline,
    build_unet,
    build_vae,
    default_unet_channels,
    default_vae_channels,
    from_model_space,
    plain_config,
    to_model_space,
    training_scheduler_config,
)
from ddbench.methods._gan import _seeded, epoch_batches, run_epochs
from ddbench.methods._parallel import row_mean, row_slice, sum_metrics, sync_grads
from ddbench.methods._pixel import iteration_rng

SAMPLE_GUIDANCE = 8.0  # classifier-free guidance when sampling from noise (D4M's value)
SAMPLE_STEPS = 50  # DDIM steps when sampling from noise (Stable Diffusion's default)


class LatentDiffusionParams(MethodParams):
    vae_epochs: int = Field(30, ge=1)  # autoencoder passes over train; converged on digits
    unet_epochs: int = Field(300, ge=1)  # denoiser passes over train; diffusion needs many steps
    batch_size: int = Field(128, ge=1)  # images per step for both stages
    vae_lr: float = Field(1e-3, gt=0)  # Adam step of the autoencoder (small model, short run)
    unet_lr: float = Field(1e-3, gt=0)  # Adam step of the UNet (small model, short run)
    latent_channels: int = Field(4, ge=1)  # Stable Diffusion's 4 latent channels
    vae_channels: list[int] | None = None  # encoder widths; None: by resolution (x2 at 8 px)
    unet_channels: list[int] | None = None  # UNet widths; None: [32, 64] for 4 x 4 latents
    embed_dim: int = Field(64, ge=8)  # label-embedding width = the UNet's cross_attention_dim
    # how the label enters the UNet: a token for SD's cross-attention, or an ADM-style class
    # embedding in an attention-free UNet (~2.5x faster steps on a CPU)
    conditioning: Literal["cross_attention", "class_embedding"] = "cross_attention"
    kl_weight: float = Field(1e-4, ge=0)  # KL to N(0, I): keeps the latent space smooth
    cond_drop: float = Field(0.1, ge=0, lt=1)  # label -> null class (classifier-free guidance)
    train_timesteps: int = Field(1000, ge=10)  # DDPM training steps (Stable Diffusion: 1000)
    checkpoint_every: int = Field(25, ge=1)  # epochs (of both stages) between checkpoints
    execution_fields: ClassVar[frozenset[str]] = frozenset({"checkpoint_every"})  # not in job ids


# seconds on digits: a few passes of each stage (shared by d4m's smoke `pretrain`)
LATENT_DIFFUSION_SMOKE: dict[str, Any] = {
    "vae_epochs": 2,
    "unet_epochs": 2,
    "vae_channels": [16, 32],
    "unet_channels": [16, 32],
    "embed_dim": 16,
}


@ARTIFACT_KINDS.register
@dataclass
class DiffusionModel(Artifact):
    """VAE + UNet + label embedding of `latent_diffusion` (state dicts under `vae.`, `unet.`,
    `label_embedding.`), with `config` = {vae, unet, scheduler (diffusers configs), num_classes,
    image_size, channels}. `artifact_bytes` counts the stored weights."""

    state_dict: dict[str, Tensor]
    config: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    name: ClassVar[str] = "diffusion_model"
    sample_guidance: ClassVar[float] = SAMPLE_GUIDANCE  # when materialising from pure noise
    sample_steps: ClassVar[int] = SAMPLE_STEPS

    def __post_init__(self) -> None:
        self._pipeline: LatentPipeline | None = None

    def tensors(self) -> dict[str, Tensor]:
        return self.state_dict

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], meta: dict[str, Any]) -> DiffusionModel:
        meta = dict(meta)
        return cls(dict(tensors), dict(meta.pop("diffusion_config")), meta)

    def extra_meta(self) -> dict[str, Any]:
        return {"diffusion_config": self.config}

    def _part(self, prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix) :]: v for k, v in self.state_dict.items() if k.startswith(prefix)}

    def pipeline(self, device: str = "cpu") -> LatentPipeline:
        """The model as a `LatentPipeline` on `device` (eval mode), built once and cached."""
        if self._pipeline is not None:
            return self._pipeline.to(device)
        from diffusers import AutoencoderKL, UNet2DConditionModel

        vae = AutoencoderKL.from_config(self.config["vae"])
        vae.load_state_dict(self._part("vae."))
        unet = UNet2DConditionModel.from_config(self.config["unet"])
        unet.load_state_dict(self._part("unet."))
        classes = int(self.config["num_classes"])
        if self.config.get("conditioning", "cross_attention") == "class_embedding":
            states = torch.zeros(classes + 1, 1, int(unet.config.cross_attention_dim))
            conditioning, kind = Conditioning(states, torch.arange(classes + 1)), "class_embedding"
        else:
            table = self._part("label_embedding.")["weight"].float()
            conditioning, kind = Conditioning(table.unsqueeze(1)), "label_embedding"
        pipe = LatentPipeline(vae, unet, dict(self.config["scheduler"]), conditioning, kind)
        self._pipeline = pipe.to(device)
        return self._pipeline

    def materialise(
        self, ipc: int, real: RealData, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """`ipc` images per class of `real`, sampled from pure noise (grouped by class)."""
        labels = torch.tensor([c for c in real.classes for _ in range(ipc)], dtype=torch.long)
        pipe = self.pipeline()
        latents = pipe.denoise(None, labels, generator, self.sample_guidance, self.sample_steps)
        return from_model_space(pipe.decode(latents), real), labels

    def preview(self, real: RealData, generator: torch.Generator) -> tuple[Tensor, Tensor] | None:
        return self.materialise(10, real, generator)


class _Trainer:
    """The two training stages over the real train split (model-space images, on the device)."""

    def __init__(self, real: RealData, params: LatentDiffusionParams, ctx: Context) -> None:
        self.real, self.params, self.ctx = real, params, ctx
        vae_widths = params.vae_channels or default_vae_channels(real.image_size)
        self.latent_size = real.image_size // 2 ** (len(vae_widths) - 1)
        unet_widths = params.unet_channels or default_unet_channels(self.latent_size)
        self.vae = _seeded(
            lambda: build_vae(real.channels, real.image_size, vae_widths, params.latent_channels),
            ctx,
            "init/vae",
        )
        self.class_embedding = params.conditioning == "class_embedding"
        class_embeds = real.num_classes + 1 if self.class_embedding else None
        self.unet = _seeded(
            lambda: build_unet(
                params.latent_channels,
                self.latent_size,
                unet_widths,
                params.embed_dim,
                class_embeds,
            ),
            ctx,
            "init/unet",
        )
        self.embedding: nn.Module | None = None  # the label token of cross-attention
        if not self.class_embedding:
            self.embedding = _seeded(
                lambda: nn.Embedding(real.num_classes + 1, params.embed_dim),
                ctx,
                "init/embedding",
            )
        self.scheduler_config = training_scheduler_config(params.train_timesteps)
        alphas = torch.tensor(_alphas_cumprod(self.scheduler_config), dtype=torch.float32)
        self.alphas_cumprod = alphas.to(ctx.device)
        self.images = to_model_space(real.train_x, real, real.image_size, real.channels)
        self.labels = real.train_y.clone()
        self.opt_vae = torch.optim.Adam(self.vae.parameters(), lr=params.vae_lr)
        unet_params = [*self.unet.parameters(), *self.trainable_embedding()]
        self.opt_unet = torch.optim.Adam(unet_params, lr=params.unet_lr)
        self._posterior: tuple[Tensor, Tensor] | None = None
        self.scaling_factor = 1.0

    def trainable_embedding(self) -> list[nn.Parameter]:
        return [] if self.embedding is None else list(self.embedding.parameters())

    def modules(self) -> dict[str, nn.Module]:
        out = {"vae": self.vae, "unet": self.unet}
        if self.embedding is not None:
            out["embedding"] = self.embedding
        return out

    def vae_epoch(self, epoch: int) -> dict[str, float]:
        self.vae.train()
        rng = iteration_rng(self.ctx, "latent_diffusion/vae", epoch)
        batches = epoch_batches(len(self.images), self.params.batch_size, rng)
        pixels = self.images[0].numel()
        total_rec = total_kl = 0.0
        for idx in batches:
            n, rows = len(idx), row_slice(self.ctx, len(idx))
            x = self.images[idx[rows]].to(self.ctx.device)
            posterior = self.vae.encode(x).latent_dist
            eps = torch.randn((n, *posterior.mean.shape[1:]), generator=rng)[rows]
            z = posterior.mean + posterior.std * eps.to(self.ctx.device)
            rec = self.vae.decode(z).sample
            rec_loss = row_mean((rec - x).square().flatten(1).mean(dim=1), n)  # this rank's share
            kl = row_mean(posterior.kl(), n) / pixels  # per pixel, comparable to the MSE
            loss = rec_loss + self.params.kl_weight * kl
            self.opt_vae.zero_grad(set_to_none=True)
            loss.backward()
            sync_grads(self.vae, self.ctx)
            self.opt_vae.step()
            total_rec += float(rec_loss.detach()) / len(batches)
            total_kl += float(kl.detach()) / len(batches)
        totals = sum_metrics({"rec": total_rec, "kl": total_kl}, self.ctx)
        return {
            "loss": totals["rec"] + self.params.kl_weight * totals["kl"],
            "vae_mse": totals["rec"],
        }

    @torch.no_grad()
    def posterior(self) -> tuple[Tensor, Tensor]:
        """Posterior mean and std of every train image under the (frozen) VAE; also fixes the
        latent scaling factor to 1 / std of the posterior means (Stable Diffusion's rule)."""
        if self._posterior is None:
            self.vae.eval()
            means, stds = [], []
            for start in range(0, len(self.images), 512):
                dist = self.vae.encode(self.images[start : start + 512].to(self.ctx.device))
                means.append(dist.latent_dist.mean.float())
                stds.append(dist.latent_dist.std.float())
            mean, std = torch.cat(means), torch.cat(stds)
            self.scaling_factor = float(1.0 / mean.std().clamp_min(1e-6))
            self.vae.register_to_config(scaling_factor=self.scaling_factor)
            self._posterior = (mean, std)
        return self._posterior

    def unet_epoch(self, epoch: int) -> dict[str, float]:
        mean, std = self.posterior()
        self.unet.train()
        rng = iteration_rng(self.ctx, "latent_diffusion/unet", epoch)
        batches = epoch_batches(len(self.images), self.params.batch_size, rng)
        device, total = self.ctx.device, 0.0
        steps = self.params.train_timesteps
        null = self.real.num_classes
        for idx in batches:
            # the global batch's draws (the one-worker numbers), then this rank's rows
            n = len(idx)
            eps_z = torch.randn((n, *mean.shape[1:]), generator=rng)
            noise = torch.randn(eps_z.shape, generator=rng)
            t = torch.randint(steps, (n,), generator=rng)
            drop = torch.rand(n, generator=rng) < self.params.cond_drop
            rows = row_slice(self.ctx, n)
            idx, eps_z, noise, t, drop = idx[rows], eps_z[rows], noise[rows], t[rows], drop[rows]
            z0 = (mean[idx] + std[idx] * eps_z.to(device)) * self.scaling_factor
            noise, t = noise.to(device), t.to(device)
            labels = torch.where(drop, torch.full_like(self.labels[idx], null), self.labels[idx])
            a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
            zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
            labels = labels.to(device)
            if self.embedding is None:
                states = torch.zeros(len(idx), 1, self.params.embed_dim, device=device)
                pred = self.unet(zt, t, encoder_hidden_states=states, class_labels=labels).sample
            else:
                states = self.embedding(labels).unsqueeze(1)
                pred = self.unet(zt, t, encoder_hidden_states=states).sample
            loss = row_mean((pred - noise).square().flatten(1).mean(dim=1), n)  # rank's share
            self.opt_unet.zero_grad(set_to_none=True)
            loss.backward()
            sync_grads(self.unet, self.ctx)
            if self.embedding is not None:
                sync_grads(self.embedding, self.ctx)
            self.opt_unet.step()
            total += float(loss.detach()) / len(batches)
        total = sum_metrics({"mse": total}, self.ctx)["mse"]
        return {"loss": total, "unet_mse": total}

    def artifact(self, meta: dict[str, Any]) -> DiffusionModel:
        self.posterior()  # fixes the scaling factor even when no UNet epoch ran in this process
        state = {}
        prefixes = {"vae": "vae.", "unet": "unet.", "embedding": "label_embedding."}
        for name, module in self.modules().items():
            for k, v in module.state_dict().items():
                state[prefixes[name] + k] = v.detach().cpu().clone().contiguous()
        config = {
            "vae": plain_config(self.vae.config),
            "unet": plain_config(self.unet.config),
            "scheduler": self.scheduler_config,
            "num_classes": self.real.num_classes,
            "conditioning": self.params.conditioning,
            "image_size": self.real.image_size,
            "channels": self.real.channels,
        }
        return DiffusionModel(state, config, meta)


def _alphas_cumprod(config: dict[str, Any]) -> list[float]:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(config).alphas_cumprod.tolist()


@register_method
class LatentDiffusion(Method):
    """Prerequisite of `d4m`; listed in a suite it is evaluated as a generator (see module)."""

    name = "latent_diffusion"
    paper = "Rombach et al., Latent Diffusion Models, CVPR 2022 (D4M's generator, trained here)"
    version = 2  # 2: row-split data parallelism, no per-rank streams (new random streams)
    Params = LatentDiffusionParams
    smoke = LATENT_DIFFUSION_SMOKE
    ipc_independent = True

    def distill(
        self, real: RealData, ipc: int | None, params: LatentDiffusionParams, ctx: Context
    ) -> DiffusionModel:
        trainer = _Trainer(real, params, ctx)
        tic = time.perf_counter()
        stage_seconds = {"vae": 0.0, "unet": 0.0}
        last: dict[str, float] = {}

        def epoch_fn(epoch: int) -> dict[str, float]:
            start = time.perf_counter()
            if epoch < params.vae_epochs:
                metrics = trainer.vae_epoch(epoch)
                stage_seconds["vae"] += time.perf_counter() - start
            else:
                metrics = trainer.unet_epoch(epoch - params.vae_epochs)
                stage_seconds["unet"] += time.perf_counter() - start
            last.update(metrics)
            return metrics

        run_epochs(
            ctx,
            trainer.modules(),
            {"vae": trainer.opt_vae, "unet": trainer.opt_unet},
            params.vae_epochs + params.unet_epochs,
            epoch_fn,
            params.checkpoint_every,
            self.name,
            images_per_epoch=len(real.train_y),
        )
        meta = {
            "vae_mse": last.get("vae_mse", float("nan")),
            "unet_mse": last.get("unet_mse", float("nan")),
            "scaling_factor": trainer.scaling_factor,
            "vae_seconds": stage_seconds["vae"],
            "unet_seconds": stage_seconds["unet"],
            "train_seconds": time.perf_counter() - tic,
            "latent_shape": [params.latent_channels, trainer.latent_size, trainer.latent_size],
        }
        return trainer.artifact(meta)
