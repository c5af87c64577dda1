"""Tests of the mean-matching pixel methods `dm` and `datadam` (fast: real digits, tiny batches)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from ddbench.archs import build_arch
from ddbench.augment import apply_dsa, sample_dsa
from ddbench.context import LocalContext
from ddbench.errors import UserError
from ddbench.methods import get_method
from ddbench.methods._pixel import SyntheticSet
from ddbench.methods.datadam import activation_maps, resolve_task_balance, spatial_attention
from ddbench.methods.dm import (
    FORWARD_BLOCK_ROWS,
    MatchingForward,
    augment_classes,
    class_means,
    embedding_stats,
    matching_rows,
)

METHODS = ["dm", "datadam"]
# seconds on digits; the forward path pinned (NCHW, eager), since these tests compare two
# computations of one loss (batched vs per-class, whole vs chunked) whose forwards have other
# shapes: under `auto` each shape is timed on its own and may take another layout, which rounds
# differently (an Xeon with AMX took channels-last for one: gradients 5.8e-6 apart, over atol)
FAST = {
    "iterations": 3,
    "batch_real": 16,
    "channels_last": "off",
    "compile": "off",
    "forward_blocks": "off",
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny batches: one thread is many times faster than two on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class SnapshotContext(LocalContext):
    """Keeps a deep copy of each checkpoint as it was when saved (see test_resume)."""

    def _emit(self, metrics, checkpoint):
        super()._emit(metrics, copy.deepcopy(checkpoint))


def _params(name: str, **overrides):
    method = get_method(name)
    return method, method.Params.model_validate({**FAST, **overrides})


def _loss_and_grad(name, real, params, it: int, ipc: int = 2):
    """Loss of iteration `it` on a fixed real-initialised set, and its gradient on the pixels."""
    method = get_method(name)
    ctx = LocalContext(7)
    syn = SyntheticSet.initialise(real, ipc, "real", ctx)
    loss = method.matching_loss(real, ipc, params, ctx)(syn, it, real.classes)
    loss.backward()
    return loss.detach(), syn.images.grad.clone()


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("dsa", [True, False])
def test_batched_equals_per_class_loop(name, dsa, digits):
    for it in (0, 1, 2):
        _, batched = _params(name, dsa=dsa)
        _, loop = _params(name, dsa=dsa, per_class_loop=True)
        loss_b, grad_b = _loss_and_grad(name, digits, batched, it)
        loss_l, grad_l = _loss_and_grad(name, digits, loop, it)
        assert loss_b > 0
        torch.testing.assert_close(loss_b, loss_l, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad_b, grad_l, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_forward_chunks_do_not_change_the_loss(name, digits):
    _, whole = _params(name)
    _, chunked = _params(name, forward_chunk=7)
    torch.testing.assert_close(
        _loss_and_grad(name, digits, whole, 0)[0],
        _loss_and_grad(name, digits, chunked, 0)[0],
        rtol=1e-5,
        atol=1e-6,
    )


def test_a_blocked_forward_calls_the_network_per_block_with_the_same_result(digits):
    """`forward_blocks: on`: 160 images go through the network as blocks of FORWARD_BLOCK_ROWS
    (64, 64, 32), and the statistics equal one call's."""
    _, params = _params("dm", forward_blocks="on")
    net = build_arch("convnet", digits.channels, digits.num_classes, digits.image_size).eval()
    calls: list[int] = []

    def stats(network, x):
        calls.append(len(x))
        return embedding_stats(network, x)

    x = digits.train_x[:160]
    (blocked,) = MatchingForward(stats, params, "dm", (len(x), 10))(net, x)
    assert calls == [64, 64, 32] and FORWARD_BLOCK_ROWS == 64
    with torch.no_grad():
        torch.testing.assert_close(blocked, net.embed(x), rtol=1e-5, atol=1e-6)


