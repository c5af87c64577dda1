"""Tests for ddbench.augment: DSA families, seeding, siamese sharing, ZCA round trip."""

import subprocess
import sys

import pytest
import torch

from ddbench.augment import (
    FAMILIES,
    ZCA,
    DSAParams,
    apply_dsa,
    default_strategy,
    dsa,
    dsa_siamese,
    sample_dsa,
)

REAL_FAMILIES = ["color", "crop", "cutout", "flip", "scale", "rotate"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int = 8, c: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=_gen(seed))


@pytest.mark.parametrize("family", REAL_FAMILIES)
def test_family_shape_grad_and_change(family: str) -> None:
    x = _images().requires_grad_(True)
    params = sample_dsa(family, len(x), _gen(1))
    if family == "flip":  # force every sample to flip so the image must change
        params = DSAParams("flip", {"flip": torch.ones(len(x))})
    y = apply_dsa(x, params)
    assert params.family == family
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not torch.allclose(y, x)
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("family", REAL_FAMILIES)
def test_family_bfloat16(family: str) -> None:
    x = _images(n=2, size=8).bfloat16().requires_grad_(True)
    y = dsa(x, family, _gen(2))
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    y.float().sum().backward()
    assert torch.isfinite(x.grad.float()).all()


def test_values_shapes_and_ranges() -> None:
    g = _gen(3)
    for family in REAL_FAMILIES:
        p = sample_dsa(family, 5, g)
        assert set(p.values) == set(FAMILIES[family].draws)
        assert all(v.shape == (5,) and v.dtype == torch.float32 for v in p.values.values())
    v = sample_dsa("rotate", 1000, g).values["angle"]
    assert v.abs().max() <= 15.0
    s = sample_dsa("scale", 1000, g).values["sx"]
    assert s.min() >= 1 / 1.2 and s.max() <= 1.2


def test_seed_determinism() -> None:
    x = _images()
    strategy = default_strategy("cifar10")
    a = dsa(x, strategy, _gen(7))
    b = dsa(x, strategy, _gen(7))
    assert torch.equal(a, b)
    outs = [dsa(x, "color_crop_scale_rotate", _gen(s)) for s in range(5)]
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])
    assert not torch.allclose(dsa(x, "rotate", _gen(1)), dsa(x, "rotate", _gen(2)))


def test_global_rng_untouched() -> None:
    state = torch.get_rng_state()
    dsa(_images(), default_strategy("cifar10"), _gen(0))
    dsa_siamese([_images()], default_strategy("cifar10"), _gen(0))
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("family", REAL_FAMILIES)
def test_siamese_identical_transform(family: str) -> None:
    img = _images(n=1, seed=4)
    real, syn = img.expand(6, -1, -1, -1), img.expand(3, -1, -1, -1).clone().requires_grad_(True)
    g = _gen(5)
    for _ in range(4):  # several draws, so flip gets both outcomes
        out_real, out_syn = dsa_siamese([real, syn], family, g)
        assert out_real.shape == real.shape and out_syn.shape == syn.shape
        ref = out_real[0]
        for out in (out_real, out_syn):
            torch.testing.assert_close(out, ref.expand_as(out), rtol=0, atol=1e-6)
    out_syn.sum().backward()
    assert syn.grad is not None and torch.isfinite(syn.grad).all()


@pytest.mark.parametrize("family", ["color", "crop", "cutout", "scale", "rotate"])
def test_per_sample_transforms_differ(family: str) -> None:
    x = _images(n=1, seed=6).expand(6, -1, -1, -1)
    y = dsa(x, family, _gen(8))
    distinct = {tuple(torch.round(s.flatten() * 1e4).tolist()) for s in y}
    assert len(distinct) > 1


def test_flip_is_exact_mirror() -> None:
    x = torch.arange(2 * 1 * 3 * 4, dtype=torch.float32).view(2, 1, 3, 4)
    y = apply_dsa(x, DSAParams("flip", {"flip": torch.tensor([1.0, 0.0])}))
    assert torch.equal(y[0, 0], torch.tensor([[3.0, 2, 1, 0], [7, 6, 5, 4], [11, 10, 9, 8]]))
    assert torch.equal(y[1], x[1])


def test_crop_zero_shift_identity_and_integer_shift() -> None:
    x = _images(n=2)
    zero = torch.zeros(1)
    assert torch.equal(apply_dsa(x, DSAParams("crop", {"tx": zero, "ty": zero})), x)
    # shift right by 2 px (2/16 of the side) with zero padding
    y = apply_dsa(x, DSAParams("crop", {"tx": torch.tensor([2 / 16]), "ty": zero}))
    assert torch.equal(y[..., 2:], x[..., :-2])
    assert torch.equal(y[..., :2], torch.zeros_like(y[..., :2]))


