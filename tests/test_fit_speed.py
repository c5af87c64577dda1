"""Fast evaluation training (`ddbench.fit` setup, `ddbench.fit_vmap`) on tiny digits runs.

The full parity figure and the speed figures are in benchmarks/RESULTS.md; these tests check
that the paths exist, resolve as documented and agree with fp32 / sequential training.
"""

from __future__ import annotations

import shutil
import statistics

import pytest
import torch

from ddbench.context import Context
from ddbench.fit import (
    Recipe,
    fit_artifact,
    native_bf16,
    resolve_precision,
    training_setup,
)
from ddbench.fit_vmap import fit_and_test_seeds, use_vectorised
from ddbench.methods import get_method


@pytest.fixture(scope="module")
def digits_ipc5(digits):
    artifact = get_method("random_real").distill(digits, 5, None, Context(0))
    return artifact.materialise(5, digits, torch.Generator().manual_seed(0))


def test_auto_rules_on_cpu():
    bf16 = "bf16" if native_bf16("cpu") else "fp32"
    assert resolve_precision("auto", "convnet", "cpu") == bf16
    assert resolve_precision("auto", "mlp", "cpu") == "fp32"  # not measured: stays fp32
    assert resolve_precision("auto", None, "cpu") == "fp32"  # unknown model: fp32 eager
    assert resolve_precision("fp32", "convnet", "cpu") == "fp32"
    digits_run = training_setup(Recipe(), "convnet", "cpu", n=500, pixels=8 * 8)
    assert not digits_run.compile and not digits_run.channels_last  # too short to repay compiling
    cifar_run = training_setup(Recipe(), "convnet", "cpu", n=500, pixels=32 * 32)
    # 1000 epochs of IPC 50 on CIFAR repay compiling, where inductor has its C++ compiler
    assert cifar_run.compile == (shutil.which("g++") is not None)
    assert not cifar_run.channels_last
    assert not training_setup(Recipe(), "mlp", "cpu", n=500, pixels=32 * 32).compile
    assert training_setup(Recipe(compile="on"), "mlp", "cpu", n=1, pixels=1).compile
    assert not use_vectorised("auto", "convnet", "cpu", 8)  # slower on CPUs
    with pytest.raises(ValueError, match="vectorised training supports"):
        use_vectorised("on", "mlp", "cpu", 2)


def test_bf16_matches_fp32_on_digits(digits):
    """Same seeds, fp32 vs bf16: mean test top1 within a few points (full figure: RESULTS.md)."""
    artifact = get_method("random_real").distill(digits, 10, None, Context(0))
    means = {}
    for precision in ("fp32", "bf16"):
        recipe = Recipe(epochs=20, precision=precision, compile="off")
        top1 = [
            fit_artifact("convnet", artifact, 10, digits, recipe, seed)[0]["test"]
            for seed in (0, 1)
        ]
        assert all(t > 0.3 for t in top1)  # learnt something (chance 0.1)
        means[precision] = statistics.mean(top1)
    assert abs(means["bf16"] - means["fp32"]) < 0.08


def test_vectorised_matches_sequential(digits, digits_ipc5):
    x, y = digits_ipc5
    recipe = Recipe(epochs=4, batch_size=32, precision="fp32", compile="off")  # 2 steps / epoch
    seeds = [0, 1, 2]
    data = [(x, y)] * len(seeds)
    sequential = fit_and_test_seeds("convnet", digits, data, recipe, seeds, vectorise="off")
    vectorised = fit_and_test_seeds("convnet", digits, data, recipe, seeds, vectorise="on")
    one_image = 1.0 / len(digits.test_y)
    for seq, vec in zip(sequential, vectorised, strict=True):
        assert seq["test"] == pytest.approx(vec["test"], abs=one_image + 1e-9)
        assert seq["val"] == pytest.approx(vec["val"], abs=1.0 / len(digits.val_y) + 1e-9)
    assert len({round(r["test"], 6) for r in sequential}) > 1  # seeds differ from each other


