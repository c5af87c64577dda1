"""Evaluation protocols as data (`ddbench.protocols`): methods' paper protocols, cross_arch's
`protocol: shared | paper | both` in the plan, Tune selection under the suite's protocol, rows
and MLflow metrics keyed by protocol, a leaderboard that never averages two protocols, whole
costs with prerequisites, and the papers' numbers beside ddbench's in the report."""

from __future__ import annotations

import json

import polars as pl
import pytest

from ddbench.cli import main
from ddbench.errors import UserError
from ddbench.methods import METHODS
from ddbench.plan import DistillJob, make_plan
from ddbench.protocols import SHARED, SOFT_LABEL_RECIPE, eval_config, paper_name
from ddbench.report import write_report
from ddbench.report.accuracy import leaderboard_table
from ddbench.report.rows import load_rows
from ddbench.runner.work import RunSummary, prerequisite_seconds
from ddbench.schema import to_json, write_rows
from ddbench.spec import load_suite
from ddbench.storage import Store
from ddbench.tracking import _job_metrics, log_plan
from tests.conftest import REPO
from tests.test_storage import row  # a valid result row, any column overridden

QUICK = REPO / "suites" / "quickstart.yaml"
HARD = {"labels": "hard", "sampling": "fixed", "augment": True, "epochs": 300, "optimizer": "sgd"}
TEACHER = {**HARD, "labels": "teacher", "temperature": 1.0, "optimizer": "adamw"}


def test_methods_declare_their_paper_protocol():
    assert METHODS.get("dim").paper_protocol == {"sampling": "fresh"}
    assert METHODS.get("cgan").paper_protocol == {"sampling": "fresh"}  # DiM's cGAN row
    assert METHODS.get("d2m").paper_protocol == {"sampling": "time_matched"}
    assert METHODS.get("d4m").paper_protocol == {
        "labels": "teacher",
        "temperature": 1.0,  # chosen on val (benchmarks/soft_labels.py), not the scripts' 20
        **SOFT_LABEL_RECIPE,  # D4M's student recipe: AdamW + cosine
    }
    for name in ("random_real", "herding", "kcenter", "dc", "dsa", "dm", "datadam"):
        assert METHODS.get(name).paper_protocol == {}  # the DC recipe, hard labels: shared
    # DSA subclasses DC: it must carry its own numbers, not DC's
    dsa = {(p.dataset, p.ipc): p.top1 for p in METHODS.get("dsa").published}
    dc = {(p.dataset, p.ipc): p.top1 for p in METHODS.get("dc").published}
    assert dsa[("cifar10", 10)] == 52.1 and dc[("cifar10", 10)] == 44.9


def test_both_adds_paper_cells_only_where_the_protocols_differ():
    shared = make_plan(load_suite(QUICK, ["evals.cross_arch.params.protocol=shared"]))
    both = make_plan(load_suite(QUICK, ["evals.cross_arch.params.protocol=both"]))
    paper = make_plan(load_suite(QUICK, ["evals.cross_arch.params.protocol=paper"]))
    assert [j.job_id for j in both.jobs] == [j.job_id for j in shared.jobs]  # cells, not jobs
    # the shared cells keep their ids; `protocol` itself is not in any cell's eval params
    assert {c.cell_id for c in shared.cells} <= {c.cell_id for c in both.cells}
    assert all("protocol" not in c.eval_params for c in both.cells)
    extra = [c for c in both.cells if c.protocol != SHARED]
    assert {c.job.method for c in extra} == {"cgan", "dim", "d2m", "d4m"}
    for cell in extra:
        assert cell.protocol == paper_name(cell.job.method)
        expected = METHODS.get(cell.job.method).paper_protocol
        assert {k: cell.eval_params[k] for k in expected} == expected
    per_protocol = len(shared.cells)
    assert len(both.cells) == per_protocol + len(extra) and len(paper.cells) == per_protocol
    dc_cells = {c.cell_id for c in paper.cells if c.job.method == "dc"}
    assert dc_cells == {c.cell_id for c in shared.cells if c.job.method == "dc"}  # not twice


TUNED = """\
name: tuned_protocol
dataset: {name: digits}
ipc: [1]
methods:
  - name: dim
    tune: {space: {task_balance: {grid: [0.01, 0.1]}}}
evals: [{name: cross_arch, params: {protocol: PROTOCOL}}]
"""


