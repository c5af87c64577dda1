"""Network architectures for training on, distilling with and evaluating distilled data.

What lives here
---------------
* ``ARCHS``, the architecture registry (name -> ``Arch`` plugin class), and ``build_arch``, the
  one entry point the rest of ddbench uses::

      model = build_arch("convnet", channels=3, num_classes=10, image_size=32, width=64)

* One module per family, each registering its own names (found by ``import_all``, like the
  methods): ``dc`` (the small networks of DC/DSA/DM: ``convnet``, ``convnet_bn``, ``mlp``,
  ``lenet``, ``alexnet``, ``vgg11``, ``resnet18``, ``resnet18_bn``, ``resnet18_ap``,
  ``resnet10``, ``resnet10_ap``), ``nb201`` (the NAS-Bench-201 cell space and its skeleton,
  ``nb201``) and ``timm`` (``resnet50``, ``densenet121``, ``vit_tiny``; timm is imported only
  when one is built, because importing it costs seconds).
* ``_base``: the model interface and option-checked layers every family uses, public here:
  ``FeatureModel``, ``ArchConfigError``, ``NORMS`` / ``ACTIVATIONS`` / ``POOLINGS`` and
  ``make_norm`` / ``make_activation`` / ``make_pool``.

Every model is a ``FeatureModel``: it maps normalised images ``[N, C, S, S]`` (``S`` =
``image_size``) to logits ``[N, num_classes]`` and also offers ``embed(x)`` (the flattened
features the final classifier sees, ``[N, feature_dim]``) and ``forward_features(x)`` ->
``(maps, embedding, logits)`` for attention/feature-matching methods (DataDAM, D2M). What ``maps``
holds for each architecture is written in the model class docstrings. Every architecture builds
and runs from 8 px (the embedded digits set) to 128 px (``dc`` says how at small sizes).

Adding an architecture
----------------------
One file: a new module in ``ddbench/archs/`` (an underscore name makes a helper, not a
plugin), a file given with ``--include``, or a module named by an entry point in group
``ddbench.archs``; nothing else changes::

    from ddbench.archs import ARCHS, Arch, FeatureModel

    @ARCHS.register
    class MyNetArch(Arch):
        '''My network (this first paragraph is its line in `ddbench ls archs -v`).'''

        name = "my_net"

        def build(self, channels, num_classes, image_size, **overrides) -> FeatureModel:
            return MyNet(channels, num_classes, image_size, **overrides)

``MyNet`` subclasses ``FeatureModel``: set ``self.classifier`` (the final layer) and
``self.feature_dim``, and implement ``_trunk(x, collect)`` returning ``(maps, embedding)``. Use
``make_norm``, ``make_activation`` and ``make_pool`` so bad option values raise
``ArchConfigError`` listing the allowed values. The parametrised tests in ``tests/test_archs.py``
pick a built-in name up automatically (8 px and 32 px must both work). ``build`` must be
deterministic given torch's global RNG state, which callers seed.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator

from ddbench.archs._base import (
    ACTIVATIONS,
    NORMS,
    POOLINGS,
    ArchConfigError,
    FeatureModel,
    make_activation,
    make_norm,
    make_pool,
)
from ddbench.registry import Plugin, Registry

__all__ = [
    "ACTIVATIONS",
    "ARCHS",
    "NORMS",
    "POOLINGS",
    "Arch",
    "ArchConfigError",
    "ArchName",
    "ArchNames",
    "FeatureModel",
    "build_arch",
    "known_arch",
    "make_activation",
    "make_norm",
    "make_pool",
]


class Arch(Plugin):
    """Base of every architecture plugin: a registry `name` and `build`."""

    def build(
        self, channels: int, num_classes: int, image_size: int, **overrides: Any
    ) -> FeatureModel:
        """The model for ``[N, channels, image_size, image_size]`` inputs and ``num_classes``
        outputs; ``overrides`` are the architecture's options (e.g. ``width=64``)."""
        raise NotImplementedError


ARCHS: Registry[type[Arch]] = Registry("arch", "ddbench.archs", builtins=__name__)


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
    inputs and ``num_classes`` outputs; ``overrides`` go to its ``build`` (e.g. ``width=64``).

    Raises ``UnknownNameError`` (a ``KeyError``, with did-you-mean) for an unknown name and
    ``ArchConfigError`` (a ``ValueError``) for bad sizes or option values.
    """
    arch = ARCHS.get(name)
    for what, value in (("channels", channels), ("num_classes", num_classes)):
        if not isinstance(value, int) or value < 1:
            raise ArchConfigError(f"{what} must be a positive integer, got {value!r}")
    if not isinstance(image_size, int) or image_size < 2:
        raise ArchConfigError(f"image_size must be an integer >= 2, got {image_size!r}")
    return arch().build(channels, num_classes, image_size, **overrides)
