"""Differentiable Siamese Augmentation (DSA) and optional ZCA whitening.

DSA (Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation", ICML 2021)
applies a random, differentiable transform to a batch so that gradients flow back into the
(synthetic) pixels. Each call draws ONE family at random from a strategy string such as
``"color_crop_cutout_flip_scale_rotate"`` and applies it:

* ``dsa(x, strategy, g)``: per-sample parameters (evaluation / training on distilled data).
* ``dsa_siamese([real, syn], strategy, g)``: one draw (batch 1, broadcast) shared by every sample
  of every batch, so real and synthetic images see the identical transform (distillation).
* ``sample_dsa`` / ``apply_dsa``: the two halves, for callers that need to keep the parameters.

All randomness comes from an explicit CPU ``torch.Generator``; values are drawn in float32 on the
CPU and moved to the input's device. Geometric ops sample in float32 and cast back to the input
dtype, so float32 and bfloat16 inputs both work on CPU and CUDA.

Adding a family: write ``_myfam(x, v) -> Tensor`` where ``v`` maps value names to float32 tensors
of shape ``[N]`` (already broadcast to the batch and on ``x.device``), then add one entry
``"myfam": Family(_myfam, {"name": _uniform(lo, hi), ...})`` to ``FAMILIES``. The draw specs are
called in insertion order, which fixes the random stream for a given generator.

``ZCA`` fits kornia's ``ZCAWhitening`` (eps 0.1, as in the KIP/MTT protocol) and keeps its fitted
matrices as plain tensors (``state_dict``) so they can be stored with safetensors. kornia is
imported lazily, only when a ZCA is fitted or applied.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_STRATEGY",
    "FAMILIES",
    "NO_FLIP_DATASETS",
    "ZCA",
    "DSAParams",
    "Family",
    "apply_dsa",
    "default_strategy",
    "dsa",
    "dsa_siamese",
    "parse_strategy",
    "sample_dsa",
]

# --- Constants of the DC/DSA protocol (ParamDiffAug in the DSA reference setup) ---------------
BRIGHTNESS = 1.0  # width of the additive brightness shift, pixel units: shift ~ U(-0.5, 0.5)
SATURATION = 2.0  # saturation factor ~ U(0, SATURATION), unitless
CONTRAST = 0.5  # contrast factor ~ U(CONTRAST, 1 + CONTRAST), unitless
CROP_RATIO = 0.125  # max translation, fraction of the image side (4 px at 32 px)
CUTOUT_RATIO = 0.5  # side of the zeroed square, fraction of the image side
FLIP_PROB = 0.5  # probability of a horizontal flip
SCALE = 1.2  # per-axis scale factor ~ U(1/SCALE, SCALE), unitless
ROTATE_DEG = 15.0  # rotation angle ~ U(-ROTATE_DEG, ROTATE_DEG), degrees
ZCA_EPS = 0.1  # ZCA regulariser added to the covariance eigenvalues (KIP/MTT protocol)

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"  # DSA paper default
NO_FLIP_DATASETS = frozenset({"mnist", "svhn", "digits"})  # digit images: flipping breaks labels

Values = dict[str, torch.Tensor]
Draw = Callable[[int, torch.Generator], torch.Tensor]


class Family(NamedTuple):
    """One augmentation family: how to apply it and how to draw its values."""

    apply: Callable[[torch.Tensor, Values], torch.Tensor]
    draws: dict[str, Draw]


@dataclass(frozen=True)
class DSAParams:
    """Already-drawn parameters of one augmentation call.

    ``values`` holds float32 CPU tensors of shape ``[n]``; ``n`` is the batch size (per-sample)
    or 1 (siamese, broadcast over any batch).
    """

    family: str
    values: dict[str, torch.Tensor]


# --- Draw specs ---------------------------------------------------------------------------------
def _uniform(low: float, high: float) -> Draw:
    return lambda n, g: low + (high - low) * torch.rand(n, generator=g)


def _bernoulli(p: float) -> Draw:
    return lambda n, g: (torch.rand(n, generator=g) < p).float()


# --- Family implementations ---------------------------------------------------------------------
def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.dtype).view(-1, 1, 1, 1)


def _color(x: torch.Tensor, v: Values) -> torch.Tensor:
    x = x + _col(v["brightness"], x)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * _col(v["saturation"], x) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _col(v["contrast"], x) + mean


def _crop(x: torch.Tensor, v: Values) -> torch.Tensor:
    """Translate by whole pixels (``tx``/``ty`` are fractions of the side), zero padding."""
    n, _, h, w = x.shape
    dy = torch.round(v["ty"] * h).long()
    dx = torch.round(v["tx"] * w).long()
    pad = int(torch.cat([dy, dx]).abs().max())
    xp = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # [N, H+2p, W+2p, C]
    rows = torch.arange(h, device=x.device).view(1, h, 1) - dy.view(n, 1, 1) + pad
    cols = torch.arange(w, device=x.device).view(1, 1, w) - dx.view(n, 1, 1) + pad
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    return xp[batch, rows, cols].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, v: Values) -> torch.Tensor:
    """Zero a square of side CUTOUT_RATIO * size; ``cx``/``cy`` in [0, 1) locate its centre."""
    n, _, h, w = x.shape
    sh, sw = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    y0 = (torch.floor(v["cy"] * h).long() - sh // 2).view(n, 1, 1)
    x0 = (torch.floor(v["cx"] * w).long() - sw // 2).view(n, 1, 1)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= y0) & (rows < y0 + sh) & (cols >= x0) & (cols < x0 + sw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def _flip(x: torch.Tensor, v: Values) -> torch.Tensor:
    return torch.where(v["flip"].view(-1, 1, 1, 1) > 0.5, x.flip(3), x)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample ``x`` through the [N, 2, 3] affine ``theta`` (float32 grid, zero padding)."""
    grid = F.affine_grid(theta.float(), list(x.shape), align_corners=True)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.to(x.dtype)