def test_cross_arch_records_resolved_precision(digits):
    from ddbench.evals import EvalJob, get_eval

    evaluator = get_eval("cross_arch")
    params = evaluator.Params(archs=["mlp"], seeds=1, epochs=1)
    assert params.model_dump()["precision"] == "auto"  # in eval_params as asked
    artifact = get_method("random_real").distill(digits, 1, None, Context(0))
    job = EvalJob(artifact, digits, 1, "digits")
    rows = evaluator.run({"arch": "mlp", "eval_seed": 0}, job, params, Context(1))
    bits = [r["value"] for r in rows if r["metric"] == "precision_bits"]
    assert bits == [32.0]  # mlp: auto resolves to fp32


def test_cross_arch_groups_seeds_only_where_vectorised():
    from ddbench.evals import get_eval

    evaluator = get_eval("cross_arch")
    params = evaluator.Params(archs=["convnet", "mlp"], seeds=3)
    per_seed = [{"arch": a, "eval_seed": s} for a in ("convnet", "mlp") for s in range(3)]
    assert evaluator.cells(params, "cpu") == per_seed  # CPUs: one Ray task per seed
    assert evaluator.cells(params, "cuda") == [
        {"arch": "convnet", "eval_seeds": [0, 1, 2]},
        *per_seed[3:],  # mlp is not a ConvNet: never vectorised
    ]
    teacher = evaluator.Params(archs=["convnet"], seeds=3, labels="teacher")
    assert len(evaluator.cells(teacher, "cuda")) == 3  # teacher labels are per run
    off = evaluator.Params(archs=["convnet"], seeds=3, vectorise="off")
    assert len(evaluator.cells(off, "cuda")) == 3
    with pytest.raises(ValueError, match="vectorise: on needs sampling: fixed"):
        evaluator.Params(vectorise="on", sampling="fresh")


@pytest.mark.parametrize("artifact_kind", ["image_set", "generator"])
def test_vectorised_cell_writes_the_per_seed_rows(digits, artifact_kind):
    """A grouped cell (forced on the CPU) writes the rows of its per-seed cells; a generator's
    seeds each train on their own fixed draw."""
    from ddbench.evals import EvalJob, get_eval
    from tests.conftest import tiny_generator_set

    if artifact_kind == "generator":
        artifact = tiny_generator_set(digits)
    else:
        artifact = get_method("random_real").distill(digits, 3, None, Context(0))
    evaluator = get_eval("cross_arch")
    common = {"archs": ["convnet"], "seeds": 2, "epochs": 3, "precision": "fp32"}
    grouped = evaluator.Params(**common, vectorise="on")
    (cell,) = evaluator.cells(grouped, "cpu")
    job = EvalJob(artifact, digits, 3, "digits")
    vectorised = evaluator.run(cell, job, grouped, Context(1))
    sequential_params = evaluator.Params(**common, vectorise="off")
    sequential = [
        row
        for seed_cell in evaluator.cells(sequential_params, "cpu")
        for row in evaluator.run(seed_cell, job, sequential_params, Context(1))
    ]

    def keyed(rows):
        return {(r["eval_seed"], r["split"], r["metric"]): r["value"] for r in rows}

    vec, seq = keyed(vectorised), keyed(sequential)
    top1 = {k for k in seq if k[2] == "top1"}
    assert {k for k in vec if k[2] == "top1"} == top1 and len(top1) == 4  # 2 seeds x val/test
    for key in top1:
        assert vec[key] == pytest.approx(seq[key], abs=1.0 / len(digits.test_y) + 1e-9)
    assert vec[(0, "test", "precision_bits")] == vec[(1, "test", "precision_bits")] == 32.0
    if artifact_kind == "generator":  # costs: measured once per grouped cell, per seed otherwise
        assert (0, "test", "gen_ms_per_image") in vec and (1, "test", "gen_ms_per_image") not in vec
