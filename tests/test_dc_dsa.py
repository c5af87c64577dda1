"""Tests for the `dc` and `dsa` methods: DC's gradient distance, loop resolution by IPC,
determinism, resume, the matching loss going down, and DSA's siamese augmentation."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch

from ddbench.context import LocalContext
from ddbench.data import RealData
from ddbench.methods import get_method
from ddbench.methods._pixel import SyntheticSet
from ddbench.methods.dc import (
    COSINE_EPS,
    DC_LOOPS,
    DCParams,
    _GradientMatcher,
    dc_loops,
    gradient_distance,
    resolve_loops,
)
from ddbench.methods.dsa import DSAMethodParams

# a few seconds per run on digits: 2 outer iterations x 2 steps, small real batches
FAST = {"iterations": 2, "outer_loop": 2, "inner_loop": 1, "batch_real": 16}


@pytest.fixture(scope="module")
def digits_data() -> RealData:
    from ddbench.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU is shared; one thread is also the deterministic choice
    yield
    torch.set_num_threads(threads)


def _tiny_real(classes: int = 3, per_class: int = 1, size: int = 8) -> RealData:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(classes * per_class, 1, size, size, generator=gen)
    y = torch.arange(classes).repeat_interleave(per_class)
    return RealData(
        name="digits",
        train_x=x,
        train_y=y,
        val_x=x,
        val_y=y,
        test_x=x,
        test_y=y,
        class_names=[str(c) for c in range(classes)],
        mean=(0.0,),
        std=(1.0,),
    )


# --------------------------------------------------------------------------- distance


def test_distance_zero_for_identical_gradients_positive_otherwise() -> None:
    gen = torch.Generator().manual_seed(1)
    grads = [
        torch.randn(8, 3, 3, 3, generator=gen),  # conv weight
        torch.randn(8, generator=gen),  # bias: skipped
        torch.randn(10, 32, generator=gen),  # linear weight
    ]
    assert float(gradient_distance(grads, grads)) == pytest.approx(0.0, abs=1e-4)
    other = [g + 0.5 * torch.randn(g.shape, generator=gen) for g in grads]
    assert float(gradient_distance(other, grads)) > 0.1
    # scale invariance per row: a positive rescaling of the synthetic gradient changes nothing
    scaled = [3.0 * g for g in other]
    assert float(gradient_distance(scaled, grads)) == pytest.approx(
        float(gradient_distance(other, grads)), rel=1e-5
    )


def test_distance_matches_hand_computation() -> None:
    # conv weight [out 2, in 1, 1, 2] -> rows [1, 0] vs [1, 1] and [0, 2] vs [0, 1]
    conv_syn = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 2.0]]]])
    conv_real = torch.tensor([[[[1.0, 1.0]]], [[[0.0, 1.0]]]])
    # linear weight [2, 2]: rows [1, 0] vs [0, 1] (orthogonal) and [1, 1] vs [-1, -1] (opposite)
    fc_syn = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    fc_real = torch.tensor([[0.0, 1.0], [-1.0, -1.0]])
    bias_syn, bias_real = torch.tensor([1.0, 2.0]), torch.tensor([-5.0, 7.0])  # 1-D: ignored

    def one_minus_cos(dot: float, norm_product: float) -> float:
        return 1.0 - dot / (norm_product + COSINE_EPS)

    expected = (
        one_minus_cos(1.0, math.sqrt(2.0))  # 1 - 1/sqrt(2)
        + one_minus_cos(2.0, 2.0)  # ~0
        + one_minus_cos(0.0, 1.0)  # 1
        + one_minus_cos(-2.0, 2.0)  # 2
    )
    got = gradient_distance([conv_syn, bias_syn, fc_syn], [conv_real, bias_real, fc_real])
    assert float(got) == pytest.approx(expected, abs=1e-6)
    assert float(got) == pytest.approx(4.0 - 1.0 / math.sqrt(2.0), abs=1e-5)


def test_distance_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError):
        gradient_distance([torch.ones(2, 2)], [])
    with pytest.raises(ValueError):
        gradient_distance([torch.ones(2, 2)], [torch.ones(2, 3)])


# --------------------------------------------------------------------------- loops


def test_loops_follow_dc_table_by_ipc() -> None:
    assert dc_loops(1) == (1, 1)
    assert dc_loops(10) == (10, 50)
    assert dc_loops(50) == (50, 10)
    assert all(dc_loops(ipc) == loops for ipc, loops in DC_LOOPS.items())
    assert dc_loops(5) == (1, 1)  # unlisted: nearest listed IPC (1 is nearer than 10)
    assert dc_loops(15) == (10, 50)  # tie between 10 and 20: the smaller
    assert dc_loops(100) == (50, 10)
    with pytest.raises(ValueError):
        dc_loops(0)


def test_loops_explicit_params_override_the_table() -> None:
    assert resolve_loops(10, DCParams()) == (10, 50)
    assert resolve_loops(10, DCParams(outer_loop=3)) == (3, 50)
    assert resolve_loops(1, DCParams(outer_loop=4, inner_loop=2)) == (4, 2)


def test_defaults_dc_vs_dsa() -> None:
    dc, dsa = get_method("dc"), get_method("dsa")
    assert isinstance(dsa, type(dc)) and dsa.Params is DSAMethodParams
    p_dc, p_dsa = dc.Params(), dsa.Params()
    assert not p_dc.dsa and p_dsa.dsa
    assert (p_dc.iterations, p_dc.lr_img, p_dc.momentum, p_dc.batch_real) == (1000, 0.1, 0.5, 256)
    assert p_dc.model_dump(exclude={"dsa"}) == p_dsa.model_dump(exclude={"dsa"})
    with pytest.raises(ValueError):
        DCParams(net_norm="bogus")


# --------------------------------------------------------------------------- runs


def _distill(name: str, real: RealData, ipc: int, seed: int = 0, **over):
    method = get_method(name)
    params = method.Params.model_validate({**FAST, **over})
    ctx = LocalContext(seed)
    return method.distill(real, ipc, params, ctx), ctx


def test_same_seed_same_images_and_meta(digits_data: RealData) -> None:
    a, _ = _distill("dc", digits_data, 1)
    b, _ = _distill("dc", digits_data, 1)
    c, _ = _distill("dc", digits_data, 1, seed=1, iterations=1)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (10, 1, 8, 8)
    assert a.labels.tolist() == [c for c in range(10)]
    meta = a.meta
    assert (meta["iterations"], meta["outer_loop"], meta["inner_loop"]) == (2, 2, 1)
    assert meta["image_updates"] == 4 and meta["dsa_strategy"] is None


def test_smoke_overrides_run(digits_data: RealData) -> None:
    for name in ("dc", "dsa"):
        method = get_method(name)
        images = method.distill(
            digits_data, 2, method.Params.model_validate(method.smoke), LocalContext(0)
        )
        assert images.images.shape == (20, 1, 8, 8) and torch.isfinite(images.images).all()


class _CopyingContext(LocalContext):
    """Keeps a deep copy of each checkpoint, as a real checkpoint store (a file) would: on the CPU
    `distill_pixels`' state aliases the live images and optimiser buffers."""

    def _emit(self, metrics: dict[str, float], checkpoint: dict[str, Any] | None) -> None:
        super()._emit(metrics, copy.deepcopy(checkpoint))


