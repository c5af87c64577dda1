"""Class-conditional generator and discriminator networks of the generator methods (cgan, dim, d2m).

What lives here
---------------
* ``ConditionalGenerator``: DiM's conditional generator (supplementary Fig. 4 and its public
  code) adapted to any channel count and to 8/16/28/32/64/128-px images. Noise ``z`` (``noise_dim``,
  DiM's K = 100) is concatenated with the one-hot label (DiM's Eq. 4, ``[Z ⊕ Y]``; DiM's code
  instead overwrites the first C noise entries with the one-hot), then
  ``Linear -> BatchNorm1d -> ReLU`` to a ``width x s0 x s0`` map (s0 = 4, or 7 for 28 px), then
  ``ConvTranspose2d(4, stride 2) -> BN -> ReLU`` upsamplings up to the image size, with
  ``conv_blocks`` ``Conv3x3 -> BN -> ReLU`` blocks after them (DiM at 32 px: up, 3 blocks, up,
  1 block, up), a final ``Conv3x3`` to the image channels and ``tanh``. The ``tanh`` output is a
  pixel value in [-1, 1]; the module maps it to [0, 1] and normalises it with the dataset's
  ``mean`` / ``std`` (kept in the config), so its output lives in the same normalised space as
  ``RealData.train_x`` and feeds the evaluators' networks directly.
* ``ProjectionDiscriminator``: a conditional discriminator with the projection head of Miyato &
  Koyama (2018): spectral-normalised ``Conv3x3 -> LeakyReLU(0.2)`` blocks, a strided conv per 2x
  downsampling until the map is at most 4x4, global sum pooling to ``h``, and
  ``logit = w·h + <embed(y), h>``. DiM's own discriminator is a WGAN-GP critic with an auxiliary
  classifier; a projection discriminator with the standard (non-saturating) GAN loss is the
  conditional GAN of DiM's Eq. 3 with fewer moving parts and no double back-prop.
* ``build_generator(config)`` / ``build_discriminator(config)``: registry-free builders from a
  JSON-able config dict (``generator_config`` makes one); the config is what a ``GeneratorSet``
  artifact stores beside the weights.
* ``load_generator_checkpoint(path, config)``: a generator from a local weights file, and
  ``generator_from_state``: one from a state_dict and config (a ``GeneratorSet`` artifact's), for
  ``d2m``'s ``generator`` parameter.

Pointing ``d2m.generator`` at weights you have
----------------------------------------------
``generator: PATH`` accepts

1. a ddbench ``GeneratorSet`` artifact directory (``meta.json`` + ``tensors.safetensors``), e.g.
   ``runs/<suite>/artifacts/<job_id>`` of a ``cgan`` job from another suite or machine (read by
   ``d2m`` with ``ddbench.artifact.load_artifact``: this module does not import the artifacts,
   which import it);
2. a weights file ``NAME.safetensors`` (read with safetensors) or ``NAME.pt`` / ``NAME.pth`` /
   ``NAME.bin`` (read with ``torch.load(..., weights_only=True)``: no pickled code runs) holding the
   state_dict of a ``ConditionalGenerator`` (optionally under a ``"generator"`` or
   ``"state_dict"`` key), with a JSON config beside it: ``NAME.json``, else ``config.json`` in the
   same folder. The JSON holds the ``generator_config`` keys (``arch``, ``noise_dim``, ``width``,
   ``conv_blocks``; ``channels``, ``image_size``, ``num_classes``, ``mean`` and ``std`` default to
   the dataset's and must agree with it when given).

BigGAN is *not* supported as such: BigGAN's weights belong to a different architecture
(hierarchical latent, shared class embedding, self-attention, 128-d noise, 1000 ImageNet classes at
128+ px), so its state_dict cannot load into ``ConditionalGenerator``. Supporting it means adding
a ``BigGANGenerator`` class here that reproduces those layer names, a branch for
``config["arch"] == "biggan"`` in ``build_generator``, and a mapping from the dataset's classes to
the checkpoint's class ids. Until then, D2M runs here start from the dataset's own conditional GAN
(the paper's "CGAN" ablation, Tab. 7), which is the default.

Extending: add an ``nn.Module`` with ``forward(z, labels) -> images`` (normalised like the real
data), give it an ``arch`` name and a branch in ``build_generator``; everything downstream
(training, artifacts, sampling modes) only uses that interface plus ``noise_dim``/``num_classes``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddbench.errors import UserError

__all__ = [
    "GENERATOR_ARCH",
    "ConditionalGenerator",
    "GeneratorCheckpointError",
    "ProjectionDiscriminator",
    "build_discriminator",
    "build_generator",
    "generator_config",
    "generator_from_state",
    "load_generator_checkpoint",
]

GENERATOR_ARCH = "cond_dcgan"  # the only generator architecture ddbench builds today
DATA_KEYS = ("channels", "image_size", "num_classes")  # must match the dataset
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


class GeneratorCheckpointError(UserError, ValueError):
    """A generator file is missing, unreadable or does not fit the dataset / architecture."""


def _start_size(image_size: int) -> tuple[int, int]:
    """(first map size, number of 2x upsamplings): halve while even and above 4 px.

    8 -> (4, 1), 16 -> (4, 2), 28 -> (7, 2), 32 -> (4, 3), 64 -> (4, 4), 128 -> (4, 5)."""
    size, ups = image_size, 0
    while size % 2 == 0 and size > 4:
        size //= 2
        ups += 1
    return size, ups


def _blocks_per_stage(conv_blocks: int, ups: int) -> list[int]:
    """Conv3x3 blocks after each upsampling: DiM's 3-then-1 layout (all of them when one stage)."""
    if ups <= 1:
        return [conv_blocks] if ups == 1 else []
    first = max(0, conv_blocks - 1)
    return [first, conv_blocks - first] + [0] * (ups - 2)


