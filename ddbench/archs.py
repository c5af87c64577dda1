"""Network architectures for training on, distilling with and evaluating distilled data.

What lives here
---------------
* ``ARCHS``: the architecture registry (name -> builder) and ``build_arch``, the one entry point
  the rest of ddbench uses::

      model = build_arch("convnet", channels=3, num_classes=10, image_size=32, width=64)

* The standard small networks of dataset distillation with the semantics of DC/DSA/DM
  (VICO-UoE/DatasetCondensation, ``networks.py``): ``convnet``, ``convnet_bn``, ``mlp``,
  ``lenet``, ``alexnet``, ``vgg11``, ``resnet18``, ``resnet18_bn``, ``resnet18_ap``, plus
  ``resnet10`` and ``resnet10_ap`` (DiM's model pool). Layers keep PyTorch's default
  initialisation, as DC does.
* ``nb201``: the NAS-Bench-201 macro skeleton around one cell (``genotype`` cell string,
  ``width`` C, ``cells_per_stage`` N), defined in ``ddbench.nb201``.
* timm-backed ``resnet50``, ``densenet121`` and ``vit_tiny`` (random init, never downloaded
  weights), adapted to small images. timm is imported inside their builders only, because
  importing it costs seconds.

Every model is a ``FeatureModel``: it maps normalised images ``[N, C, S, S]`` (``S`` =
``image_size``) to logits ``[N, num_classes]`` and also offers ``embed(x)`` (the flattened
features the final classifier sees, ``[N, feature_dim]``) and ``forward_features(x)`` ->
``(maps, embedding, logits)`` for attention/feature-matching methods (DataDAM, D2M). What ``maps``
holds for each architecture is written in the class docstrings.

Small inputs (the embedded default dataset is 8x8 scikit-learn digits)
----------------------------------------------------------------------
Every architecture builds and runs at 8, 16, 28, 32, 64 and 128 px. Where DC's layers would
shrink a map too far, a 2x2 downsampling (pooling, or a ResNet stride) is skipped when the map is
already 1x1, and also when it would leave a 1x1 map that a conv -> norm layer then sees: DC's
"instancenorm" is GroupNorm(C, C), which on a 1x1 map normalises a single value and outputs its
bias whatever the input (the network would ignore its input; it also rejects a batch of 1). So
at 8 px ConvNet runs 8 -> 4 -> 2 -> 1 (depth 3) or 8 -> 4 -> 2 -> 2 -> 1 (depth 4), VGG-11's
512-channel convs see 2x2 maps and its last pool gives 1x1, and the ResNets' last stage stays
2x2. LeNet's 5x5 convolutions get just enough padding to leave a 1x1 map, and classifier input
sizes are computed for the actual image size. At DC's native 28/32 px nothing changes.

Adding an architecture
----------------------
Write one decorated builder; nothing else needs to change::

    @ARCHS.register("my_net")
    def my_net(channels: int, num_classes: int, image_size: int, **overrides: Any) -> FeatureModel:
        return MyNet(channels, num_classes, image_size, **overrides)

``MyNet`` subclasses ``FeatureModel``: set ``self.classifier`` (the final layer) and
``self.feature_dim``, and implement ``_trunk(x, collect)`` returning ``(maps, embedding)``. Use
the argument checks here (``make_norm``, ``make_activation``, ``make_pool``) so bad option values
raise ``ArchConfigError`` listing the allowed values. The parametrised tests in
``tests/test_archs.py`` pick the new name up automatically (8 px and 32 px must both work).
Builders must be deterministic given torch's global RNG state, which callers seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import torch
from pydantic import AfterValidator
from torch import Tensor, nn

from ddbench.errors import UserError
from ddbench.registry import Registry

__all__ = [
    "ACTIVATIONS",
    "ARCHS",
    "NORMS",
    "POOLINGS",
    "VGG11_CFG",
    "AlexNet",
    "ArchConfigError",
    "ConvNet",
    "FeatureModel",
    "LeNet",
    "MLP",
    "ResNet",
    "TimmAdapter",
    "VGG",
    "build_arch",
    "convnet_depth",
    "make_activation",
    "make_norm",
    "make_pool",
]

NORMS: tuple[str, ...] = ("none", "batchnorm", "layernorm", "instancenorm", "groupnorm")
ACTIVATIONS: tuple[str, ...] = ("relu", "sigmoid", "leakyrelu")
POOLINGS: tuple[str, ...] = ("none", "maxpooling", "avgpooling")
VGG11_CFG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class ArchConfigError(UserError, ValueError):
    """A bad architecture option (unknown norm/activation/pooling, impossible size, ...)."""


ArchBuilder = Callable[..., "FeatureModel"]
ARCHS: Registry[ArchBuilder] = Registry("arch", "ddbench.archs")


def _arch(name: str) -> Callable[[ArchBuilder], ArchBuilder]:
    def decorate(builder: ArchBuilder) -> ArchBuilder:
        builder.name = name  # type: ignore[attr-defined]
        return ARCHS.register(builder)

    return decorate


def known_arch(name: str) -> str:
    """`name` if it is a registered architecture, else a did-you-mean error (`UnknownNameError`,
    a `ValueError`): the check behind `ArchName` / `ArchNames` in params models."""
    ARCHS.get(name)
    return name


ArchName = Annotated[str, AfterValidator(known_arch)]  # a params field naming one architecture
ArchNames = Annotated[list[str], AfterValidator(lambda names: [known_arch(n) for n in names])]


def build_arch(
    name: str, channels: int, num_classes: int, image_size: int, **overrides: Any
) -> FeatureModel:
    """Build the registered architecture ``name`` for ``[N, channels, image_size, image_size]``
    inputs and ``num_classes`` outputs; ``overrides`` go to its builder (e.g. ``width=64``).

    Raises ``UnknownNameError`` (a ``KeyError``, with did-you-mean) for an unknown name and
    ``ArchConfigError`` (a ``ValueError``) for bad sizes or option values.
    """
    builder = ARCHS.get(name)
    for what, value in (("channels", channels), ("num_classes", num_classes)):
        if not isinstance(value, int) or value < 1:
            raise ArchConfigError(f"{what} must be a positive integer, got {value!r}")
    if not isinstance(image_size, int) or image_size < 2:
        raise ArchConfigError(f"image_size must be an integer >= 2, got {image_size!r}")
    return builder(channels, num_classes, image_size, **overrides)


# --------------------------------------------------------------------------- building blocks


def _check_choice(kind: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        raise ArchConfigError(f"unknown {kind} {value!r}; allowed values: {choices}")


def make_norm(norm: str, channels: int, height: int, width: int) -> nn.Module:
    """DC's normalisation layer for a ``[channels, height, width]`` map.

    "instancenorm" is ``GroupNorm(C, C, affine=True)`` as in DC (not ``nn.InstanceNorm2d``),
    "layernorm" normalises over ``[C, H, W]`` with an affine transform, "groupnorm" uses 4 groups.
    """
    _check_choice("norm", norm, NORMS)
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
    _check_choice("activation", activation, ACTIVATIONS)
    if activation == "sigmoid":
        return nn.Sigmoid()
    if activation == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.01)
    return nn.ReLU()  # not in-place, so maps kept by forward_features are never overwritten


def make_pool(pooling: str) -> nn.Module | None:
    """DC's 2x2/stride-2 pooling ("maxpooling", "avgpooling"), or None for "none"."""
    _check_choice("pooling", pooling, POOLINGS)
    if pooling == "maxpooling":
        return nn.MaxPool2d(kernel_size=2, stride=2)
    if pooling == "avgpooling":
        return nn.AvgPool2d(kernel_size=2, stride=2)
    return None