def _scale(x: torch.Tensor, v: Values) -> torch.Tensor:
    sx, sy = v["sx"], v["sy"]
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)], 1)
    return _affine(x, theta)


def _rotate(x: torch.Tensor, v: Values) -> torch.Tensor:
    rad = v["angle"] * (math.pi / 180.0)
    cos, sin, zero = torch.cos(rad), torch.sin(rad), torch.zeros_like(rad)
    theta = torch.stack([torch.stack([cos, sin, zero], 1), torch.stack([-sin, cos, zero], 1)], 1)
    return _affine(x, theta)


def _none(x: torch.Tensor, v: Values) -> torch.Tensor:
    return x


FAMILIES: dict[str, Family] = {
    "color": Family(
        _color,
        {
            "brightness": _uniform(-0.5 * BRIGHTNESS, 0.5 * BRIGHTNESS),
            "saturation": _uniform(0.0, SATURATION),
            "contrast": _uniform(CONTRAST, 1.0 + CONTRAST),
        },
    ),
    "crop": Family(
        _crop, {"tx": _uniform(-CROP_RATIO, CROP_RATIO), "ty": _uniform(-CROP_RATIO, CROP_RATIO)}
    ),
    "cutout": Family(_cutout, {"cx": _uniform(0.0, 1.0), "cy": _uniform(0.0, 1.0)}),
    "flip": Family(_flip, {"flip": _bernoulli(FLIP_PROB)}),
    "scale": Family(
        _scale, {"sx": _uniform(1.0 / SCALE, SCALE), "sy": _uniform(1.0 / SCALE, SCALE)}
    ),
    "rotate": Family(_rotate, {"angle": _uniform(-ROTATE_DEG, ROTATE_DEG)}),
    "none": Family(_none, {}),  # identity; lets callers switch augmentation off with "none"
}


# --- Public API ---------------------------------------------------------------------------------
def default_strategy(dataset_name: str) -> str:
    """DSA strategy for a dataset: the default, minus ``flip`` for digit datasets."""
    if dataset_name.lower() in NO_FLIP_DATASETS:
        return "_".join(f for f in DEFAULT_STRATEGY.split("_") if f != "flip")
    return DEFAULT_STRATEGY


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """Split ``"a_b_c"`` into family names; raise ValueError on unknown or empty names."""
    names = tuple(strategy.split("_"))
    bad = [n for n in names if n not in FAMILIES]
    if bad:
        raise ValueError(
            f"unknown DSA family {bad} in strategy {strategy!r}; valid families: {sorted(FAMILIES)}"
        )
    return names


def sample_dsa(strategy: str, batch: int, generator: torch.Generator) -> DSAParams:
    """Draw one family from ``strategy`` and its values for ``batch`` samples (1 = siamese)."""
    if generator.device.type != "cpu":
        raise ValueError("DSA draws its random numbers on a CPU torch.Generator")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    names = parse_strategy(strategy)
    family = names[int(torch.randint(len(names), (1,), generator=generator))]
    draws = FAMILIES[family].draws
    return DSAParams(family, {k: draw(batch, generator) for k, draw in draws.items()})


