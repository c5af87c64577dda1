"""The networks of the DC lineage (DC/DSA/DM, VICO-UoE/DatasetCondensation ``networks.py``).

What lives here
---------------
The standard small networks of dataset distillation with DC's semantics, registered as
``convnet``, ``convnet_bn``, ``mlp``, ``lenet``, ``alexnet``, ``vgg11``, ``resnet18``,
``resnet18_bn``, ``resnet18_ap``, plus ``resnet10`` and ``resnet10_ap`` (DiM's model pool). Layers
keep PyTorch's default initialisation, as DC does. A model class (``ConvNet``, ``MLP``, ``LeNet``,
``AlexNet``, ``VGG``, ``ResNet``) takes the options; a registered name is a ``DCArch`` naming
that class and the options it pins (``convnet_bn`` is ``ConvNet`` with ``norm="batchnorm"``): a new
variant is a ``DCArch`` subclass with a docstring, ``name``, ``network`` and ``pinned``.

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

ConvNet's first convolution pads by 3 for a 1-channel input at 28 px only (MNIST, which DC's
code widens to 32 px that way). DC's code pads by 3 for every 1-channel input, which at 8 px
makes a wider network (8 -> 12 -> 6 -> 3 -> 1): on digits it scored 92.1 % val against 88.6 %
for this rule, with the same training loop (benchmarks/RESULTS.md, `eval_epoch.py`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ddbench.archs import ARCHS, Arch
from ddbench.archs._base import (
    ACTIVATIONS,
    NORMS,
    POOLINGS,
    ArchConfigError,
    FeatureModel,
    check_choice,
    make_activation,
    make_norm,
    make_pool,
    run_blocks,
)

VGG11_CFG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


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


# --------------------------------------------------------------------------- networks


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
        check_choice("norm", norm, NORMS)
        check_choice("activation", activation, ACTIVATIONS)
        check_choice("pooling", pooling, POOLINGS)
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
        maps, x = run_blocks(self.features, x, collect)
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
        maps, x = run_blocks(self.features, x, collect)
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
        maps, x = run_blocks(self.features, x, collect)
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
        check_choice("norm", norm, NORMS)
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
        maps, x = run_blocks(self.features, x, collect)
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
        check_choice("norm", norm, NORMS)
        head = head if head is not None else ("flatten" if avgpool_downsample else "gap")
        check_choice("head", head, ("gap", "flatten"))
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
        maps, x = run_blocks(self.layers, x, collect)
        if self.head == "gap":
            return maps, x.mean(dim=(2, 3))
        return maps, x.flatten(1)


# --------------------------------------------------------------------------- registered names


class DCArch(Arch):
    """A DC-lineage network class and the options its registered name pins."""

    network: ClassVar[type[FeatureModel]]  # the model class `build` constructs
    pinned: ClassVar[dict[str, Any]] = {}  # options the name fixes (convnet_bn: norm); {}: none

    def build(
        self, channels: int, num_classes: int, image_size: int, **overrides: Any
    ) -> FeatureModel:
        for key, value in self.pinned.items():
            if key in overrides:
                raise ArchConfigError(
                    f"arch {self.name!r} fixes {key}={value!r}; choose {key} on its base "
                    "architecture"
                )
        return self.network(channels, num_classes, image_size, **overrides, **self.pinned)


@ARCHS.register
class ConvNetArch(DCArch):
    """DC's ConvNet (instance norm, ReLU, average pooling, width 128, depth by resolution)."""

    name = "convnet"
    network = ConvNet


@ARCHS.register
class ConvNetBNArch(DCArch):
    """DC's ConvNetBN: ConvNet with BatchNorm2d."""

    name = "convnet_bn"
    network = ConvNet
    pinned = {"norm": "batchnorm"}


@ARCHS.register
class MLPArch(DCArch):
    """DC's 3-layer MLP (128 hidden units)."""

    name = "mlp"
    network = MLP


@ARCHS.register
class LeNetArch(DCArch):
    """DC's LeNet."""

    name = "lenet"
    network = LeNet


@ARCHS.register
class AlexNetArch(DCArch):
    """DC's AlexNet (no normalisation)."""

    name = "alexnet"
    network = AlexNet


@ARCHS.register
class VGG11Arch(DCArch):
    """DC's VGG-11 with instance norm."""

    name = "vgg11"
    network = VGG


@ARCHS.register
class ResNet18Arch(DCArch):
    """DC's ResNet-18 with instance norm."""

    name = "resnet18"
    network = ResNet
    pinned = {"layers": (2, 2, 2, 2)}


@ARCHS.register
class ResNet18BNArch(DCArch):
    """DC's ResNet18BN: ResNet-18 with BatchNorm2d."""

    name = "resnet18_bn"
    network = ResNet
    pinned = {"layers": (2, 2, 2, 2), "norm": "batchnorm"}


@ARCHS.register
class ResNet18APArch(DCArch):
    """DC's ResNet18_AP: average-pool downsampling, flattened-map head, instance norm."""

    name = "resnet18_ap"
    network = ResNet
    pinned = {"layers": (2, 2, 2, 2), "avgpool_downsample": True}


@ARCHS.register
class ResNet10Arch(DCArch):
    """ResNet-10 (one BasicBlock per stage), DC-style, for DiM's model pool."""

    name = "resnet10"
    network = ResNet
    pinned = {"layers": (1, 1, 1, 1)}


@ARCHS.register
class ResNet10APArch(DCArch):
    """ResNet-10 with DC's average-pool downsampling and head, for DiM's model pool."""

    name = "resnet10_ap"
    network = ResNet
    pinned = {"layers": (1, 1, 1, 1), "avgpool_downsample": True}
