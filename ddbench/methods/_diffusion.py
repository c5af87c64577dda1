"""Latent-diffusion machinery shared by `latent_diffusion` and `d4m`, built from diffusers parts.

What lives here
---------------
* `LatentPipeline`: an `AutoencoderKL` (the latent space), a `UNet2DConditionModel` (the
  denoiser), a scheduler config (DDPM for training, DDIM for sampling) and a `Conditioning`
  table (one row of UNet conditioning per class, plus a last "null" row for classifier-free
  guidance). `encode` / `decode` map model-space images ([-1, 1] at the model's resolution)
  to scaled latents and back; `denoise` runs DDIM from noised latents (img2img, `strength`) or
  from pure noise, with classifier-free guidance. Written here rather than with diffusers'
  `StableDiffusionImg2ImgPipeline`, which requires a CLIP text encoder (`transformers`).
* `to_model_space` / `from_model_space`: a dataset's normalised tensors <-> model-space images
  (pixels, channel count and resolution adapted; ZCA undone and redone).
* Builders of the small VAE / UNet the embedded default trains (`build_vae`, `build_unet`), the
  training scheduler (`training_scheduler_config`: Stable Diffusion's scaled-linear betas).
* `load_pretrained(path, real, prompt)`: a Stable-Diffusion-format directory on disk (subfolders
  `vae/`, `unet/`, `scheduler/`, optionally `tokenizer/` + `text_encoder/`), loaded offline
  (`local_files_only=True`). Conditioning, in order of preference:
  1. `tokenizer/` + `text_encoder/`: the class-name text, `prompt.format(class_name)` (needs the
     `transformers` package, the `sd` extra; the null row is the empty prompt, as in Stable
     Diffusion);
  2. a class-conditional UNet (`num_class_embeds >= classes + 1`): class id `c` for class `c`,
     id `classes` as the null class; `encoder_hidden_states` are zeros.
  Anything else (missing folders, unreadable configs, a text encoder without `transformers`, an
  unconditional UNet) raises `UserError` naming the path and what was expected.

diffusers is imported inside functions only (`import ddbench` stays fast). To support another
conditioning source, build its `Conditioning` table and hand it to `LatentPipeline`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ddbench.errors import UserError

if TYPE_CHECKING:
    from ddbench.data import RealData

SD_SUBFOLDERS = {"vae": "config.json", "unet": "config.json", "scheduler": "scheduler_config.json"}
# Stable Diffusion v1's noise schedule (its scheduler_config.json): 1000 steps, scaled-linear betas
SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
DEFAULT_PROMPT = "a photo of a {}"  # D4M conditions on the label text; SD's usual template


# --------------------------------------------------------------------------- image spaces


def to_model_space(x: Tensor, real: RealData, resolution: int, channels: int) -> Tensor:
    """Normalised dataset images -> [-1, 1] images of `channels` x `resolution`^2."""
    pixels = real.to_pixels(x.float())
    pixels = _adapt_channels(pixels, channels)
    if pixels.shape[-1] != resolution:
        pixels = F.interpolate(
            pixels, size=resolution, mode="bilinear", align_corners=False, antialias=True
        )
    return pixels.clamp(0, 1) * 2 - 1


def from_model_space(y: Tensor, real: RealData) -> Tensor:
    """[-1, 1] model-space images -> images normalised like `real` (its size and channels)."""
    pixels = ((y.float().clamp(-1, 1) + 1) / 2).cpu()
    if pixels.shape[-1] != real.image_size:
        pixels = F.interpolate(
            pixels, size=real.image_size, mode="bilinear", align_corners=False, antialias=True
        ).clamp(0, 1)
    pixels = _adapt_channels(pixels, real.channels)
    mean = torch.tensor(real.mean).view(1, -1, 1, 1)
    std = torch.tensor(real.std).view(1, -1, 1, 1)
    out = (pixels - mean) / std
    if real.zca_state is not None:
        from ddbench.augment import ZCA

        out = ZCA.from_state_dict(real.zca_state).transform(out)
    return out.contiguous()


def _adapt_channels(x: Tensor, channels: int) -> Tensor:
    """Grey <-> RGB: repeat a single channel, or average three into one."""
    have = x.shape[1]
    if have == channels:
        return x
    if have == 1:
        return x.repeat(1, channels, 1, 1)
    if channels == 1:
        return x.mean(dim=1, keepdim=True)
    raise UserError(f"cannot map {have}-channel images to a {channels}-channel autoencoder")


# --------------------------------------------------------------------------- the pipeline


@dataclass
class Conditioning:
    """UNet conditioning per class: row `c` for class `c`, the last row the null (unconditional)
    one. `states` [K+1, L, D] are `encoder_hidden_states`; `class_labels` [K+1] are class-embedding
    ids of a class-conditional UNet (None: the UNet has none)."""

    states: Tensor
    class_labels: Tensor | None = None

    @property
    def null_index(self) -> int:
        return len(self.states) - 1

    def pick(self, rows: Tensor, device: str) -> dict[str, Tensor | None]:
        rows = rows.cpu()
        labels = None if self.class_labels is None else self.class_labels[rows].to(device)
        return {"encoder_hidden_states": self.states[rows].to(device), "class_labels": labels}


@dataclass
class LatentPipeline:
    """VAE + conditional UNet + scheduler config + conditioning table (see module docstring)."""

    vae: Any  # diffusers AutoencoderKL
    unet: Any  # diffusers UNet2DConditionModel
    scheduler_config: dict[str, Any]
    conditioning: Conditioning
    conditioning_kind: str  # "label_embedding" | "class_embedding" | "text"
    device: str = "cpu"

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """Pixel resolution the model works at (images are resized to it and back)."""
        return int(self.unet.config.sample_size) * self.vae_scale

    @property
    def channels(self) -> int:
        return int(self.vae.config.in_channels)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def to(self, device: str) -> LatentPipeline:
        self.vae.to(device).eval()
        self.unet.to(device).eval()
        self.device = device
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for m in (self.vae, self.unet) for p in m.parameters())

    @torch.no_grad()
    def encode(self, images: Tensor, batch: int = 256) -> Tensor:
        """Model-space images -> scaled latents (posterior means: deterministic), on the CPU."""
        out = []
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch].to(self.device)
            out.append(self.vae.encode(chunk).latent_dist.mean.float().cpu())
        return torch.cat(out) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: Tensor, batch: int = 256) -> Tensor:
        """Scaled latents -> model-space images in [-1, 1], on the CPU."""
        out = []
        for start in range(0, len(latents), batch):
            chunk = latents[start : start + batch].to(self.device) / self.scaling_factor
            out.append(self.vae.decode(chunk).sample.float().clamp(-1, 1).cpu())
        return torch.cat(out)

    def latent_shape(self) -> tuple[int, int, int]:
        size = int(self.unet.config.sample_size)
        return (int(self.unet.config.in_channels), size, size)

    @torch.no_grad()
    def denoise(
        self,
        latents: Tensor | None,
        rows: Tensor,
        generator: torch.Generator,
        guidance_scale: float,
        steps: int,
        strength: float = 1.0,
        batch: int = 256,
    ) -> Tensor:
        """DDIM (eta 0) with classifier-free guidance; returns clean latents on the CPU.

        `latents` given: img2img — each is noised to the timestep `strength` of the way into the
        schedule (diffusers' img2img rule: the last `int(steps * strength)` of `steps` DDIM steps
        remain) and denoised from there. `latents` None: sampling from pure noise over all steps.
        `rows` are conditioning rows (class ids). The noise is drawn on the CPU from `generator`
        before any chunking, so results do not depend on `batch` or the device.
        """
        from diffusers import DDIMScheduler

        n = len(rows)
        noise = torch.randn((n, *self.latent_shape()), generator=generator)
        out = []
        for start in range(0, n, batch):
            sched = DDIMScheduler.from_config(self.scheduler_config)
            sched.set_timesteps(steps)
            timesteps = sched.timesteps
            eps0 = noise[start : start + batch].to(self.device)
            if latents is None:
                z = eps0 * sched.init_noise_sigma
            else:
                kept = min(int(steps * strength), steps)
                timesteps = timesteps[steps - kept :]
                z0 = latents[start : start + batch].to(self.device)
                if len(timesteps) == 0:
                    out.append(z0.cpu())
                    continue
                z = sched.add_noise(z0, eps0, timesteps[:1].repeat(len(z0)))
            cond = self.conditioning.pick(rows[start : start + batch], self.device)
            null_rows = torch.full((len(z),), self.conditioning.null_index, dtype=torch.long)
            uncond = self.conditioning.pick(null_rows, self.device)
            guided = guidance_scale != 1.0
            if guided:
                cond = {k: _cat(uncond[k], cond[k]) for k in cond}
            for t in timesteps:
                z_in = torch.cat([z, z]) if guided else z
                z_in = sched.scale_model_input(z_in, t)
                eps = self.unet(z_in, t.to(self.device), **cond).sample.float()
                if guided:
                    eps_u, eps_c = eps.chunk(2)
                    eps = eps_u + guidance_scale * (eps_c - eps_u)
                z = sched.step(eps, t, z, eta=0.0).prev_sample
            out.append(z.float().cpu())
        return torch.cat(out) if out else noise


def _cat(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    return None if a is None or b is None else torch.cat([a, b])


# --------------------------------------------------------------------------- small models


def default_vae_channels(image_size: int) -> list[int]:
    """Encoder widths; len - 1 halvings: x2 at <= 16 px (8 -> 4), x4 at 32, x8 (SD's) above."""
    if image_size <= 16:
        return [32, 64]
    if image_size <= 32:
        return [32, 64, 128]
    return [64, 128, 128, 256]


def default_unet_channels(latent_size: int) -> list[int]:
    """UNet widths per level; a 4 x 4 latent takes two levels (4 -> 2), larger ones three."""
    return [32, 64] if latent_size <= 4 else [64, 128, 128]


def _groups(channels: list[int]) -> int:
    return math.gcd(8, *channels)


def build_vae(channels: int, image_size: int, widths: list[int], latent_channels: int) -> Any:
    """A small AutoencoderKL: one ResNet block per level, no attention in the middle block."""
    from diffusers import AutoencoderKL

    n = len(widths)
    if image_size % 2 ** (n - 1):
        raise UserError(f"image size {image_size} is not divisible by the VAE's {2 ** (n - 1)}")
    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(widths),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=_groups(widths),
        sample_size=image_size,
        mid_block_add_attention=False,
    )