def test_the_blocks_calibration_times_a_whole_matching_step(digits, tmp_path, monkeypatch):
    """`forward_blocks: auto` times a matching step along both paths: the real rows without
    gradient, then `syn_rows` stand-in synthetic images with a gradient to their pixels (the
    synthetic side gains from blocks too; timing the real forward alone under-read the gain)."""
    monkeypatch.setenv("DDBENCH_CACHE", str(tmp_path))
    _, params = _params("dm", forward_blocks="auto")
    net = build_arch("convnet", digits.channels, digits.num_classes, digits.image_size).eval()
    calls: list[tuple[int, bool]] = []

    def stats(network, x):
        calls.append((len(x), x.requires_grad))
        return embedding_stats(network, x)

    x = digits.train_x[:160]
    with torch.no_grad():  # as the real forward of `mean_matching_loss` runs
        MatchingForward(stats, params, "dm", (len(x), 30))(net, x)
    assert (160, False) in calls and (64, False) in calls  # the real rows, whole and in blocks
    assert (30, True) in calls  # the synthetic stand-ins, with a gradient
    (measured,) = tmp_path.glob("fastpath/convnet-*.json")
    timed = json.loads(measured.read_text())
    assert timed["key"]["syn_rows"] == 30
    assert {"nchw_eager/paired", f"nchw_eager_blocks{FORWARD_BLOCK_ROWS}/paired"} <= set(
        timed["seconds"]
    )


@pytest.mark.parametrize("name", METHODS)
def test_forward_blocks_do_not_change_the_loss(name, digits):
    """Blocks of FORWARD_BLOCK_ROWS images (160 real rows here: 3 blocks) give the one call's
    loss and pixel gradients; a BatchNorm network refuses them (its statistics span a batch)."""
    _, whole = _params(name)
    _, blocked = _params(name, forward_blocks="on")
    assert matching_rows(digits, 2, blocked)[0] > FORWARD_BLOCK_ROWS
    loss_w, grad_w = _loss_and_grad(name, digits, whole, 0)
    loss_b, grad_b = _loss_and_grad(name, digits, blocked, 0)
    torch.testing.assert_close(loss_w, loss_b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_w, grad_b, rtol=1e-4, atol=1e-6)
    _, batch_norm = _params(name, forward_blocks="on", arch="convnet_bn")
    with pytest.raises(ValueError, match="forward_blocks: on needs a network without batch"):
        _loss_and_grad(name, digits, batch_norm, 0)


def test_class_augmentation_matches_per_class_dsa():
    gen = torch.Generator().manual_seed(0)
    sizes = [3, 1, 4, 2, 5, 3]
    x = torch.randn(sum(sizes), 3, 8, 8, generator=gen)
    augs = [sample_dsa("color_crop_cutout_flip_scale_rotate", 1, gen) for _ in sizes]
    expected = torch.cat(
        [apply_dsa(chunk, aug) for chunk, aug in zip(x.split(sizes), augs, strict=True)]
    )
    torch.testing.assert_close(augment_classes(x, sizes, augs), expected)
    assert augment_classes(x, sizes, [None] * len(sizes)) is x


def test_class_means():
    stat = torch.arange(12.0).view(6, 2)
    owner = torch.tensor([0, 0, 1, 2, 2, 2])
    expected = torch.stack([stat[:2].mean(0), stat[2], stat[3:].mean(0)])
    torch.testing.assert_close(class_means(stat, owner, 3), expected)


@pytest.mark.parametrize("name", METHODS)
def test_loss_goes_down(name, digits):
    """After a short run the loss on held-out iterations (unseen nets and batches) is lower."""
    method, params = _params(name, iterations=15)
    ctx = LocalContext(0)
    loss_fn = method.matching_loss(digits, 1, params, ctx)
    initial = SyntheticSet.initialise(digits, 1, "real", ctx)
    final = SyntheticSet.initialise(digits, 1, "real", ctx)
    final.images.data.copy_(method.distill(digits, 1, params, ctx).images)
    with torch.no_grad():
        before = sum(float(loss_fn(initial, it, digits.classes)) for it in range(1000, 1004))
        after = sum(float(loss_fn(final, it, digits.classes)) for it in range(1000, 1004))
    assert after < 0.95 * before  # measured: dm 0.91, datadam 0.36 of the initial loss


def test_datadam_power_and_normalisation_change_the_loss(digits):
    losses = {}
    for key, overrides in {
        "paper": {},
        "p1": {"power": 1.0},
        "raw": {"normalize": False},
        "code_weight": {"layer_weight": 100.0},
        "relu_tap": {"attention_tap": "activation"},
    }.items():
        _, params = _params("datadam", **overrides)
        losses[key] = float(_loss_and_grad("datadam", digits, params, 0)[0])
    assert len(set(losses.values())) == len(losses), losses
    assert losses["code_weight"] > 10 * losses["paper"]