def test_resume_from_checkpoint_matches_uninterrupted_run(digits_data: RealData) -> None:
    method = get_method("dc")
    params = method.Params.model_validate({**FAST, "checkpoint_every": 1})
    ctx = _CopyingContext(0)
    full = method.distill(digits_data, 1, params, ctx)
    # checkpoint_every counts outer iterations: one checkpoint, after outer iteration 1 of 2
    assert len(ctx.checkpoints) == 1 and int(ctx.checkpoints[0]["iteration"]) == 2
    resumed_ctx = _CopyingContext(0)
    resumed_ctx.checkpoints.append(ctx.checkpoints[0])
    resumed = method.distill(digits_data, 1, params, resumed_ctx)
    assert torch.equal(full.images, resumed.images)


def test_matching_loss_decreases_on_a_fixed_network(digits_data: RealData) -> None:
    """One network (a single long outer iteration, no inner training to speak of), the whole
    class as the real batch: plain gradient steps on the pixels must lower DC's loss."""
    ctx = LocalContext(0)
    params = DCParams(lr_img=0.002, batch_real=256, lr_net=1e-12)
    syn = SyntheticSet.initialise(digits_data, 1, "real", ctx)
    matcher = _GradientMatcher(digits_data, params, ctx, 1000, 1, None)
    opt = torch.optim.SGD([syn.images], lr=params.lr_img, momentum=params.momentum)
    losses = []
    for step in range(4):
        loss = matcher(syn, step, digits_data.classes)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert matcher.net_iteration == 0  # the same network throughout
    assert losses[-1] < losses[0] - 10, losses