@pytest.mark.parametrize(
    ("protocol", "sampling", "name"), [("shared", "fixed", SHARED), ("both", "fresh", "paper:dim")]
)
def test_selection_scores_under_the_suites_protocol(tmp_path, protocol, sampling, name):
    path = tmp_path / "tuned.yaml"
    path.write_text(TUNED.replace("PROTOCOL", protocol))
    (job,) = make_plan(load_suite(path)).jobs
    assert job.tune.eval_sampling == sampling and job.tune.eval_labels == "hard"
    assert job.selection_protocol == name
    own = make_plan(load_suite(path, ["methods.dim.tune.eval_sampling=fixed"])).jobs[0]
    assert own.selection_protocol == "tune" and own.tune.eval_sampling == "fixed"


def test_selection_trains_with_the_protocols_recipe(tmp_path):
    """d4m reported under its paper protocol: Tune's selection models learn the teacher's
    labels with D4M's AdamW + cosine recipe, as the cross_arch cells they are chosen for do."""
    from ddbench.tuning import SelectionParams, selection_cells, trial_job

    path = tmp_path / "tuned.yaml"
    suite = TUNED.replace("name: dim", "name: d4m").replace("task_balance", "strength")
    path.write_text(suite.replace("PROTOCOL", "paper").replace("[0.01, 0.1]", "[0.3, 0.7]"))
    job = next(j for j in make_plan(load_suite(path)).jobs if j.tune is not None)
    assert job.tune.eval_labels == "teacher" and job.tune.eval_recipe == SOFT_LABEL_RECIPE
    assert job.selection_protocol == "paper:d4m"
    config = {"strength": 0.3}
    (cell, *_) = selection_cells(job, trial_job(job, config), config, [1])
    assert SelectionParams.model_validate(cell.eval_params).recipe == SOFT_LABEL_RECIPE
    # under the shared protocol the selection keeps the DC recipe
    to_shared = ["evals.cross_arch.params.protocol=shared"]
    shared = next(j for j in make_plan(load_suite(path, to_shared)).jobs if j.tune)
    assert shared.tune.eval_recipe == {} and shared.tune.eval_labels == "hard"


def test_a_misspelt_selection_recipe_field_is_named(tmp_path):
    path = tmp_path / "tuned.yaml"
    path.write_text(TUNED.replace("PROTOCOL", "shared"))
    with pytest.raises(UserError, match=r"eval_recipe.*optimiser.*did you mean 'optimizer'"):
        load_suite(path, ["methods.dim.tune.eval_recipe={optimiser: adamw}"])
    with pytest.raises(UserError, match=r"eval_recipe.*schedule.*'linear'"):
        load_suite(path, ["methods.dim.tune.eval_recipe={schedule: linear}"])


def two_protocol_rows() -> list[dict]:
    """One job, one arch, two distill seeds x two eval seeds under hard labels (about 50 %)
    and under teacher labels (about 90 %)."""
    rows = []
    for params, base, name in ((HARD, 0.5, SHARED), (TEACHER, 0.9, "paper:d4m")):
        for distill_seed in (0, 1):
            for eval_seed in (0, 1):
                rows.append(
                    row(
                        job_id=f"d4m{distill_seed}",
                        method="d4m",
                        method_label="d4m",
                        distill_seed=distill_seed,
                        eval_seed=eval_seed,
                        arch="convnet",
                        eval_params=to_json(params),
                        protocol=name,
                        value=base + 0.01 * (eval_seed + distill_seed),
                        distill_seconds=2.0,
                        prerequisite_seconds=5.0,
                    )
                )
    return rows


def test_leaderboard_never_averages_two_protocols():
    rows = pl.DataFrame(two_protocol_rows() + two_protocol_rows())  # a cell read twice counts once
    table = leaderboard_table(rows)
    assert table.height == 2
    by = {r["labels"]: r for r in table.iter_rows(named=True)}
    assert by["hard"]["protocol"] == SHARED and by["teacher"]["protocol"] == "paper:d4m"
    assert by["hard"]["mean"] == pytest.approx(0.51) and by["hard"]["n"] == 4
    assert by["teacher"]["mean"] == pytest.approx(0.91) and by["teacher"]["n"] == 4
    assert by["hard"]["eval_config"] != by["teacher"]["eval_config"]
    assert by["hard"]["total_seconds"] == pytest.approx(7.0)
    every = table["mean"].to_list()
    assert not any(0.6 < m < 0.8 for m in every)  # no number mixes the two label modes
    assert leaderboard_table(rows, protocol="paper:*")["labels"].to_list() == ["teacher"]
    assert leaderboard_table(rows, where={"labels": "hard"})["protocol"].to_list() == [SHARED]
    assert leaderboard_table(rows, where={"temperature": "1.0"}).height == 1  # an eval param