def build_unet(
    latent_channels: int,
    latent_size: int,
    widths: list[int],
    embed_dim: int,
    class_embeds: int | None = None,
) -> Any:
    """A small UNet2DConditionModel. `class_embeds` None: cross-attention (to a label embedding
    of `embed_dim`) at every level but the last, as Stable Diffusion's UNet attends to the text.
    `class_embeds` = K + 1: no attention at all; a class embedding is added to the timestep
    embedding of every ResNet block (ADM-style; about 2.5x faster on a CPU)."""
    from diffusers import UNet2DConditionModel

    n = len(widths)
    if latent_size % 2 ** (n - 1):
        raise UserError(f"latent size {latent_size} is not divisible by the UNet's {2 ** (n - 1)}")
    if class_embeds is None:
        down = ("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",)
        up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1)
        extra: dict[str, Any] = {}
    else:
        down, up = ("DownBlock2D",) * n, ("UpBlock2D",) * n
        extra = {"num_class_embeds": class_embeds, "mid_block_type": "UNetMidBlock2D"}
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        block_out_channels=tuple(widths),
        down_block_types=down,
        up_block_types=up,
        layers_per_block=1,
        cross_attention_dim=embed_dim,
        attention_head_dim=8,
        norm_num_groups=_groups(widths),
        **extra,
    )


