"""`d4m`: Dataset Distillation via Disentangled Diffusion Model (Su et al., CVPR 2024).

Follows the paper (Alg. 1) and docs/protocols.md#d4m; no matching at synthesis time:

1. A latent diffusion model: by default the `latent_diffusion` job of the same data and seed (its
   parameters are `pretrain`; the plan runs it once and shares it across every IPC), or a
   Stable-Diffusion-format directory on disk, `pretrained: DIR`, loaded offline and conditioned
   on the class-name text `prompt.format(class_name)` (see `ddbench.methods._diffusion` for the
   formats; a missing or malformed directory is a `UserError`). Images are resized to the
   model's resolution and back, grey <-> RGB as needed.
2. Prototypes (`init: prototype`): every train image is encoded by the VAE (posterior mean x the
   latent scaling factor); per class, scikit-learn's `MiniBatchKMeans` with IPC clusters on the
   flattened latents; the cluster centres are the prototypes (paper Eq. 3-5).
3. img2img: each prototype is noised to `strength` of the schedule (0.7) and denoised by DDIM
   (`inference_steps` over the whole schedule, so int(steps x strength) are run) conditioned on
   its class, with classifier-free guidance `guidance_scale` (8) against the null class / empty
   prompt; the VAE decodes the latents; images are normalised like the real data.
   `init: random` is the paper's Table 4 ablation "w/o PT": the diffusion process starts from
   pure Gaussian noise (all `inference_steps` steps, `strength` unused), i.e. plain
   class-conditional generation.

The artifact is an `ImageSet` with hard labels. D4M's training-time matching (a teacher's soft
labels regenerated every epoch under that epoch's augmentation, KL at temperature T) is an
evaluation setting: `evals.cross_arch.params.labels: teacher` (`ddbench.teacher`, `ddbench.fit`).
d4m's paper protocol is teacher labels at T = 1 learned with D4M's AdamW + cosine student recipe
(`ddbench.protocols.SOFT_LABEL_RECIPE`): both chosen on val, docs/protocols.md#d4m.

Costs (the paper's Table 6 analogue) go into the artifact's meta: `synthesis_seconds_per_image`
(encoding + clustering + denoising + decoding, over the IPC x classes images),
`generation_seconds_per_image` (denoising + decoding only), `peak_rss_bytes` (the process's
high-water mark: an upper bound when the process did other work first), `cuda_peak_bytes` and
`diffusion_parameters`. The latent diffusion model's own training time is the
`distill_seconds` of its job.

`strength` and `guidance_scale` default to the paper's 0.7 and 8, which it uses with Stable
Diffusion. A small model trained on the dataset wants its own: choose them on the val split under
the labels D4M is evaluated with, i.e. a `tune:` block with `eval_labels: teacher` (as in
`suites/acceptance/d4m_digits.yaml`; what that grid chose on digits: docs/protocols.md#d4m).

Choices the paper leaves open, as implemented here: posterior means (not samples) are clustered,
so prototypes are deterministic; MiniBatchKMeans with `kmeans_batch` samples per step and 3
initialisations, seeded by a named stream per class (the official script uses batch 10 x IPC,
one pass); DDIM with eta 0; no negative prompt (the official script adds
"cartoon, anime, painting" for Stable Diffusion); float32 throughout.
"""

from __future__ import annotations

import resource
import time
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from ddbench.artifact import ImageSet, load_artifact
from ddbench.context import Context
from ddbench.data import RealData
from ddbench.errors import UserError
from ddbench.methods import Method, MethodParams, register_method
from ddbench.methods._diffusion import (
    DEFAULT_PROMPT,
    LatentPipeline,
    from_model_space,
    load_pretrained,
    to_model_space,
)
from ddbench.methods.latent_diffusion import (
    LATENT_DIFFUSION_SMOKE,
    DiffusionModel,
    LatentDiffusionParams,
)
from ddbench.protocols import SOFT_LABEL_RECIPE, TEACHER_TEMPERATURE


class D4MParams(MethodParams):
    strength: float = Field(0.7, ge=0, le=1)  # img2img noise level of the prototypes (paper: 0.7)
    guidance_scale: float = Field(8.0, ge=1)  # classifier-free guidance (paper: 8); 1 = none
    init: Literal["prototype", "random"] = "prototype"  # random = Tab. 4 "w/o PT": pure noise
    inference_steps: int = Field(50, ge=1)  # DDIM steps over the full schedule (SD default 50)
    pretrained: str | None = None  # local Stable-Diffusion-format dir; None = latent_diffusion job
    prompt: str = DEFAULT_PROMPT  # text template for a pretrained text-conditioned model
    pretrain: LatentDiffusionParams = Field(default_factory=LatentDiffusionParams)  # that job
    kmeans_batch: int = Field(1024, ge=1)  # MiniBatchKMeans samples per step (sklearn default)
    batch_size: int = Field(256, ge=1)  # images per VAE / UNet forward pass (bounds memory)


def class_labels(real: RealData, ipc: int) -> Tensor:
    """`ipc` labels of every class present in `real`, grouped by class."""
    return torch.tensor([c for c in real.classes for _ in range(ipc)], dtype=torch.long)


def encode_train(pipe: LatentPipeline, real: RealData, batch: int) -> Tensor:
    """Scaled VAE latents (posterior means) of every train image, chunk by chunk."""
    out = []
    for start in range(0, len(real.train_x), batch):
        chunk = to_model_space(
            real.train_x[start : start + batch], real, pipe.resolution, pipe.channels
        )
        out.append(pipe.encode(chunk, batch))
    return torch.cat(out)