def test_mlflow_metrics_are_one_family_per_eval_config():
    rows = pl.DataFrame(two_protocol_rows())
    metrics = _job_metrics(rows)
    top1 = {k: v for k, v in metrics.items() if k.endswith("convnet.test_top1")}
    hard = eval_config("cross_arch", 1, to_json(HARD))
    teacher = eval_config("cross_arch", 1, to_json(TEACHER))
    assert top1 == {
        f"cross_arch.shared.{hard}.ipc1.convnet.test_top1": pytest.approx(0.51),
        f"cross_arch.paper-d4m.{teacher}.ipc1.convnet.test_top1": pytest.approx(0.91),
    }
    assert metrics["prerequisite_seconds"] == 5.0


def test_leaderboard_reads_the_stores_mlflow_indexes(tmp_path, capsys):
    """A logged run (sqlite MLflow) is found by its store tag; the CLI prints one line per
    protocol, filters with --protocol / --where, and old rows (no protocol columns) count as
    shared."""
    suite = tmp_path / "s.yaml"
    suite.write_text(
        "name: lb\ndataset: {name: digits}\nipc: [1]\nmethods: [{name: random_real}]\n"
        "evals: [{name: cross_arch}]\n"
    )
    plan = make_plan(load_suite(suite))
    (job,) = plan.jobs
    store = Store(tmp_path / "runs").child("lb")
    rows = [  # one job: its distill seed 1 rows become more eval seeds of seed 0
        {
            **r,
            "job_id": job.job_id,
            "method": "random_real",
            "method_label": "random_real",
            "distill_seed": 0,
            "eval_seed": r["eval_seed"] + 2 * r["distill_seed"],
        }
        for r in two_protocol_rows()
    ]
    old = [{**r, "protocol": None, "eval_config": None} for r in rows if r["protocol"] == SHARED]
    write_rows(store, f"results/cross_arch/{job.job_id}/old.parquet", old)
    write_rows(store, f"results/cross_arch/{job.job_id}/new.parquet", rows[4:])
    assert load_rows(store)[0]["protocol"].null_count() == 0
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert log_plan(plan, store, RunSummary(changed_jobs={job.job_id}), uri) == 1
    base = ["leaderboard", "--tracking-uri", uri, "--runs", str(tmp_path / "x"), "--format"]
    assert main([*base, "json"]) == 0
    board = json.loads(capsys.readouterr().out)
    assert sorted((r["protocol"], round(r["mean"], 2)) for r in board) == [
        ("paper:d4m", 0.91),
        (SHARED, 0.51),
    ]
    assert main([*base, "md", "--where", "labels=teacher"]) == 0
    text = capsys.readouterr().out
    assert "| paper:d4m | teacher | fixed | true | 300 | adamw | 91.0 ± 0.8 (4) |" in text
    assert "| shared |" not in text
    assert main([*base, "csv", "--protocol", "nothing*"]) == 2


def test_prerequisite_seconds_add_up(tmp_path):
    store = Store(tmp_path)
    store.write_text(
        "artifacts/gen/meta.json", json.dumps({"distill_seconds": 3.0, "prerequisite_seconds": 1.0})
    )
    store.write_text("artifacts/ldm/meta.json", json.dumps({"distill_seconds": 0.5}))
    job = DistillJob(
        "j", "d2m", "d2m", 2, {}, "digits", {}, None, (1,), 0, 0, depends=(("a", "gen"),)
    )
    assert prerequisite_seconds(store, job) == 4.0
    both = DistillJob(
        "k", "x", "x", 1, {}, "digits", {}, 1, (1,), 0, 0, depends=(("a", "gen"), ("b", "ldm"))
    )
    assert prerequisite_seconds(store, both) == 4.5
    assert (
        prerequisite_seconds(store, DistillJob("l", "x", "x", 1, {}, "d", {}, 1, (1,), 0, 0)) == 0
    )


