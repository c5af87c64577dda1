"""timm-backed architectures, adapted to small images: ``resnet50``, ``densenet121``, ``vit_tiny``.

Random initialisation only (weights are never downloaded). Each ``Arch`` builds the timm model,
swaps its stem for small inputs and wraps it in ``TimmAdapter``, the ``FeatureModel`` interface
over timm's own ``forward_features`` / ``forward_head`` / ``forward_intermediates``. timm is
imported inside ``build`` only (``_timm_model``), because importing it costs seconds and most
runs never need it. Another timm model is one more ``Arch`` here calling ``_timm_model``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ddbench.archs import ARCHS, Arch
from ddbench.archs._base import ArchConfigError, FeatureModel


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


@ARCHS.register
class ResNet50Arch(Arch):
    """timm ResNet-50 (random init) with a CIFAR stem: the 7x7/2 conv becomes a 3x3/1 conv and
    the stem max-pool is removed, so 8 px runs 8 -> 8 -> 4 -> 2 -> 1 through the stages.
    ``overrides`` go to ``timm.create_model``."""

    name = "resnet50"

    def build(
        self, channels: int, num_classes: int, image_size: int, **overrides: Any
    ) -> FeatureModel:
        model = _timm_model("resnet50", channels, num_classes, **overrides)
        model.conv1 = _small_stem_conv(model.conv1, channels)
        # timm's ResNet init for convs
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
        return TimmAdapter(model, "resnet50")


@ARCHS.register
class DenseNet121Arch(Arch):
    """timm DenseNet-121 (random init) with a CIFAR stem: ``features.conv0`` 7x7/2 becomes a
    3x3/1 conv and ``features.pool0`` is removed; a transition's 2x2 average pool is skipped
    on a 1x1 map (only below 8 px). ``overrides`` go to ``timm.create_model``."""

    name = "densenet121"

    def build(
        self, channels: int, num_classes: int, image_size: int, **overrides: Any
    ) -> FeatureModel:
        model = _timm_model("densenet121", channels, num_classes, **overrides)
        features = model.features
        features.conv0 = _small_stem_conv(features.conv0, channels)
        nn.init.kaiming_normal_(features.conv0.weight)  # timm's DenseNet init for convs
        features.pool0 = nn.Identity()
        size = image_size
        for child, module in features.named_children():
            if child.startswith("transition"):
                if size > 1:
                    size //= 2
                else:
                    module.pool = nn.Identity()
        return TimmAdapter(model, "densenet121")


@ARCHS.register
class ViTTinyArch(Arch):
    """timm ``vit_tiny_patch16_224`` (dim 192, depth 12, 3 heads; random init) at
    ``img_size=image_size`` with patch size 4 (2 below 16 px, so 8 px still gives 4x4 = 16
    tokens, as 16 px does). ``patch_size`` and other ``overrides`` go to ``timm.create_model``."""

    name = "vit_tiny"

    def build(
        self, channels: int, num_classes: int, image_size: int, **overrides: Any
    ) -> FeatureModel:
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
