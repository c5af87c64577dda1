"""Continual learning: the protocol's class orders, class-subset jobs in the plan (none in suites
without the evaluator), and a small in-process run on digits with per-step and reduce rows."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ddbench.evals.continual import class_order, step_classes
from ddbench.plan import make_plan
from ddbench.spec import load_suite
from tests.conftest import REPO


def test_class_orders_are_the_protocols_seeded_permutation():
    for seed in range(5):
        for num_classes in (10, 100):
            np.random.seed(seed)
            expected = np.random.permutation(num_classes).tolist()
            assert class_order(seed, num_classes) == expected
    order = class_order(0, 100)
    chunks = [step_classes(order, 5, t) for t in range(5)]
    assert sorted(c for chunk in chunks for c in chunk) == list(range(100))
    assert chunks[0] == tuple(sorted(order[:20]))


def test_suites_without_continual_have_no_class_subset_jobs():
    """(their ids are pinned in tests/test_job_ids.py)"""
    plan = make_plan(load_suite(REPO / "suites" / "quickstart.yaml", ["profile=smoke"]))
    assert all(j.classes is None and not c.inputs for j in plan.jobs for c in plan.cells)


def test_plan_adds_hidden_subset_jobs_before_the_evaluated_ones():
    plan = make_plan(load_suite(REPO / "suites" / "continual.yaml", ["profile=smoke"]))
    by_id = {j.job_id: j for j in plan.jobs}
    evaluated = [i for i, j in enumerate(plan.jobs) if j.eval_ipcs]
    subset = [i for i, j in enumerate(plan.jobs) if j.classes is not None]
    assert len(evaluated) == 8 and max(subset) < min(evaluated)
    assert all(not plan.jobs[i].eval_ipcs for i in subset)  # hidden: never evaluated
    for cell in plan.cells:
        order = class_order(cell.cell["order_seed"], 10)
        assert [k for k, _ in cell.inputs] == [f"step{t}" for t in range(cell.cell["step"] + 1)]
        for t, (_, job_id) in enumerate(cell.inputs):
            job = by_id[job_id]
            assert job.classes == step_classes(order, 5, t)
            assert (job.method, job.label, job.ipc) == (
                cell.job.method,
                cell.job.label,
                cell.job.ipc,
            )
            for _, dep_id in job.depends:  # d2m's cgan, d4m's diffusion model: same classes
                assert by_id[dep_id].classes == job.classes


@pytest.mark.slow
def test_continual_run_on_digits(tmp_path, digits, monkeypatch):
    from ddbench.artifact import load_artifact
    from ddbench.methods.random_real import RandomReal
    from ddbench.runner.local import run_local
    from ddbench.runner.work import local_artifact
    from ddbench.storage import Store

    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []  # (real.classes, labels) per call
    original = RandomReal.distill

    def recording(self, real, ipc, params, ctx):
        seen.append((real.classes, tuple(sorted(set(real.train_y.tolist())))))
        return original(self, real, ipc, params, ctx)

    monkeypatch.setattr(RandomReal, "distill", recording)
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "name: cl\nipc: [1]\nmethods: [{name: random_real}, {name: d2m}]\n"
        "evals: [{name: continual, params: {num_classes: 10, steps: 5, orders: 1, models: 1, "
        "epochs: 20}}]\nprofiles: {smoke: {}}\n"  # smoke: every method's own smoke params
    )
    plan = make_plan(load_suite(suite, ["profile=smoke"]))
    store = Store(tmp_path / "runs")
    summary = run_local(plan, digits, store, force=False, log=lambda _: None, cpus=2)
    assert summary.cells_failed == 0 and summary.cells_run == 10

    order = class_order(0, 10)
    steps = [step_classes(order, 5, t) for t in range(5)]
    assert sorted(seen) == sorted([(c, c) for c in steps] + [(tuple(range(10)),) * 2])
    by_id = {j.job_id: j for j in plan.jobs}
    for cell in plan.cells:
        for t, (_, job_id) in enumerate(cell.inputs):  # each step's memory: its classes only
            artifact = load_artifact(local_artifact(store, job_id))
            assert artifact.meta["classes"] == list(steps[t]) == list(by_id[job_id].classes)
            if cell.job.method == "random_real":
                assert sorted(artifact.hard_labels().tolist()) == list(steps[t])

    rows = pl.read_parquet(str(tmp_path / "runs" / "results" / "**" / "*.parquet"))
    assert (rows["status"] == "ok").all()
    stepped = rows.filter(pl.col("step").is_not_null())
    assert set(stepped.filter(pl.col("metric") == "precision_bits")["value"]) <= {16.0, 32.0}
    per_step = stepped.filter((pl.col("split") == "test") & (pl.col("metric") == "top1"))
    assert (
        per_step.group_by("method_label").agg(pl.col("step").sort())["step"].to_list()
        == [[0, 1, 2, 3, 4]] * 2
    )
    assert (per_step["value"].is_between(0, 1)).all()
    reduced = rows.filter(pl.col("step").is_null() & (pl.col("split") == "test"))
    for label in ("random_real", "d2m"):
        mine = reduced.filter(pl.col("method_label") == label)
        assert sorted(mine["metric"].to_list()) == ["avg_inc_top1", "top1"]
        curve = per_step.filter(pl.col("method_label") == label).sort("step")["value"]
        final = mine.filter(pl.col("metric") == "top1")["value"][0]
        assert final == curve[-1]
        assert (
            abs(mine.filter(pl.col("metric") == "avg_inc_top1")["value"][0] - curve.mean()) < 1e-9
        )

    from ddbench.report import write_report

    text = write_report(store, tmp_path / "report").read_text()
    assert "## Continual learning: continual, 5 steps of 2 classes, IPC 1" in text
    assert "| random_real |" in text and list((tmp_path / "report").glob("continual_*.png"))

    again = run_local(plan, digits, store, force=False, log=lambda _: None, cpus=2)
    assert again.distilled == 0 and again.cells_run == 0