def test_report_shows_a_table_per_protocol_and_the_papers_numbers(tmp_path):
    """dim on mnist under the shared and its paper protocol, d2m under the shared one only
    with a prerequisite: two main tables saying which is which, DiM's Table 2 beside ddbench's
    paper-protocol number, the cost table with prerequisites and total."""
    store = Store(tmp_path / "run")
    fresh = {**HARD, "sampling": "fresh"}
    rows = []
    for label, params, name, value in (
        ("dim", HARD, SHARED, 0.90),
        ("dim", fresh, "paper:dim", 0.97),
        ("cgan", HARD, SHARED, 0.80),
    ):
        for seed in (0, 1):
            rows.append(
                row(
                    job_id=label,
                    method=label,
                    method_label=label,
                    dataset="mnist",
                    ipc=10,
                    arch="convnet",
                    eval_seed=seed,
                    eval_params=to_json(params),
                    protocol=name,
                    value=value,
                    distill_seconds=2.0,
                    prerequisite_seconds=3.0 if label == "dim" else 0.0,
                )
            )
    write_rows(store, "results/cross_arch/rows.parquet", rows)
    text = write_report(store, tmp_path / "report").read_text()
    shared, _, paper = text.partition("each method's paper protocol")
    assert "## Top-1 by method and architecture: shared protocol" in shared
    assert "| dim | 90.0 ± 0.0 (2) |" in shared and "97.0" not in shared
    assert "- `paper:dim`: the shared params with sampling: fresh" in paper
    assert "| dim (paper:dim) | 97.0 ± 0.0 (2) |" in paper
    assert "| cgan (shared: its paper protocol not run) | 80.0 ± 0.0 (2) |" in paper
    published = text.split("## Published numbers beside ddbench")[1]
    dim_line = next(line for line in published.splitlines() if line.startswith("| dim |"))
    assert "97.0 ± 0.0 (2) | 98.6 ± 0.2 | paper:dim | DiM" in dim_line
    assert "epochs 300 (paper: 1000)" in dim_line
    cgan_line = next(line for line in published.splitlines() if line.startswith("| cgan |"))
    assert "97.8 ± 0.3" in cgan_line and "not run under `paper:cgan`" in cgan_line
    assert "| dim | 10 | 1 | 2.0 | 3.0 | 5.0 |" in text  # own, prerequisites, total seconds


def test_report_shows_the_teacher_and_flags_near_uniform_targets(tmp_path):
    """d4m's paper-protocol cells at two temperatures (two eval configs, so one of them is
    outside the main tables): the teacher section shows both, with the teacher's top-1 and the
    targets' confidence, and flags the row whose targets were near uniform."""
    store = Store(tmp_path / "run")
    rows = []
    for label, temperature, confidence in (("d4m_t1", 1.0, 0.82), ("d4m_t20", 20.0, 0.12)):
        params = to_json({**HARD, "labels": "teacher", "temperature": temperature})
        measured = [
            ("val", "top1", 0.8),
            ("test", "top1", 0.8),
            ("val", "teacher_top1", 0.97),
            ("test", "teacher_top1", 0.96),
            ("test", "teacher_confidence", confidence),
            ("test", "teacher_certainty", (confidence - 0.1) / 0.9),
            ("test", "teacher_agreement", 0.9),
        ]
        rows += [
            row(
                job_id=label,
                method="d4m",
                method_label=label,
                ipc=10,
                arch="convnet",
                eval_params=params,
                protocol="paper:d4m",
                split=split,
                metric=metric,
                value=value,
            )
            for split, metric, value in measured
        ]
    write_rows(store, "results/cross_arch/rows.parquet", rows)
    text = write_report(store, tmp_path / "report").read_text()
    section = text.split("## Teacher soft labels")[1].split("\n## ")[0]
    assert "| paper:d4m | d4m_t1 | 10 | 1.0 | 97.0 | 96.0 | 0.820 | 0.800 | 0.900 |" in section
    flagged = (
        "| paper:d4m | d4m_t20 | 10 | 20.0 | 97.0 | 96.0 | 0.120 | 0.022 **near uniform** | 0.900 |"
    )
    assert flagged in section
    assert "**Warning**: in 1 row(s) the targets were near uniform" in section


def test_report_shows_how_far_pixel_images_moved(tmp_path):
    """One row per (method, ipc) with the mean image change over distill seeds (a job's value
    repeated in its cells counts once)."""
    store = Store(tmp_path / "run")
    rows = []
    for label, change in (("dm", (0.2, 0.4)), ("datadam", (1e-4, 3e-4))):
        for distill_seed, value in enumerate(change):
            for eval_seed in (0, 1):
                rows += [
                    row(
                        job_id=f"{label}{distill_seed}",
                        method=label,
                        method_label=label,
                        ipc=10,
                        arch="convnet",
                        distill_seed=distill_seed,
                        eval_seed=eval_seed,
                        eval_params=to_json(HARD),
                        split="test",
                        metric=metric,
                        value=v,
                    )
                    for metric, v in (("top1", 0.8), ("image_change", value))
                ]
    write_rows(store, "results/cross_arch/rows.parquet", rows)
    text = write_report(store, tmp_path / "report").read_text()
    section = text.split("## How far the distilled images moved")[1].split("\n## ")[0]
    assert "| datadam | 10 | 0.0002 (2) |" in section
    assert "| dm | 10 | 0.3 (2) |" in section