def test_activation_tap_takes_each_map_before_its_pooling(digits):
    """The official code's tap: ConvNet blocks' activation outputs, twice the side of the pooled
    block outputs, with the same embedding; an architecture without such blocks is refused."""
    net = build_arch("convnet", digits.channels, digits.num_classes, digits.image_size)
    x = digits.train_x[:4]
    pooled, embedding, _ = net.forward_features(x)
    before, same = activation_maps(net, x)
    assert len(before) == len(pooled)
    for b, p in zip(before, pooled, strict=True):
        assert b.shape[-1] in (p.shape[-1], 2 * p.shape[-1]) and b.shape[:2] == p.shape[:2]
        assert (b >= 0).all()  # a ReLU output, before the average pooling
    assert before[0].shape[-1] == 2 * pooled[0].shape[-1]
    torch.testing.assert_close(same, embedding)
    _, params = _params("datadam", attention_tap="activation", arch="mlp")
    with pytest.raises(UserError, match="attention_tap: activation needs a DC-lineage ConvNet"):
        get_method("datadam").distill(digits, 1, params, LocalContext(0))


def test_spatial_attention():
    maps = torch.randn(4, 5, 3, 3)
    att = spatial_attention(maps, 4.0, normalize=True)
    assert att.shape == (4, 9)
    torch.testing.assert_close(att.norm(dim=1), torch.ones(4))
    for power in (1.0, 2.0, 3.0, 4.0):  # 2 and 4 take a squaring fast path
        raw = spatial_attention(maps, power, normalize=False)
        torch.testing.assert_close(raw, maps.abs().pow(power).sum(1).flatten(1))


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("loop", [False, True])
def test_deterministic(name, loop, digits):
    method, params = _params(name, per_class_loop=loop)
    a = method.distill(digits, 2, params, LocalContext(5)).images
    b = method.distill(digits, 2, params, LocalContext(5)).images
    c = method.distill(digits, 2, params, LocalContext(6)).images
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_resume_continues_exactly(digits):
    # SnapshotContext: `distill_pixels` checkpoints `images.detach().cpu()` and the optimiser's
    # state_dict, which on the CPU alias the live tensors; LocalContext would keep references
    # that later steps overwrite.
    method, params = _params("dm", iterations=4, checkpoint_every=2)
    first = SnapshotContext(3)
    full = method.distill(digits, 1, params, first).images
    resumed_ctx = LocalContext(3)
    resumed_ctx.checkpoints.append(first.checkpoints[0])  # the state after iteration 2
    assert torch.equal(method.distill(digits, 1, params, resumed_ctx).images, full)


def test_task_balance_resolution(digits):
    assert resolve_task_balance(None, 8) == 0.01
    assert resolve_task_balance(None, 32) == 0.01
    assert resolve_task_balance(None, 64) == 0.02
    assert resolve_task_balance(None, 128) == 0.02
    assert resolve_task_balance(0.5, 32) == 0.5
    method, params = _params("datadam")
    # ConvNet-3 at 8 px: two intermediate block maps (4x4, 2x2) then the embedding
    assert method.term_weights(digits, params, LocalContext(0)) == [1.0, 1.0, 0.01]
    _, params = _params("datadam", layer_weight=100.0, task_balance=1.0)
    assert method.term_weights(digits, params, LocalContext(0)) == [100.0, 100.0, 1.0]


@pytest.mark.parametrize("name", METHODS)
def test_image_change_measures_how_far_the_images_moved(name, digits):
    """||S_T - S_0|| / ||S_0|| in the meta: what the steps did to the initial images, so a step
    too small to matter (a tiny lr_img here) shows as a change near 0."""
    method, params = _params(name)
    moved = method.distill(digits, 2, params, LocalContext(5))
    init = SyntheticSet.initialise(digits, 2, "real", LocalContext(5)).images.detach()
    expected = (moved.images - init).norm() / init.norm()
    assert moved.meta["image_change"] == pytest.approx(float(expected), rel=1e-5)
    assert moved.meta["image_change"] > 0.0
    still = method.distill(digits, 2, params.model_copy(update={"lr_img": 1e-9}), LocalContext(5))
    assert still.meta["image_change"] < 1e-6 * moved.meta["image_change"] + 1e-9


def test_image_change_of_a_resumed_run_counts_from_the_first_images(digits):
    method, params = _params("dm", iterations=4, checkpoint_every=2)
    first = SnapshotContext(3)
    full = method.distill(digits, 1, params, first)
    resumed_ctx = LocalContext(3)
    resumed_ctx.checkpoints.append(first.checkpoints[0])
    resumed = method.distill(digits, 1, params, resumed_ctx)
    assert resumed.meta["image_change"] == full.meta["image_change"]