def kmeans_prototypes(
    latents: Tensor, real: RealData, ipc: int, batch: int, ctx: Context
) -> tuple[Tensor, float]:
    """Per class, `ipc` MiniBatchKMeans centres of the flattened latents (grouped by class);
    also the mean inertia per latent (how tightly the prototypes summarise their class)."""
    from sklearn.cluster import MiniBatchKMeans

    centres, inertia = [], 0.0
    for c in real.classes:
        z = latents[real.train_y == c]
        if len(z) < ipc:
            raise UserError(f"d4m: class {c} has {len(z)} train images, fewer than ipc={ipc}")
        seed = ctx.stream_seed(f"d4m/kmeans/{c}") % 2**32
        km = MiniBatchKMeans(n_clusters=ipc, batch_size=batch, n_init=3, random_state=seed)
        km.fit(z.flatten(1).double().numpy())
        centres.append(torch.from_numpy(km.cluster_centers_).float().view(ipc, *z.shape[1:]))
        inertia += float(km.inertia_) / len(latents)
    return torch.cat(centres), inertia


@register_method
class D4M(Method):
    name = "d4m"
    paper = "Su et al., D4M: Dataset Distillation via Disentangled Diffusion Model, CVPR 2024"
    version = 1
    Params = D4MParams
    # training-time matching: a teacher's soft labels (T chosen on val, not the scripts' 20: see
    # TEACHER_TEMPERATURE) learned with the AdamW + cosine student recipe of D4M's scripts
    paper_protocol = {"labels": "teacher", "temperature": TEACHER_TEMPERATURE, **SOFT_LABEL_RECIPE}
    # seconds on digits: the smoke latent_diffusion job (shared with its own smoke entry), 5 steps
    smoke = {"inference_steps": 5, "pretrain": dict(LATENT_DIFFUSION_SMOKE)}

    def dependencies(self, params: D4MParams) -> dict[str, tuple[str, dict[str, Any]]]:
        if params.pretrained:
            return {}
        return {"diffusion": ("latent_diffusion", params.pretrain.model_dump(mode="json"))}

    def pipeline(self, real: RealData, params: D4MParams, ctx: Context) -> LatentPipeline:
        """The diffusion model: a local pretrained directory or the latent_diffusion job."""
        if params.pretrained:
            return load_pretrained(params.pretrained, real, params.prompt, ctx.device)
        if "diffusion" not in ctx.dependencies:
            raise UserError(
                "d4m needs a latent diffusion model: run it through a suite (the plan adds the "
                "latent_diffusion job) or set params.pretrained to a Stable-Diffusion-format dir"
            )
        model = load_artifact(ctx.dependencies["diffusion"])
        if not isinstance(model, DiffusionModel):
            raise UserError(f"d4m: {ctx.dependencies['diffusion']} is not a latent_diffusion model")
        got = tuple(model.config[k] for k in ("num_classes", "image_size", "channels"))
        want = (real.num_classes, real.image_size, real.channels)
        if got != want:
            raise UserError(
                f"d4m: the latent_diffusion model was trained for (classes, size, channels) = "
                f"{got}, but {real.name} has {want}"
            )
        return model.pipeline(ctx.device)

    def distill(self, real: RealData, ipc: int, params: D4MParams, ctx: Context) -> ImageSet:
        if ctx.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        tic = time.perf_counter()
        pipe = self.pipeline(real, params, ctx)
        labels = class_labels(real, ipc)
        noise_gen = ctx.rng("d4m/noise")
        encode_s = cluster_s = 0.0
        inertia = float("nan")
        if params.init == "prototype":
            start = time.perf_counter()
            latents = encode_train(pipe, real, params.batch_size)
            encode_s = time.perf_counter() - start
            start = time.perf_counter()
            prototypes, inertia = kmeans_prototypes(latents, real, ipc, params.kmeans_batch, ctx)
            cluster_s = time.perf_counter() - start
            ctx.report(force=True, stage=1.0, encode_s=encode_s, cluster_s=cluster_s)
        else:
            prototypes = None
        start = time.perf_counter()
        out = pipe.denoise(
            prototypes,
            labels,
            noise_gen,
            params.guidance_scale,
            params.inference_steps,
            params.strength,
            params.batch_size,
        )
        images = from_model_space(pipe.decode(out, params.batch_size), real)
        generate_s = time.perf_counter() - start
        ctx.broadcast_(images)  # ranks computed the same; keep rank 0's bit for bit
        n = len(labels)
        meta = {
            "init": params.init,
            "source": params.pretrained or "latent_diffusion",
            "conditioning": pipe.conditioning_kind,
            "model_resolution": pipe.resolution,
            "diffusion_parameters": pipe.num_parameters(),
            "encode_seconds": encode_s,
            "cluster_seconds": cluster_s,
            "generation_seconds": generate_s,
            "synthesis_seconds_per_image": (time.perf_counter() - tic) / n,
            "generation_seconds_per_image": generate_s / n,
            "kmeans_inertia": inertia,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "cuda_peak_bytes": (
                torch.cuda.max_memory_allocated() if ctx.device.startswith("cuda") else 0
            ),
        }
        return ImageSet(images, labels, meta)