def test_affine_identity() -> None:
    x = _images(n=3)
    one, zero = torch.ones(1), torch.zeros(1)
    y = apply_dsa(x, DSAParams("scale", {"sx": one, "sy": one}))
    torch.testing.assert_close(y, x, rtol=0, atol=1e-5)
    y = apply_dsa(x, DSAParams("rotate", {"angle": zero}))
    torch.testing.assert_close(y, x, rtol=0, atol=1e-5)


def test_cutout_zeroes_half_side_square() -> None:
    x = torch.ones(1, 2, 16, 16)
    y = apply_dsa(x, DSAParams("cutout", {"cx": torch.tensor([0.5]), "cy": torch.tensor([0.5])}))
    assert (y == 0).all(dim=1).sum() == 8 * 8
    assert (y[:, :, 4:12, 4:12] == 0).all()


def test_color_values_identity() -> None:
    x = _images(n=2)
    v = {"brightness": torch.zeros(1), "saturation": torch.ones(1), "contrast": torch.ones(1)}
    torch.testing.assert_close(apply_dsa(x, DSAParams("color", v)), x)


def test_validation() -> None:
    with pytest.raises(ValueError, match="valid families"):
        sample_dsa("color_warp", 4, _gen(0))
    with pytest.raises(ValueError):
        apply_dsa(_images(n=4), DSAParams("rotate", {"angle": torch.zeros(3)}))
    assert torch.equal(dsa(_images(), "none", _gen(0)), _images())


def test_default_strategy() -> None:
    for name in ("digits", "mnist", "svhn", "MNIST"):
        assert "flip" not in default_strategy(name).split("_")
    for name in ("cifar10", "fashion_mnist"):
        assert default_strategy(name) == "color_crop_cutout_flip_scale_rotate"


def test_import_does_not_load_kornia() -> None:
    code = "import sys, ddbench.augment; assert 'kornia' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("shape", [(64, 1, 8, 8), (32, 3, 8, 8)])
def test_zca_roundtrip_and_whitening(shape: tuple[int, ...]) -> None:
    g = _gen(9)
    n, d = shape[0], shape[1] * shape[2] * shape[3]
    mix = torch.eye(d) + 0.3 * torch.randn(d, d, generator=g)  # correlated pixels
    x = (3.0 * torch.randn(n, d, generator=g) @ mix + 0.5).view(shape)
    zca = ZCA().fit(x)
    xw = zca.transform(x)
    assert xw.shape == x.shape
    torch.testing.assert_close(zca.inverse(xw), x, rtol=0, atol=1e-3)

    def cov(t: torch.Tensor) -> torch.Tensor:
        f = t.flatten(1) - t.flatten(1).mean(0)
        return f.T @ f / (len(f) - 1)

    # Kornia's ZCA maps each covariance eigenvalue s to s / (s + eps): ~1 on the data's span
    # (here s >> eps), 0 off it (N <= D leaves rank N - 1).
    c, raw = cov(xw), cov(x)
    s_raw = torch.linalg.eigvalsh(raw.double()).clamp_min(0)
    s_white = torch.linalg.eigvalsh(c.double())
    torch.testing.assert_close(s_white, s_raw / (s_raw + 0.1), rtol=0, atol=1e-3)
    assert (s_white > 0.9).sum() >= 0.75 * (n - 1)

    def off_ratio(m: torch.Tensor) -> float:
        return float((m - torch.diag(torch.diag(m))).abs().mean() / torch.diag(m).mean())

    if n >= d:  # (near) full rank: the whitened covariance is diagonal dominant, raw is not
        assert off_ratio(c) < 0.05 < 0.1 < off_ratio(raw)


def test_zca_state_dict_safetensors_and_grad() -> None:
    from safetensors.torch import load, save

    x = torch.rand(40, 1, 4, 4, generator=_gen(10))
    zca = ZCA().fit(x)
    loaded = ZCA.from_state_dict(load(save(zca.state_dict())))
    assert loaded.eps == pytest.approx(0.1)
    torch.testing.assert_close(loaded.transform(x), zca.transform(x))
    xs = x[:4].clone().requires_grad_(True)
    zca.transform(xs).sum().backward()
    assert torch.isfinite(xs.grad).all() and xs.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        zca.transform(torch.rand(2, 3, 4, 4))