def convnet_depth(image_size: int) -> int:
    """DC's ConvNet depth for a resolution: 3 up to 32 px, then one more block per doubling
    (4 at 64, 5 at 128, 6 at 256), so the last map is about 4x4 (DM/MTT's ConvNetD4..D6)."""
    if image_size <= 32:
        return 3
    return 3 + math.ceil(math.log2(image_size / 32))


def _conv_out(size: int, kernel: int, padding: int, stride: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _keep_pool(size: int, last: bool) -> bool:
    """Small-input rule: apply a 2x2 downsampling of a ``size`` map? Never on a 1x1 map, and
    not down to 1x1 unless it is the network's last one (``last``: no conv -> norm follows).
    GroupNorm(C, C) ("instancenorm") over a 1x1 map normalises a single value: it outputs its
    bias whatever the input (and rejects a batch of 1), so the network would ignore its input."""
    return size > 1 and (size // 2 > 1 or last)


def _fit_padding(size: int, kernel: int, padding: int) -> int:
    """``padding`` if the conv leaves at least a 1x1 map, else the least padding that does."""
    if _conv_out(size, kernel, padding, 1) >= 1:
        return padding
    return math.ceil((kernel - size) / 2)


def _flat_dim(features: nn.Module, channels: int, image_size: int) -> int:
    """Flattened output size of ``features`` found by a dummy forward (eval mode, so no running
    statistics change; zeros, so the RNG is untouched)."""
    was_training = features.training
    features.eval()
    with torch.no_grad():
        out = features(torch.zeros(2, channels, image_size, image_size))
    features.train(was_training)
    return int(out[0].numel())


def _fixed(arch: str, overrides: dict[str, Any], **fixed: Any) -> dict[str, Any]:
    """Merge options a named variant pins (e.g. ``convnet_bn``'s norm) into ``overrides``."""
    for key, value in fixed.items():
        if key in overrides:
            raise ArchConfigError(
                f"arch {arch!r} fixes {key}={value!r}; choose {key} on its base architecture"
            )
    return {**overrides, **fixed}


# --------------------------------------------------------------------------- the model interface


class FeatureModel(nn.Module):
    """Base of every model here: logits from ``forward``, plus ``embed``/``forward_features``.

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


def _run_blocks(blocks: nn.Sequential, x: Tensor, collect: bool) -> tuple[list[Tensor], Tensor]:
    maps: list[Tensor] = []
    for block in blocks:
        x = block(x)
        if collect:
            maps.append(x)
    return maps, x


# --------------------------------------------------------------------------- DC networks


class ConvNet(FeatureModel):
    """DC's ConvNet: ``depth`` blocks of Conv3x3(width) -> norm -> activation -> 2x2 pooling,
    then one Linear over the flattened map (128*4*4 = 2048 inputs at 32 px).

    * 1-channel 28-px input: the first conv pads by 3 (28 -> 32), as DC does for MNIST.
    * Small inputs: a block skips its pooling when its map is already 1x1, or when pooling would
      leave a 1x1 map for a later block (its norm would see one value per channel); so depth 3
      at 8 px runs 8 -> 4 -> 2 -> 1, depth 4 runs 8 -> 4 -> 2 -> 2 -> 1, and the last map and
      ``feature_dim`` are as with plain "skip at 1x1".
    * ``forward_features`` maps: the output of each block (after its pooling).
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: int,
        width: int = 128,  # DC's net_width
        depth: int | None = None,  # None: convnet_depth(image_size), DC's rule (3 at <= 32 px)
        activation: str = "relu",  # DC's net_act
        norm: str = "instancenorm",  # DC's net_norm: GroupNorm(C, C), i.e. per-channel IN
        pooling: str = "avgpooling",  # DC's net_pooling
    ) -> None:
        super().__init__()
        _check_choice("norm", norm, NORMS)
        _check_choice("activation", activation, ACTIVATIONS)
        _check_choice("pooling", pooling, POOLINGS)
        depth = convnet_depth(image_size) if depth is None else depth
        if depth < 1 or width < 1:
            raise ArchConfigError(f"ConvNet needs depth >= 1 and width >= 1, got {depth}, {width}")
        self.width, self.depth = width, depth
        self.activation, self.norm, self.pooling = activation, norm, pooling

        blocks: list[nn.Module] = []
        size, in_channels = image_size, channels
        for d in range(depth):
            padding = 3 if d == 0 and channels == 1 and image_size == 28 else 1
            size = _conv_out(size, 3, padding, 1)
            layers: list[nn.Module] = [
                nn.Conv2d(in_channels, width, kernel_size=3, padding=padding)
            ]
            if norm != "none":
                layers.append(make_norm(norm, width, size, size))
            layers.append(make_activation(activation))
            pool = make_pool(pooling)
            if pool is not None and _keep_pool(size, last=d == depth - 1):
                layers.append(pool)
                size //= 2
            blocks.append(nn.Sequential(*layers))
            in_channels = width
        self.features = nn.Sequential(*blocks)
        self.feature_dim = width * size * size
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def _trunk(self, x: Tensor, collect: bool) -> tuple[list[Tensor], Tensor]:
        maps, x = _run_blocks(self.features, x, collect)
        return maps, x.flatten(1)


class MLP(FeatureModel):
    """DC's MLP: flatten -> Linear(C*H*W, 128) -> ReLU -> Linear(128, 128) -> ReLU -> Linear.

    The embedding is the second hidden layer's activation; ``forward_features`` maps is empty.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: int,
        width: int = 128,  # DC's hidden size
    ) -> None:
        super().__init__()
        self.fc_1 = nn.Linear(channels * image_size * image_size, width)
        self.fc_2 = nn.Linear(width, width)
        self.classifier = nn.Linear(width, num_classes)
        self.act = nn.ReLU()
        self.feature_dim = width

    def _trunk(self, x: Tensor, collect: bool) -> tuple[list[Tensor], Tensor]:
        x = self.act(self.fc_1(x.flatten(1)))
        return [], self.act(self.fc_2(x))


class LeNet(FeatureModel):
    """DC's LeNet: Conv(C, 6, 5, pad 2 if C == 1 else 0) -> ReLU -> MaxPool2 -> Conv(6, 16, 5)
    -> ReLU -> MaxPool2 -> FC 120 -> ReLU -> FC 84 -> ReLU -> FC classes.

    * Small inputs: a 5x5 conv whose input is too small gets the least padding that leaves a
      1x1 map (at 8 px the second conv sees 4x4 (1 channel) or 2x2 (3 channels) and pads by 1
      or 2); a max-pool is skipped on a 1x1 map. The first FC's input size comes from a dummy
      forward at construction (16*5*5 = 400 at DC's 28/32 px).
    * Embedding: the 84-d activation before the last FC. ``forward_features`` maps: the two
      conv blocks' outputs (after pooling).
    """

    def __init__(self, channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        size = image_size
        blocks: list[nn.Module] = []
        for in_ch, out_ch, padding in ((channels, 6, 2 if channels == 1 else 0), (6, 16, 0)):
            padding = _fit_padding(size, 5, padding)
            size = _conv_out(size, 5, padding, 1)
            layers: list[nn.Module] = [
                nn.Conv2d(in_ch, out_ch, kernel_size=5, padding=padding),
                nn.ReLU(),
            ]
            if size > 1:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                size //= 2
            blocks.append(nn.Sequential(*layers))
        self.features = nn.Sequential(*blocks)
        self.fc_1 = nn.Linear(_flat_dim(self.features, channels, image_size), 120)
        self.fc_2 = nn.Linear(120, 84)
        self.classifier = nn.Linear(84, num_classes)
        self.act = nn.ReLU()
        self.feature_dim = 84

    def _trunk(self, x: Tensor, collect: bool) -> tuple[list[Tensor], Tensor]:
        maps, x = _run_blocks(self.features, x, collect)
        x = self.act(self.fc_1(x.flatten(1)))
        return maps, self.act(self.fc_2(x))


class AlexNet(FeatureModel):
    """DC's AlexNet (no normalisation): Conv(C, 128, 5, pad 4 if C == 1 else 2) -> ReLU -> MaxPool2
    -> Conv(128, 192, 5, pad 2) -> ReLU -> MaxPool2 -> Conv(192, 256, 3) -> ReLU
    -> Conv(256, 192, 3) -> ReLU -> Conv(192, 192, 3) -> ReLU -> MaxPool2 -> Linear.

    * Small inputs: a max-pool is skipped on a 1x1 map; the Linear's input size comes from a
      dummy forward at construction (192*4*4 = 3072 at DC's 28/32 px).
    * ``forward_features`` maps: the output of each of the 5 conv stages (after any pooling).
    """

    def __init__(self, channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        # (in, out, kernel, padding, pool after)
        spec = (
            (channels, 128, 5, 4 if channels == 1 else 2, True),
            (128, 192, 5, 2, True),
            (192, 256, 3, 1, False),
            (256, 192, 3, 1, False),
            (192, 192, 3, 1, True),
        )
        size = image_size
        blocks: list[nn.Module] = []
        for in_ch, out_ch, kernel, padding, pool in spec:
            size = _conv_out(size, kernel, padding, 1)
            layers: list[nn.Module] = [
                nn.Conv2d(in_ch, out_ch, kernel_size=kernel, padding=padding),
                nn.ReLU(),
            ]
            if pool and _keep_pool(size, last=True):  # no norm layers: 1x1 maps are fine
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                size //= 2
            blocks.append(nn.Sequential(*layers))
        self.features = nn.Sequential(*blocks)
        self.feature_dim = _flat_dim(self.features, channels, image_size)
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def _trunk(self, x: Tensor, collect: bool) -> tuple[list[Tensor], Tensor]:
        maps, x = _run_blocks(self.features, x, collect)
        return maps, x.flatten(1)


class VGG(FeatureModel):
    """DC's VGG: for each number in ``cfg`` Conv3x3(pad 1) -> norm -> ReLU, "M" a 2x2 max-pool;
    then Linear(512 * s * s, classes) with ``s`` the final map size (1 at 32 px, DC's 512 inputs).

    * 1-channel 28-px input: the first conv pads by 3 (28 -> 32), as DC does for MNIST.
    * Small inputs: an "M" is skipped on a 1x1 map, or when it would leave a 1x1 map for later
      convs (their norm would see one value per channel): at 8 px the 4th "M" is skipped, the
      512-channel convs see 2x2 maps and the last "M" gives 1x1 (512 features, as at 32 px).
    * ``forward_features`` maps: the output of each stage (the layers up to and including an "M").
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: int,
        cfg: Sequence[int | str] = VGG11_CFG,  # VGG-11, the VGG of DC's cross-arch tables
        norm: str = "instancenorm",  # DC's VGG default: GroupNorm(C, C)
    ) -> None:
        super().__init__()
        _check_choice("norm", norm, NORMS)
        self.norm = norm
        size, in_ch = image_size, channels
        stages: list[nn.Module] = []
        layers: list[nn.Module] = []
        for i, item in enumerate(cfg):
            if item == "M":
                if _keep_pool(size, last=not any(isinstance(c, int) for c in cfg[i + 1 :])):
                    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                    size //= 2
                stages.append(nn.Sequential(*layers))
                layers = []
                continue
            if not isinstance(item, int):
                raise ArchConfigError(f"VGG cfg items are ints or 'M', got {item!r}")
            padding = 3 if i == 0 and channels == 1 and image_size == 28 else 1
            size = _conv_out(size, 3, padding, 1)
            layers += [
                nn.Conv2d(in_ch, item, kernel_size=3, padding=padding),
                make_norm(norm, item, size, size),
                nn.ReLU(),
            ]
            in_ch = item
        if layers:
            stages.append(nn.Sequential(*layers))
        self.features = nn.Sequential(*stages)
        self.feature_dim = _flat_dim(self.features, channels, image_size)
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def _trunk(self, x: Tensor, collect: bool) -> tuple[list[Tensor], Tensor]:
        maps, x = _run_blocks(self.features, x, collect)
        return maps, x.flatten(1)


class _BasicBlock(nn.Module):
    """DC's ResNet BasicBlock; ``avgpool_downsample`` gives DC's BasicBlock_AP (a stride-1 conv
    followed by AvgPool2d(2, 2) in the main path and the shortcut instead of a strided conv)."""

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int,
        norm: str,
        size: int,
        avgpool_downsample: bool,
    ) -> None:
        super().__init__()
        # small inputs: no downsampling to 1x1 (a conv -> norm always follows), see _keep_pool
        downsample = stride != 1 and _keep_pool(size, last=False)
        self.pooled = avgpool_downsample and downsample
        conv_stride = 2 if downsample and not avgpool_downsample else 1
        conv_size = _conv_out(size, 3, 1, conv_stride)
        self.out_size = size // 2 if self.pooled else conv_size
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=conv_stride, padding=1, bias=False)
        self.bn1 = make_norm(norm, planes, conv_size, conv_size)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = make_norm(norm, planes, self.out_size, self.out_size)
        self.act = nn.ReLU()
        self.downsample = nn.AvgPool2d(kernel_size=2, stride=2) if self.pooled else nn.Identity()
        self.shortcut: nn.Module = nn.Identity()
        if downsample or in_planes != planes:
            layers: list[nn.Module] = [
                nn.Conv2d(in_planes, planes, 1, stride=conv_stride, bias=False),
            ]
            if self.pooled:
                layers.append(nn.AvgPool2d(kernel_size=2, stride=2))
            layers.append(make_norm(norm, planes, self.out_size, self.out_size))
            self.shortcut = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.downsample(self.act(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class ResNet(FeatureModel):
    """DC's CIFAR ResNet with BasicBlocks: stem Conv3x3(C, 64, stride 1) -> norm -> ReLU (no
    max-pool), stages of widths 64/128/256/512 with strides 1/2/2/2, then the head.

    * ``layers`` (2, 2, 2, 2) is ResNet-18, (1, 1, 1, 1) ResNet-10.
    * ``avgpool_downsample=True`` is DC's ResNet_AP: stride-1 convs followed by AvgPool2d(2, 2).
    * Small inputs: a stage downsamples (stride or pool) only if the map stays at least 2x2, as
      every downsampling is followed by conv -> norm; at 8 px: 8 -> 8 -> 4 -> 2 -> 2.
    * ``head="gap"`` (global average pool -> Linear(512)) is DC's ResNet at 32 px, and at every
      size here (DC's fixed 4x4 average pool only fits 32 px). ``head="flatten"`` is DC's ResNet_AP
      head: Linear over the flattened last map (512*4*4 at 32 px, 512*2*2 at 8 px).
    * ``forward_features`` maps: the outputs of the 4 stages.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: int,
        layers: Sequence[int] = (2, 2, 2, 2),  # ResNet-18
        norm: str = "instancenorm",  # DC's ResNet default: GroupNorm(C, C)
        avgpool_downsample: bool = False,  # True: DC's ResNet_AP
        head: str | None = None,  # None: DC's choice, "flatten" for the AP variant, else "gap"
    ) -> None:
        super().__init__()
        _check_choice("norm", norm, NORMS)
        head = head if head is not None else ("flatten" if avgpool_downsample else "gap")
        _check_choice("head", head, ("gap", "flatten"))
        if len(layers) != 4 or min(layers) < 1:
            raise ArchConfigError(f"ResNet needs 4 stages of >= 1 block, got {tuple(layers)}")
        self.norm, self.head = norm, head
        self.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = make_norm(norm, 64, image_size, image_size)
        self.act = nn.ReLU()
        size, in_planes = image_size, 64
        stages: list[nn.Module] = []
        for planes, num_blocks, stride in zip(
            (64, 128, 256, 512), layers, (1, 2, 2, 2), strict=True
        ):
            blocks: list[nn.Module] = []
            for s in [stride] + [1] * (num_blocks - 1):
                block = _BasicBlock(in_planes, planes, s, norm, size, avgpool_downsample)
                blocks.append(block)
                size, in_planes = block.out_size, planes
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.feature_dim = 512 if head == "gap" else 512 * size * size
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def _trunk(self, x: Tensor, collect: bool) -> tuple[list[Tensor], Tensor]:
        x = self.act(self.bn1(self.conv1(x)))
        maps, x = _run_blocks(self.layers, x, collect)
        if self.head == "gap":
            return maps, x.mean(dim=(2, 3))
        return maps, x.flatten(1)


# --------------------------------------------------------------------------- timm adapter


class TimmAdapter(FeatureModel):
    """A timm model behind the ``FeatureModel`` interface.

    ``embed`` is timm's ``forward_head(forward_features(x), pre_logits=True)`` (the pooled
    features, or the normed class token for ViT); ``forward_features`` maps are timm's
    ``forward_intermediates`` in NCHW: for ResNet-50 the stem output and the 4 stage outputs, for
    DenseNet-121 the stem output, the first 3 dense blocks' outputs and the final norm's output,
    for ViT each transformer block's patch tokens reshaped to ``[N, 192, S/p, S/p]`` (class token
    dropped).
    """

    def __init__(self, model: nn.Module, timm_name: str) -> None:
        super().__init__()
        self.model = model
        self.timm_name = timm_name
        self.feature_dim = int(getattr(model, "head_hidden_size", model.num_features))

    def _head(self, embedding: Tensor) -> Tensor:
        return self.model.get_classifier()(embedding)

    def embed(self, x: Tensor) -> Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def forward_features(self, x: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        final, maps = self.model.forward_intermediates(x)
        embedding = self.model.forward_head(final, pre_logits=True)
        return list(maps), embedding, self._head(embedding)


def _timm_model(name: str, channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    import timm  # lazy: importing timm takes seconds, and most runs never need it

    return timm.create_model(
        name, pretrained=False, num_classes=num_classes, in_chans=channels, **kwargs
    )


def _small_stem_conv(old: nn.Module, channels: int) -> nn.Conv2d:
    if not isinstance(old, nn.Conv2d):
        raise TypeError(f"expected the timm stem to be a Conv2d, found {type(old).__name__}")
    return nn.Conv2d(channels, old.out_channels, kernel_size=3, stride=1, padding=1, bias=False)


# --------------------------------------------------------------------------- registered builders


@_arch("convnet")
def convnet(channels: int, num_classes: int, image_size: int, **overrides: Any) -> FeatureModel:
    """DC's ConvNet (instance norm, ReLU, average pooling, width 128, depth by resolution)."""
    return ConvNet(channels, num_classes, image_size, **overrides)


@_arch("convnet_bn")
def convnet_bn(channels: int, num_classes: int, image_size: int, **overrides: Any) -> FeatureModel:
    """DC's ConvNetBN: ConvNet with BatchNorm2d."""
    kwargs = _fixed("convnet_bn", overrides, norm="batchnorm")
    return ConvNet(channels, num_classes, image_size, **kwargs)


@_arch("mlp")
def mlp(channels: int, num_classes: int, image_size: int, **overrides: Any) -> FeatureModel:
    """DC's 3-layer MLP (128 hidden units)."""
    return MLP(channels, num_classes, image_size, **overrides)


@_arch("lenet")
def lenet(channels: int, num_classes: int, image_size: int, **overrides: Any) -> FeatureModel:
    """DC's LeNet."""
    return LeNet(channels, num_classes, image_size, **overrides)


@_arch("alexnet")
def alexnet(channels: int, num_classes: int, image_size: int, **overrides: Any) -> FeatureModel:
    """DC's AlexNet (no normalisation)."""
    return AlexNet(channels, num_classes, image_size, **overrides)


@_arch("vgg11")
def vgg11(channels: int, num_classes: int, image_size: int, **overrides: Any) -> FeatureModel:
    """DC's VGG-11 with instance norm."""
    return VGG(channels, num_classes, image_size, **overrides)


@_arch("resnet18")
def resnet18(channels: int, num_classes: int, image_size: int, **overrides: Any) -> FeatureModel:
    """DC's ResNet-18 with instance norm."""
    kwargs = _fixed("resnet18", overrides, layers=(2, 2, 2, 2))
    return ResNet(channels, num_classes, image_size, **kwargs)


@_arch("resnet18_bn")
def resnet18_bn(channels: int, num_classes: int, image_size: int, **overrides: Any) -> FeatureModel:
    """DC's ResNet18BN: ResNet-18 with BatchNorm2d."""
    kwargs = _fixed("resnet18_bn", overrides, layers=(2, 2, 2, 2), norm="batchnorm")
    return ResNet(channels, num_classes, image_size, **kwargs)


@_arch("resnet18_ap")
def resnet18_ap(channels: int, num_classes: int, image_size: int, **overrides: Any) -> FeatureModel:
    """DC's ResNet18_AP: average-pool downsampling, flattened-map head, instance norm."""
    kwargs = _fixed("resnet18_ap", overrides, layers=(2, 2, 2, 2), avgpool_downsample=True)
    return ResNet(channels, num_classes, image_size, **kwargs)


@_arch("resnet10")
def resnet10(channels: int, num_classes: int, image_size: int, **overrides: Any) -> FeatureModel:
    """ResNet-10 (one BasicBlock per stage), DC-style, for DiM's model pool."""
    kwargs = _fixed("resnet10", overrides, layers=(1, 1, 1, 1))
    return ResNet(channels, num_classes, image_size, **kwargs)


@_arch("resnet10_ap")
def resnet10_ap(channels: int, num_classes: int, image_size: int, **overrides: Any) -> FeatureModel:
    """ResNet-10 with DC's average-pool downsampling and head, for DiM's model pool."""
    kwargs = _fixed("resnet10_ap", overrides, layers=(1, 1, 1, 1), avgpool_downsample=True)
    return ResNet(channels, num_classes, image_size, **kwargs)


@_arch("nb201")
def nb201(channels: int, num_classes: int, image_size: int, **overrides: Any) -> FeatureModel:
    """NAS-Bench-201's skeleton (C = 16, N = 5) around one cell, by default a residual cell of
    3x3 convs; ``genotype``, ``width`` and ``cells_per_stage`` override (``ddbench.nb201``)."""
    from ddbench.nb201 import NB201Net  # its module imports this one

    return NB201Net(channels, num_classes, image_size, **overrides)


@_arch("resnet50")
def resnet50(channels: int, num_classes: int, image_size: int, **overrides: Any) -> FeatureModel:
    """timm ResNet-50 (random init) with a CIFAR stem: the 7x7/2 conv becomes a 3x3/1 conv and
    the stem max-pool is removed, so 8 px runs 8 -> 8 -> 4 -> 2 -> 1 through the stages.
    ``overrides`` go to ``timm.create_model``."""
    model = _timm_model("resnet50", channels, num_classes, **overrides)
    model.conv1 = _small_stem_conv(model.conv1, channels)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # timm's
    model.maxpool = nn.Identity()
    return TimmAdapter(model, "resnet50")


@_arch("densenet121")
def densenet121(channels: int, num_classes: int, image_size: int, **overrides: Any) -> FeatureModel:
    """timm DenseNet-121 (random init) with a CIFAR stem: ``features.conv0`` 7x7/2 becomes a
    3x3/1 conv and ``features.pool0`` is removed; a transition's 2x2 average pool is skipped
    on a 1x1 map (only below 8 px). ``overrides`` go to ``timm.create_model``."""
    model = _timm_model("densenet121", channels, num_classes, **overrides)
    features = model.features
    features.conv0 = _small_stem_conv(features.conv0, channels)
    nn.init.kaiming_normal_(features.conv0.weight)  # timm's DenseNet init for convs
    features.pool0 = nn.Identity()
    size = image_size
    for name, module in features.named_children():
        if name.startswith("transition"):
            if size > 1:
                size //= 2
            else:
                module.pool = nn.Identity()
    return TimmAdapter(model, "densenet121")


@_arch("vit_tiny")
def vit_tiny(channels: int, num_classes: int, image_size: int, **overrides: Any) -> FeatureModel:
    """timm ``vit_tiny_patch16_224`` (dim 192, depth 12, 3 heads; random init) at
    ``img_size=image_size`` with patch size 4 (2 below 16 px, so 8 px still gives 4x4 = 16
    tokens, as 16 px does). ``patch_size`` and other ``overrides`` go to ``timm.create_model``."""
    patch_size = overrides.pop("patch_size", 4 if image_size >= 16 else 2)
    if image_size % patch_size:
        raise ArchConfigError(
            f"vit_tiny needs image_size divisible by patch_size, got {image_size}/{patch_size}"
        )
    model = _timm_model(
        "vit_tiny_patch16_224",
        channels,
        num_classes,
        img_size=image_size,
        patch_size=patch_size,
        **overrides,
    )
    return TimmAdapter(model, "vit_tiny")