def test_loss_decreases_over_a_short_run(digits_data: RealData) -> None:
    """Across fresh networks (DC proper) the matching loss goes down within a few iterations
    (norm-free ConvNet: at 8 px, GroupNorm(C, C) of 2x2 maps makes the per-network signal
    nearly uncorrelated, see the digits settings in the method docstring)."""
    images, _ = _distill(
        "dc", digits_data, 1, iterations=8, outer_loop=1, batch_real=32, net_norm="none"
    )
    assert images.meta["last_loss"] < 0.95 * images.meta["first_loss"]


# --------------------------------------------------------------------------- DSA


def test_dsa_augments_real_and_synthetic_identically(monkeypatch: pytest.MonkeyPatch) -> None:
    """Synthetic images equal to the real ones (1 image per class, batch_real 1): with the same
    transform on both batches (siamese), the real and synthetic gradients coincide whatever the
    draw; independent draws (as at evaluation time) make them differ."""
    from ddbench.augment import dsa
    from ddbench.methods import dc as dc_module

    real = _tiny_real()
    ctx = LocalContext(0)
    syn = SyntheticSet.initialise(real, 1, "real", ctx)
    assert torch.equal(syn.images.detach(), real.train_x)
    pairs: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []

    def recording_distance(g_syn, g_real):
        pairs.append(([g.detach() for g in g_syn], list(g_real)))
        return gradient_distance(g_syn, g_real)

    monkeypatch.setattr(dc_module, "gradient_distance", recording_distance)
    strategy = "color_crop_cutout_scale_rotate"
    matcher = _GradientMatcher(real, DSAMethodParams(batch_real=1), ctx, 1, 1, strategy)
    for step in range(6):  # several draws cover several families
        matcher(syn, step, real.classes)
    assert len(pairs) == 6 * 3
    # equal up to rounding: the synthetic side is differentiated with create_graph (other kernels);
    # measured up to 1.6e-6 on gradients of ~0.06, while independent draws differ by far more
    tol = 1e-5
    for g_syn, g_real in pairs:
        assert all(torch.allclose(s, r, atol=tol) for s, r in zip(g_syn, g_real, strict=True))
    # the same check with two independent draws fails: the shared draw is what makes them equal
    gen = torch.Generator().manual_seed(0)
    x, y = real.train_x[:1], torch.zeros(1, dtype=torch.long)
    loss_fn = torch.nn.functional.cross_entropy
    g_a = torch.autograd.grad(loss_fn(matcher.net(dsa(x, "rotate", gen)), y), matcher.weights)
    g_b = torch.autograd.grad(loss_fn(matcher.net(dsa(x, "rotate", gen)), y), matcher.weights)
    assert not all(torch.allclose(a, b, atol=tol) for a, b in zip(g_a, g_b, strict=True))


def test_dsa_method_uses_the_dataset_default_strategy(digits_data: RealData) -> None:
    from ddbench.augment import default_strategy

    images, _ = _distill("dsa", digits_data, 1, iterations=1, outer_loop=1)
    assert images.meta["dsa_strategy"] == default_strategy("digits")
    assert "flip" not in images.meta["dsa_strategy"]
    dc_images, _ = _distill("dc", digits_data, 1, iterations=1, outer_loop=1)
    assert not torch.equal(images.images, dc_images.images)  # the augmentation changed the step