NOISE_DIM = 100  # length of z: DiM's K = 100 (the best in its Tab. 10)
WIDTH = 196  # channels of every generator and discriminator layer (DiM: 196)
CONV_BLOCKS = 4  # DiM's Conv-BN-ReLU blocks between the upsamplings


def _bn_relu(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels), nn.ReLU()]


class ConditionalGenerator(nn.Module):
    """DiM's conditional generator at any size; ``forward(z, labels)`` returns normalised images."""

    def __init__(
        self,
        channels: int,
        image_size: int,
        num_classes: int,
        noise_dim: int = NOISE_DIM,
        width: int = WIDTH,
        conv_blocks: int = CONV_BLOCKS,
        mean: Sequence[float] | None = None,  # dataset normalisation; None = 0.5 (pixels in [-1,1])
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if min(channels, image_size, num_classes, noise_dim, width) < 1 or conv_blocks < 0:
            raise GeneratorCheckpointError(
                f"bad generator config: channels={channels}, image_size={image_size}, "
                f"num_classes={num_classes}, noise_dim={noise_dim}, width={width}, "
                f"conv_blocks={conv_blocks}"
            )
        self.channels, self.image_size, self.num_classes = channels, image_size, num_classes
        self.noise_dim, self.width = noise_dim, width
        start, ups = _start_size(image_size)
        self.start = start
        self.fc = nn.Linear(noise_dim + num_classes, width * start * start)
        self.bn0 = nn.BatchNorm1d(width * start * start)
        layers: list[nn.Module] = []
        stages = _blocks_per_stage(conv_blocks, ups)
        if ups == 0:  # an odd or tiny size: no upsampling, all blocks at the first map size
            for _ in range(conv_blocks):
                layers += [nn.Conv2d(width, width, 3, padding=1), *_bn_relu(width)]
        for n_blocks in stages:
            layers += [nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), *_bn_relu(width)]
            for _ in range(n_blocks):
                layers += [nn.Conv2d(width, width, 3, padding=1), *_bn_relu(width)]
        self.body = nn.Sequential(*layers)
        self.to_image = nn.Conv2d(width, channels, 3, padding=1)
        mean_t = torch.tensor(mean if mean is not None else [0.5] * channels, dtype=torch.float32)
        std_t = torch.tensor(std if std is not None else [0.5] * channels, dtype=torch.float32)
        if mean_t.numel() != channels or std_t.numel() != channels:
            raise GeneratorCheckpointError(f"mean / std need {channels} entries")
        # not part of the state_dict: the config carries them (a checkpoint holds weights only)
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        onehot = F.one_hot(labels.long(), self.num_classes).to(z.dtype)
        h = F.relu(self.bn0(self.fc(torch.cat([z, onehot], dim=1))))
        h = self.body(h.view(len(z), self.width, self.start, self.start))
        pixels = (torch.tanh(self.to_image(h)) + 1.0) / 2.0  # [0, 1]
        return (pixels - self.mean) / self.std


