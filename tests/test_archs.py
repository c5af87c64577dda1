"""Tests for ddbench.archs: every registered architecture, ConvNet's options and the NAS grid."""

from __future__ import annotations

import itertools
import random
import subprocess
import sys

import pytest
import torch
from torch import nn

from ddbench.archs import (
    ACTIVATIONS,
    ARCHS,
    NORMS,
    POOLINGS,
    ArchConfigError,
    FeatureModel,
    build_arch,
)
from ddbench.archs.dc import ConvNet, convnet_depth
from ddbench.registry import UnknownNameError

TIMM_ARCHS = {"resnet50", "densenet121", "vit_tiny"}
SIZES = [(1, 8), (3, 32)]  # (channels, image_size): the embedded digits set, CIFAR-like
NUM_CLASSES = 10


@pytest.fixture(autouse=True)
def _one_thread():
    # small models on a 2-CPU box: intra-op threads only add overhead, and thrash badly (10x)
    # when another process is busy
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _inputs(channels: int, size: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("channels", "size"), SIZES, ids=[f"{c}ch{s}px" for c, s in SIZES])
@pytest.mark.parametrize("name", ARCHS.names())
def test_arch_contract(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = build_arch(name, channels=channels, num_classes=NUM_CLASSES, image_size=size)
    assert isinstance(model, FeatureModel)
    assert isinstance(model.feature_dim, int) and model.feature_dim > 0
    x = _inputs(channels, size)

    model.eval()
    with torch.no_grad():
        logits = model(x)
        emb = model.embed(x)
        maps, emb_ff, logits_ff = model.forward_features(x)
    assert logits.shape == (2, NUM_CLASSES)
    assert emb.shape == (2, model.feature_dim)
    assert torch.allclose(logits_ff, logits, atol=1e-5)
    assert torch.allclose(emb_ff, emb, atol=1e-5)
    assert isinstance(maps, list)
    if name != "mlp":
        assert maps, "conv nets expose their block/stage maps"
    for m in maps:
        assert m.dim() == 4 and m.shape[0] == 2 and min(m.shape[1:]) >= 1
    # the network must depend on its input (GroupNorm(C, C) on a 1x1 map would not)
    assert not torch.allclose(logits[0], logits[1])

    model.train()
    model.zero_grad()
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1]))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(g is None or torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", sorted(set(ARCHS.names()) - TIMM_ARCHS))
def test_builders_deterministic_given_seed(name: str) -> None:
    states = []
    for _ in range(2):
        torch.manual_seed(123)
        states.append(build_arch(name, 1, NUM_CLASSES, 8).state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_registry_names() -> None:
    expected = {
        "convnet",
        "convnet_bn",
        "mlp",
        "lenet",
        "alexnet",
        "vgg11",
        "resnet18",
        "resnet18_bn",
        "resnet18_ap",
        "resnet10",
        "resnet10_ap",
        "nb201",
        "resnet50",
        "densenet121",
        "vit_tiny",
    }
    assert set(ARCHS.names()) == expected


def test_every_arch_describes_itself() -> None:
    """`ddbench ls archs -v` prints each class's docstring's first paragraph."""
    assert all(ARCHS.get(name).description() for name in ARCHS.names())


def test_unknown_arch_suggests_close_name() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'convnet'"):
        build_arch("convnt", 3, 10, 32)
    with pytest.raises(KeyError):
        ARCHS.get("resnet181")


@pytest.mark.parametrize(  # a fresh interpreter each (4 s): the plugin modules are `slow`
    "module",
    [""] + [pytest.param(m, marks=pytest.mark.slow) for m in ("._base", ".dc", ".timm", ".nb201")],
)
def test_each_archs_module_imports_alone_without_timm(module: str) -> None:
    """Imported first in a fresh process, every module of the package loads (no import cycle),
    registers every architecture and leaves timm unimported."""
    code = (
        f"import sys, ddbench.archs{module}; from ddbench.archs import ARCHS; "
        "assert {'convnet', 'nb201', 'vit_tiny'} <= set(ARCHS); "
        "assert 'timm' not in sys.modules, 'timm imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("size", "depth"), [(8, 3), (16, 3), (28, 3), (32, 3), (64, 4), (128, 5), (256, 6)]
)
def test_convnet_depth_rule(size: int, depth: int) -> None:
    assert convnet_depth(size) == depth


def test_convnet_default_depth_and_dc_shape() -> None:
    assert ConvNet(3, 10, 64, width=8).depth == 4
    net = ConvNet(3, 10, 32)
    assert (net.depth, net.width, net.feature_dim) == (3, 128, 2048)
    assert net.classifier.in_features == 2048


def test_convnet_28px_single_channel_padding() -> None:
    net = ConvNet(1, 10, 28)
    first_conv = net.features[0][0]
    assert first_conv.padding == (3, 3)
    assert net.feature_dim == 128 * 4 * 4  # 28 -> 32 -> 16 -> 8 -> 4, as DC
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert ConvNet(1, 10, 32).features[0][0].padding == (1, 1)
    assert ConvNet(3, 10, 28).features[0][0].padding == (1, 1)


def test_instancenorm_is_groupnorm_per_channel() -> None:
    for model in (ConvNet(3, 10, 32, width=32), build_arch("vgg11", 3, 10, 8)):
        norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
        assert norms and all(m.num_groups == m.num_channels and m.affine for m in norms)
        assert not any(isinstance(m, nn.InstanceNorm2d) for m in model.modules())
    resnet = build_arch("resnet18", 3, 10, 8)
    norms = [m for m in resnet.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 1 + 2 * 8 + 3  # stem, two per block, three shortcuts
    assert all(m.num_groups == m.num_channels for m in norms)


def test_other_norms() -> None:
    net = ConvNet(3, 10, 32, width=32, norm="groupnorm")
    assert all(m.num_groups == 4 for m in net.modules() if isinstance(m, nn.GroupNorm))
    net = ConvNet(3, 10, 32, width=32, norm="layernorm")
    shapes = [tuple(m.normalized_shape) for m in net.modules() if isinstance(m, nn.LayerNorm)]
    assert shapes == [(32, 32, 32), (32, 16, 16), (32, 8, 8)]
    assert any(isinstance(m, nn.BatchNorm2d) for m in build_arch("convnet_bn", 3, 10, 32).modules())
    net = ConvNet(3, 10, 32, width=32, norm="none")
    assert not any(
        isinstance(m, nn.GroupNorm | nn.LayerNorm | nn.BatchNorm2d) for m in net.modules()
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"norm": "instance"},
        {"norm": "InstanceNorm"},
        {"activation": "gelu"},
        {"pooling": "max"},
        {"pooling": "avg"},
    ],
)
def test_bad_convnet_option_raises(kwargs: dict[str, str]) -> None:
    ((key, value),) = kwargs.items()
    allowed = {"norm": NORMS, "activation": ACTIVATIONS, "pooling": POOLINGS}[key]
    with pytest.raises(ValueError, match=f"unknown {key} '{value}'") as info:
        build_arch("convnet", 3, 10, 32, **kwargs)
    assert isinstance(info.value, ArchConfigError)
    assert all(repr(a) in str(info.value) for a in allowed)


def test_bad_norm_elsewhere_and_pinned_options() -> None:
    with pytest.raises(ValueError, match="allowed values"):
        build_arch("resnet18", 3, 10, 32, norm="bn")
    with pytest.raises(ValueError, match="allowed values"):
        build_arch("vgg11", 3, 10, 32, norm="bn")
    with pytest.raises(ValueError, match="fixes norm"):
        build_arch("convnet_bn", 3, 10, 32, norm="instancenorm")
    with pytest.raises(ValueError, match="image_size"):
        build_arch("convnet", 3, 10, 0)


def test_small_input_downsampling_rules() -> None:
    # depth 3 at 8 px: 8 -> 4 -> 2 -> 1; depth 4 keeps its norms off 1x1 maps: 8 -> 4 -> 2 -> 2 -> 1
    x = torch.zeros(2, 1, 8, 8)
    maps, _, _ = ConvNet(1, 10, 8, width=8).forward_features(x)
    assert [m.shape[-1] for m in maps] == [4, 2, 1]
    maps, _, _ = ConvNet(1, 10, 8, width=8, depth=4).forward_features(x)
    assert [m.shape[-1] for m in maps] == [4, 2, 2, 1]
    maps, _, _ = ConvNet(1, 10, 8, width=8, depth=4, pooling="none").forward_features(x)
    assert [m.shape[-1] for m in maps] == [8, 8, 8, 8]
    # AP ResNet at 8 px: the last stage stays 2x2 and the head flattens it
    maps, emb, _ = build_arch("resnet18_ap", 1, 10, 8).forward_features(x)
    assert [m.shape[-1] for m in maps] == [8, 4, 2, 2] and emb.shape == (2, 512 * 2 * 2)
    # LeNet at 8 px pads its second conv instead of failing
    maps, _, _ = build_arch("lenet", 1, 10, 8).forward_features(x)
    assert [m.shape[-1] for m in maps] == [4, 1]


def _nas_grid() -> list[tuple[int, int, str, str, str]]:
    return list(itertools.product((32, 64, 128, 256), (1, 2, 3, 4), ACTIVATIONS, NORMS, POOLINGS))


def _run_grid(combos: list[tuple[int, int, str, str, str]], channels: int, size: int) -> None:
    x = _inputs(channels, size)
    with torch.no_grad():
        for width, depth, act, norm, pool in combos:
            net = ConvNet(channels, 10, size, width, depth, act, norm, pool).eval()
            out = net(x)
            combo = (width, depth, act, norm, pool)
            assert out.shape == (2, 10) and torch.isfinite(out).all(), combo
            assert not torch.allclose(out[0], out[1]), f"{combo} ignores its input"


def test_nas_grid_size() -> None:
    assert len(_nas_grid()) == 720


@pytest.mark.slow  # 720 networks built and run (10 s)
@pytest.mark.parametrize(("channels", "size"), [(1, 8), (3, 16)])
def test_nas_grid_all_combinations(channels: int, size: int) -> None:
    _run_grid(_nas_grid(), channels=channels, size=size)


def test_nas_grid_sample_at_32px() -> None:
    _run_grid(random.Random(0).sample(_nas_grid(), 60), channels=3, size=32)


def test_timm_small_stems() -> None:
    torch.manual_seed(0)
    resnet = build_arch("resnet50", 3, 10, 32).model
    assert resnet.conv1.kernel_size == (3, 3) and resnet.conv1.stride == (1, 1)
    assert isinstance(resnet.maxpool, nn.Identity)
    densenet = build_arch("densenet121", 1, 10, 8).model
    assert densenet.features.conv0.kernel_size == (3, 3)
    assert densenet.features.conv0.in_channels == 1
    assert isinstance(densenet.features.pool0, nn.Identity)
    vit = build_arch("vit_tiny", 1, 10, 8).model
    assert vit.patch_embed.proj.kernel_size == (2, 2)
    assert build_arch("vit_tiny", 3, 10, 32).model.patch_embed.proj.kernel_size == (4, 4)