def apply_dsa(x: torch.Tensor, params: DSAParams) -> torch.Tensor:
    """Apply drawn ``params`` to ``x`` [N, C, H, W]; values of size 1 broadcast over N."""
    if params.family not in FAMILIES:
        raise ValueError(f"unknown DSA family {params.family!r}; valid: {sorted(FAMILIES)}")
    if x.dim() != 4:
        raise ValueError(f"expected x of shape [N, C, H, W], got {tuple(x.shape)}")
    n = x.shape[0]
    values = {}
    for k, v in params.values.items():
        v = v.reshape(-1)
        if v.numel() not in (1, n):
            raise ValueError(f"DSA value {k!r} has {v.numel()} entries for a batch of {n}")
        values[k] = v.to(device=x.device, dtype=torch.float32).expand(n)
    return FAMILIES[params.family].apply(x, values)


def dsa(x: torch.Tensor, strategy: str, generator: torch.Generator) -> torch.Tensor:
    """Per-sample DSA: every sample of ``x`` gets its own drawn values (one family per call)."""
    return apply_dsa(x, sample_dsa(strategy, x.shape[0], generator))


def dsa_siamese(
    batches: Sequence[torch.Tensor], strategy: str, generator: torch.Generator
) -> list[torch.Tensor]:
    """Siamese DSA: one draw (batch 1) applied identically to every sample of every batch."""
    params = sample_dsa(strategy, 1, generator)
    return [apply_dsa(b, params) for b in batches]


# --- ZCA whitening ------------------------------------------------------------------------------
class ZCA:
    """ZCA whitening of image batches, fitted with ``kornia.enhance.ZCAWhitening``.

    Features are the flattened C*H*W pixels; ``transform``/``inverse`` are differentiable and
    keep the input's shape and dtype (matmuls in float32). ``state_dict`` returns plain
    contiguous tensors (``mean`` [1, D], ``transform`` [D, D], ``transform_inv`` [D, D],
    ``eps`` [1]) suitable for safetensors.
    """

    def __init__(self, eps: float = ZCA_EPS) -> None:
        self.eps = eps
        self.mean: torch.Tensor | None = None
        self.transform_matrix: torch.Tensor | None = None
        self.transform_inv: torch.Tensor | None = None

    @property
    def fitted(self) -> bool:
        return self.transform_matrix is not None

    def fit(self, x: torch.Tensor) -> ZCA:
        """Fit on images ``x`` [N, C, H, W] (samples on dim 0)."""
        import kornia

        zca = kornia.enhance.ZCAWhitening(eps=self.eps, compute_inv=True)
        zca.fit(x.detach().float())
        self.mean = zca.mean_vector.contiguous()
        self.transform_matrix = zca.transform_matrix.contiguous()
        self.transform_inv = zca.transform_inv.contiguous()
        return self

    def _check(self, x: torch.Tensor) -> None:
        if not self.fitted:
            raise RuntimeError("ZCA is not fitted; call fit() or load_state_dict() first")
        d = self.mean.shape[1]
        if x.dim() < 2 or x[0].numel() != d:
            raise ValueError(f"ZCA was fitted on {d} features, got input {tuple(x.shape)}")

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Whiten: ``(flatten(x) - mean) @ T``, reshaped back to ``x.shape``."""
        from kornia.enhance import linear_transform

        self._check(x)
        t, m = self.transform_matrix.to(x.device), self.mean.to(x.device)
        return linear_transform(x, t, m, 0)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Un-whiten: ``flatten(x) @ T_inv + mean``, reshaped back to ``x.shape``."""
        from kornia.enhance import linear_transform

        self._check(x)
        t_inv, m = self.transform_inv.to(x.device), self.mean.to(x.device)
        mean_inv = -m @ self.transform_matrix.to(x.device)  # (x + m T) T_inv = x T_inv + m
        return linear_transform(x, t_inv, mean_inv, 0)

    def to(self, device: torch.device | str) -> ZCA:
        """Move the fitted matrices to ``device`` once (transform/inverse would move per call)."""
        if self.fitted:
            self.mean = self.mean.to(device)
            self.transform_matrix = self.transform_matrix.to(device)
            self.transform_inv = self.transform_inv.to(device)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        if not self.fitted:
            raise RuntimeError("ZCA is not fitted; nothing to serialise")
        return {
            "mean": self.mean.detach().cpu().contiguous(),
            "transform": self.transform_matrix.detach().cpu().contiguous(),
            "transform_inv": self.transform_inv.detach().cpu().contiguous(),
            "eps": torch.tensor([self.eps], dtype=torch.float64),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> ZCA:
        self.mean = state["mean"]
        self.transform_matrix = state["transform"]
        self.transform_inv = state["transform_inv"]
        self.eps = float(state["eps"]) if "eps" in state else self.eps
        return self

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> ZCA:
        return cls().load_state_dict(state)