class ProjectionDiscriminator(nn.Module):
    """Conditional projection discriminator (spectral norm); ``forward(x, labels)`` -> [N]."""

    def __init__(
        self, channels: int, image_size: int, num_classes: int, width: int = WIDTH
    ) -> None:
        super().__init__()
        sn = nn.utils.spectral_norm
        layers: list[nn.Module] = [sn(nn.Conv2d(channels, width, 3, padding=1)), nn.LeakyReLU(0.2)]
        size = image_size
        while size > 4:
            layers += [sn(nn.Conv2d(width, width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            layers += [sn(nn.Conv2d(width, width, 3, padding=1)), nn.LeakyReLU(0.2)]
            size //= 2
        self.features = nn.Sequential(*layers)
        self.linear = sn(nn.Linear(width, 1))
        self.embed = sn(nn.Embedding(num_classes, width))

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        h = self.features(x).sum(dim=(2, 3))  # global sum pooling
        return self.linear(h).squeeze(1) + (self.embed(labels.long()) * h).sum(dim=1)


def generator_config(
    channels: int,
    image_size: int,
    num_classes: int,
    noise_dim: int = NOISE_DIM,
    width: int = WIDTH,
    conv_blocks: int = CONV_BLOCKS,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The JSON-able description ``build_generator`` rebuilds a generator from."""
    return {
        "arch": GENERATOR_ARCH,
        "channels": int(channels),
        "image_size": int(image_size),
        "num_classes": int(num_classes),
        "noise_dim": int(noise_dim),
        "width": int(width),
        "conv_blocks": int(conv_blocks),
        "mean": [float(m) for m in mean] if mean is not None else None,
        "std": [float(s) for s in std] if std is not None else None,
    }


def _check_arch(config: dict[str, Any]) -> None:
    arch = config.get("arch", GENERATOR_ARCH)
    if arch != GENERATOR_ARCH:
        raise GeneratorCheckpointError(
            f"unknown generator arch {arch!r}: ddbench builds {GENERATOR_ARCH!r} only (see the "
            f"docstring of ddbench.generators for BigGAN and how to add an architecture)"
        )


def build_generator(config: dict[str, Any]) -> ConditionalGenerator:
    """A freshly initialised generator for ``config`` (seed torch's RNG first for determinism)."""
    _check_arch(config)
    keys = ("channels", "image_size", "num_classes", "noise_dim", "width", "conv_blocks")
    missing = [k for k in DATA_KEYS if k not in config]
    if missing:
        raise GeneratorCheckpointError(f"generator config lacks {missing}")
    kwargs = {k: int(config[k]) for k in keys if config.get(k) is not None}
    return ConditionalGenerator(**kwargs, mean=config.get("mean"), std=config.get("std"))


def build_discriminator(config: dict[str, Any]) -> ProjectionDiscriminator:
    """The discriminator paired with ``config``'s generator (same width)."""
    _check_arch(config)
    return ProjectionDiscriminator(
        int(config["channels"]),
        int(config["image_size"]),
        int(config["num_classes"]),
        int(config.get("width", WIDTH)),
    )


# --------------------------------------------------------------------------- loading


def _read_weights(path: Path) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the same user problem
        raise GeneratorCheckpointError(
            f"cannot read generator weights {path}: {type(exc).__name__}: {exc}. Expected a "
            f"state_dict saved with safetensors or torch.save (loaded with weights_only=True)."
        ) from None
    if isinstance(obj, dict):
        for key in ("generator", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise GeneratorCheckpointError(
            f"{path} does not hold a state_dict (a mapping of parameter names to tensors)"
        )
    return obj


def _sidecar_config(path: Path) -> dict[str, Any]:
    for candidate in (path.with_suffix(".json"), path.parent / "config.json"):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise GeneratorCheckpointError(f"cannot read {candidate}: {exc}") from None
            if not isinstance(data, dict):
                raise GeneratorCheckpointError(f"{candidate} must hold a JSON object")
            return data
    raise GeneratorCheckpointError(
        f"no config beside {path}: write {path.with_suffix('.json')} (or config.json) with the "
        f"generator's arch, noise_dim, width and conv_blocks"
    )


def load_generator_checkpoint(
    path: str | Path, config: dict[str, Any]
) -> tuple[ConditionalGenerator, dict[str, Any]]:
    """Load a generator from a local weights file and the JSON config beside it (see the module
    docstring; d2m reads a generator artifact directory with `ddbench.artifact.load_artifact`
    and builds it with `generator_from_state`).

    ``config`` carries what the dataset imposes (``channels``, ``image_size``, ``num_classes``,
    and ``mean`` / ``std`` used when the file's config has none); a checkpoint disagreeing with it
    is an error. Returns the generator (eval mode, CPU) and its complete config.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise GeneratorCheckpointError(f"generator checkpoint {path} does not exist")
    if path.suffix not in _WEIGHT_SUFFIXES:
        raise GeneratorCheckpointError(
            f"{path}: unsupported file type; use {', '.join(_WEIGHT_SUFFIXES)} or an artifact "
            f"folder"
        )
    found = _sidecar_config(path)
    return generator_from_state(_read_weights(path), found, config, path)


def generator_from_state(
    weights: dict[str, Tensor], found: dict[str, Any], config: dict[str, Any], source: Path
) -> tuple[ConditionalGenerator, dict[str, Any]]:
    """The generator of a state_dict and the (possibly partial) config `found` with it,
    completed by the dataset's `config` (a key both give must agree); `source` names the
    checkpoint in errors. Returns the generator (eval mode, CPU) and its complete config."""
    for key in DATA_KEYS:
        if key in found and key in config and int(found[key]) != int(config[key]):
            raise GeneratorCheckpointError(
                f"generator {source} was built for {key}={found[key]}, the dataset needs "
                f"{key}={config[key]}"
            )
    merged = {**config, **{k: v for k, v in found.items() if v is not None}}
    merged.setdefault("arch", GENERATOR_ARCH)
    full = generator_config(
        merged["channels"],
        merged["image_size"],
        merged["num_classes"],
        merged.get("noise_dim", NOISE_DIM),
        merged.get("width", WIDTH),
        merged.get("conv_blocks", CONV_BLOCKS),
        merged.get("mean"),
        merged.get("std"),
    )
    full["arch"] = merged["arch"]
    generator = build_generator(full)
    try:
        generator.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[:4]
        raise GeneratorCheckpointError(
            f"the weights in {source} do not fit a {full['arch']} generator with config "
            f"{ {k: full[k] for k in ('noise_dim', 'width', 'conv_blocks')} }: " + " ".join(first)
        ) from None
    return generator.eval(), full
