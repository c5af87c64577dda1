"""What every architecture module shares: the model interface and DC's option-checked layers.

* ``FeatureModel``: the base of every model (logits, ``embed``, ``forward_features``);
  ``run_blocks`` runs a sequence of blocks and keeps their maps for ``forward_features``.
* ``ArchConfigError`` and the option values of DC's networks (``NORMS``, ``ACTIVATIONS``,
  ``POOLINGS``) with the layer factories that check them (``make_norm``, ``make_activation``,
  ``make_pool``; ``check_choice`` for any other option). A new option value is a new entry in
  its tuple and a branch in its factory.

The names are public through ``ddbench.archs``; plugin modules of this folder import them from
here, so they never depend on the package's plugin discovery.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ddbench.errors import UserError

NORMS: tuple[str, ...] = ("none", "batchnorm", "layernorm", "instancenorm", "groupnorm")
ACTIVATIONS: tuple[str, ...] = ("relu", "sigmoid", "leakyrelu")
POOLINGS: tuple[str, ...] = ("none", "maxpooling", "avgpooling")


class ArchConfigError(UserError, ValueError):
    """A bad architecture option (unknown norm/activation/pooling, impossible size, ...)."""


def check_choice(kind: str, value: str, allowed: Sequence[str]) -> None:
    """Raise ``ArchConfigError`` listing ``allowed`` unless ``value`` is one of them."""
    if value not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        raise ArchConfigError(f"unknown {kind} {value!r}; allowed values: {choices}")


def make_norm(norm: str, channels: int, height: int, width: int) -> nn.Module:
    """DC's normalisation layer for a ``[channels, height, width]`` map.

    "instancenorm" is ``GroupNorm(C, C, affine=True)`` as in DC (not ``nn.InstanceNorm2d``),
    "layernorm" normalises over ``[C, H, W]`` with an affine transform, "groupnorm" uses 4 groups.
    """
    check_choice("norm", norm, NORMS)
    if norm == "batchnorm":
        return nn.BatchNorm2d(channels, affine=True)
    if norm == "layernorm":
        return nn.LayerNorm([channels, height, width], elementwise_affine=True)
    if norm == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    if norm == "groupnorm":
        if channels % 4:
            raise ArchConfigError(f"norm 'groupnorm' needs channels divisible by 4, got {channels}")
        return nn.GroupNorm(4, channels, affine=True)
    return nn.Identity()


def make_activation(activation: str) -> nn.Module:
    """DC's activation: "relu", "sigmoid" or "leakyrelu" (negative slope 0.01)."""
    check_choice("activation", activation, ACTIVATIONS)
    if activation == "sigmoid":
        return nn.Sigmoid()
    if activation == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.01)
    return nn.ReLU()  # not in-place, so maps kept by forward_features are never overwritten


def make_pool(pooling: str) -> nn.Module | None:
    """DC's 2x2/stride-2 pooling ("maxpooling", "avgpooling"), or None for "none"."""
    check_choice("pooling", pooling, POOLINGS)
    if pooling == "maxpooling":
        return nn.MaxPool2d(kernel_size=2, stride=2)
    if pooling == "avgpooling":
        return nn.AvgPool2d(kernel_size=2, stride=2)
    return None


class FeatureModel(nn.Module):
    """Base of every model: logits from ``forward``, plus ``embed``/``forward_features``.

    Subclasses set ``feature_dim`` and ``classifier`` (the final layer, applied to the
    embedding) and implement ``_trunk``.
    """

    feature_dim: int
    classifier: nn.Module

    def _trunk(self, x: Tensor, collect: bool) -> tuple[list[Tensor], Tensor]:
        """Return (per-block 4-D maps if ``collect`` else [], embedding [N, feature_dim])."""
        raise NotImplementedError

    def _head(self, embedding: Tensor) -> Tensor:
        return self.classifier(embedding)

    def embed(self, x: Tensor) -> Tensor:
        """Features just before the final classifier, flattened: ``[N, feature_dim]``."""
        return self._trunk(x, collect=False)[1]

    def forward(self, x: Tensor) -> Tensor:
        return self._head(self.embed(x))

    def forward_features(self, x: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """``(maps, embedding, logits)``: maps are the 4-D outputs of each block/stage."""
        maps, embedding = self._trunk(x, collect=True)
        return maps, embedding, self._head(embedding)


def run_blocks(blocks: nn.Sequential, x: Tensor, collect: bool) -> tuple[list[Tensor], Tensor]:
    """Apply ``blocks`` in order: (each block's output if ``collect`` else [], the last one)."""
    maps: list[Tensor] = []
    for block in blocks:
        x = block(x)
        if collect:
            maps.append(x)
    return maps, x
