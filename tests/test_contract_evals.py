"""Contract tests over every registered evaluator, on a random_real distillate of digits."""

from __future__ import annotations

import pytest

from ddbench.context import Context
from ddbench.evals import EVALS, EvalJob, get_eval
from ddbench.methods import get_method
from ddbench.schema import COLUMNS


@pytest.mark.parametrize("name", EVALS.names())
def test_eval_contract(name, digits):
    evaluator = get_eval(name)
    params = evaluator.Params.model_validate(evaluator.smoke)
    cells = evaluator.cells("cpu", params)
    assert cells and all(isinstance(c, dict) for c in cells)
    assert evaluator.cells("cuda", params)  # the layout may depend on the eval device class
    random_real = get_method("random_real")
    artifact = random_real.distill(digits, 2, None, Context(0))
    inputs = {  # the class-subset distillates the cell asks for (continual learning)
        key: random_real.distill(digits.subset(classes), 2, None, Context(0))
        for key, classes in evaluator.inputs(cells[0], params).items()
    }
    job = EvalJob(artifact, digits, 2, "digits", inputs)
    rows = evaluator.run(cells[0], job, params, Context(1))
    assert rows
    for row in rows:
        assert set(row) <= set(COLUMNS)
        assert {"split", "metric", "value", "higher_is_better"} <= set(row)
        assert row["split"] in ("val", "test")
        if row["metric"] == "top1":
            assert 0.0 <= row["value"] <= 1.0
    # every evaluator records the precision its training resolved to (16 = bf16, 32 = fp32)
    assert {r["value"] for r in rows if r["metric"] == "precision_bits"} <= {16.0, 32.0}
    assert any(r["metric"] == "precision_bits" for r in rows)
    assert isinstance(evaluator.reduce([], params), list)


def test_cross_arch_is_deterministic_and_above_chance(digits):
    evaluator = get_eval("cross_arch")
    params = evaluator.Params(archs=["convnet"], seeds=1, epochs=100)
    artifact = get_method("random_real").distill(digits, 5, None, Context(0))
    job = EvalJob(artifact, digits, 5, "digits")
    a = evaluator.run({"arch": "convnet", "eval_seed": 0}, job, params, Context(1))
    b = evaluator.run({"arch": "convnet", "eval_seed": 0}, job, params, Context(1))
    assert a == b
    test_top1 = next(r["value"] for r in a if r["split"] == "test")
    assert test_top1 > 0.5  # chance is 0.1


def test_cross_arch_writes_a_pixel_distillates_image_change(digits):
    """A pixel method's `image_change` (from its meta) becomes a row of every cell; a coreset,
    which has none, writes no such row."""
    evaluator = get_eval("cross_arch")
    params = evaluator.Params(archs=["mlp"], seeds=1, epochs=1)
    dm = get_method("dm")
    moved = dm.distill(digits, 1, dm.Params(iterations=2, batch_real=8), Context(0))
    picked = get_method("random_real").distill(digits, 1, None, Context(0))
    cell = {"arch": "mlp", "eval_seed": 0}
    for artifact, expected in ((moved, [moved.meta["image_change"]]), (picked, [])):
        rows = evaluator.run(cell, EvalJob(artifact, digits, 1, "digits"), params, Context(1))
        assert [r["value"] for r in rows if r["metric"] == "image_change"] == expected
