"""The result schema, atomic writes and content-hash job ids."""

from __future__ import annotations

import math

import polars as pl
import pytest

from ddbench.plan import make_plan
from ddbench.schema import COLUMNS, make_row, now_utc, write_rows
from ddbench.spec import load_suite
from ddbench.storage import Store
from tests.conftest import REPO

QUICK = REPO / "suites" / "quickstart.yaml"


def row(**over):
    base = dict(
        suite="s",
        job_id="j",
        method="m",
        method_label="m",
        method_version=1,
        method_params="{}",
        dataset="digits",
        ipc=1,
        distill_seed=0,
        artifact_bytes=1,
        distill_seconds=0.1,
        evaluator="cross_arch",
        eval_version=1,
        eval_params="{}",
        arch="convnet",
        eval_seed=0,
        step=None,
        split="test",
        metric="top1",
        value=0.5,
        higher_is_better=True,
        status="ok",
        error=None,
        wall_time_s=1.0,
        ddbench_version="0",
        git_sha="x",
        created_at=now_utc(),
        protocol="shared",
        eval_config="0123abcd",
    )
    return make_row(**{**base, **over})


def test_rows_are_validated():
    with pytest.raises(ValueError, match="unknown"):
        row(colour="red")
    with pytest.raises(ValueError, match="finite"):
        row(value=math.nan)
    assert row(status="failed", value=math.nan, error="boom")["status"] == "failed"


def test_atomic_parquet_round_trip(tmp_path):
    path = tmp_path / "results" / "a.parquet"
    rows = [row(), row(arch=None, metric="spearman_rho", value=-0.3)]
    write_rows(Store(tmp_path), "results/a.parquet", rows)
    assert [p.name for p in path.parent.iterdir()] == ["a.parquet"]  # no temp file left
    df = pl.scan_parquet(str(tmp_path / "results" / "**" / "*.parquet")).collect()
    assert tuple(df.columns) == COLUMNS and df.height == 2
    assert str(df.schema["created_at"]) == "Datetime(time_unit='us', time_zone='UTC')"


def test_job_ids_follow_content():
    a = make_plan(load_suite(QUICK))
    b = make_plan(load_suite(QUICK))
    assert [j.job_id for j in a.jobs] == [j.job_id for j in b.jobs]
    assert len({j.job_id for j in a.jobs}) == len(a.jobs)
    c = make_plan(load_suite(QUICK, ["methods.herding.params.embed_epochs=6"]))
    changed = {j.job_id for j in c.jobs} - {j.job_id for j in a.jobs}
    assert len(changed) == 2  # herding at ipc 1 and 10
    d = make_plan(load_suite(QUICK, ["evals.cross_arch.params.epochs=9"]))
    assert [j.job_id for j in d.jobs] == [j.job_id for j in a.jobs]  # eval params: cells only
    assert {c.cell_id for c in d.cells}.isdisjoint({c.cell_id for c in a.cells})


def test_plan_counts_cells():
    plan = make_plan(load_suite(QUICK))
    suite = plan.loaded.suite
    per_job = len(plan.loaded.eval_params[0].archs) * plan.loaded.eval_params[0].seeds
    evaluated = [j for j in plan.jobs if j.eval_ipcs]
    assert {j.label for j in evaluated} == {m.label or m.name for m in suite.methods}
    # a generator is one job evaluated at every IPC; whole_dataset is one cell group at ipc 0
    n_groups = sum(len(j.eval_ipcs) for j in evaluated)
    assert n_groups == (len(suite.methods) - 1) * len(suite.ipc) + 1
    # `protocol: both`: a second group per IPC for each method with a paper protocol of its own
    own = {"cgan", "dim", "d2m", "d4m"}
    assert {j.method for j in evaluated if j.method in own} == own
    paper_groups = sum(len(j.eval_ipcs) for j in evaluated if j.method in own)
    assert len(plan.cells) == per_job * (n_groups + paper_groups)
    paper = [c for c in plan.cells if c.protocol != "shared"]
    assert {c.protocol for c in paper} == {f"paper:{m}" for m in own}
    assert len(paper) == per_job * paper_groups
    only = make_plan(load_suite(QUICK), only="herd*")
    assert {j.method for j in only.jobs} == {"herding"}


def test_plan_groups_convnet_seeds_when_eval_cells_get_a_gpu():
    """`cross_arch` under `vectorise: auto`: per-seed cells on CPUs, one vectorised ConvNet cell
    per (job, ipc) when the suite gives eval cells a GPU; the other archs keep per-seed cells."""
    cpu = make_plan(load_suite(QUICK))
    gpu = make_plan(load_suite(QUICK, ["resources.eval.gpus=1"]))
    seeds = cpu.loaded.eval_params[0].seeds
    assert all("eval_seed" in c.cell for c in cpu.cells)
    grouped = [c for c in gpu.cells if "eval_seeds" in c.cell]
    assert grouped and {c.cell["arch"] for c in grouped} == {"convnet"}
    assert all(c.cell["eval_seeds"] == list(range(seeds)) for c in grouped)
    # paper protocols with fresh draws, time budgets or a teacher stay per seed
    assert {c.protocol for c in grouped} == {"shared"}
    convnet_cells = [c for c in cpu.cells if c.cell["arch"] == "convnet" and c.protocol == "shared"]
    assert len(convnet_cells) == seeds * len(grouped)
    assert len(gpu.cells) == len(cpu.cells) - len(grouped) * (seeds - 1)