def training_scheduler_config(train_timesteps: int) -> dict[str, Any]:
    """DDPM training schedule (SD v1's betas); DDIM sampling reads the same config."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(
        num_train_timesteps=train_timesteps,
        clip_sample=False,
        prediction_type="epsilon",
        steps_offset=1,
        **SD_BETAS,
    )
    return plain_config(sched.config)


def plain_config(config: Any) -> dict[str, Any]:
    """A diffusers config as plain JSON data (private `_` keys dropped, tuples as lists)."""
    out = {}
    for key, value in dict(config).items():
        if key.startswith("_"):
            continue
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


# --------------------------------------------------------------------------- pretrained dirs


def load_pretrained(
    path: str, real: RealData, prompt: str = DEFAULT_PROMPT, device: str = "cpu"
) -> LatentPipeline:
    """A Stable-Diffusion-format directory, offline (see the module docstring)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    root = Path(path).expanduser()
    expected = (
        "a Stable-Diffusion-format directory with vae/config.json, unet/config.json and "
        "scheduler/scheduler_config.json (plus tokenizer/ and text_encoder/ for class-name text "
        "conditioning), as written by diffusers' save_pretrained"
    )
    if not root.is_dir():
        raise UserError(f"d4m: pretrained directory {root} does not exist; expected {expected}")
    missing = [
        f"{sub}/{name}" for sub, name in SD_SUBFOLDERS.items() if not (root / sub / name).is_file()
    ]
    if missing:
        raise UserError(f"d4m: {root} lacks {', '.join(missing)}; expected {expected}")
    try:
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae", local_files_only=True)
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", local_files_only=True)
        sched_config = DDIMScheduler.load_config(root, subfolder="scheduler", local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise UserError(f"d4m: cannot load the model in {root}: {exc}") from None
    sched = DDIMScheduler.from_config(
        {k: v for k, v in sched_config.items() if not k.startswith("_")},
        clip_sample=False,
        set_alpha_to_one=False,
    )
    if int(unet.config.in_channels) != int(vae.config.latent_channels):
        raise UserError(
            f"d4m: {root}: unet in_channels {unet.config.in_channels} != vae latent_channels "
            f"{vae.config.latent_channels}"
        )
    if (root / "tokenizer").is_dir() and (root / "text_encoder").is_dir():
        conditioning, kind = _text_conditioning(root, real, prompt, unet), "text"
    elif unet.config.num_class_embeds:
        conditioning, kind = _class_conditioning(root, real, unet), "class_embedding"
    else:
        raise UserError(
            f"d4m: {root} has no tokenizer/ + text_encoder/ and its UNet is not class-conditional "
            f"(num_class_embeds unset): nothing to condition on the class with"
        )
    _adapt_channels(torch.zeros(1, real.channels, 1, 1), int(vae.config.in_channels))
    return LatentPipeline(vae, unet, plain_config(sched.config), conditioning, kind).to(device)


def _cross_dim(unet: Any) -> int:
    dim = unet.config.cross_attention_dim
    return int(dim[0] if isinstance(dim, list | tuple) else dim)


def _class_conditioning(root: Path, real: RealData, unet: Any) -> Conditioning:
    classes = real.num_classes
    if int(unet.config.num_class_embeds) < classes + 1:
        raise UserError(
            f"d4m: {root}: the UNet has {unet.config.num_class_embeds} class embeddings; "
            f"{real.name} needs {classes} classes + 1 null class (id {classes}) for guidance"
        )
    states = torch.zeros(classes + 1, 1, _cross_dim(unet))
    return Conditioning(states, torch.arange(classes + 1))


@torch.no_grad()
def _text_conditioning(root: Path, real: RealData, prompt: str, unet: Any) -> Conditioning:
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError:
        raise UserError(
            f"d4m: {root} conditions on text (tokenizer/ + text_encoder/), which needs the "
            f"`transformers` package; it is not installed (pip install 'ddbench[sd]')"
        ) from None
    try:
        tokenizer = CLIPTokenizer.from_pretrained(
            root, subfolder="tokenizer", local_files_only=True
        )
        encoder = CLIPTextModel.from_pretrained(
            root, subfolder="text_encoder", local_files_only=True
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"d4m: cannot load the text encoder in {root}: {exc}") from None
    texts = [prompt.format(name) for name in real.class_names] + [""]
    ids = tokenizer(
        texts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    states = encoder.eval()(ids)[0].float()
    if states.shape[-1] != _cross_dim(unet):
        raise UserError(
            f"d4m: {root}: text encoder width {states.shape[-1]} != the UNet's "
            f"cross_attention_dim {_cross_dim(unet)}"
        )
    return Conditioning(states)
