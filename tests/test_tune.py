"""Ray Tune sweeps (`tune:` blocks): validation, trial jobs and the choice rule, and a tuned
suite run on embedded Ray against a separately started MLflow server, whose leaderboard (read
over HTTP) finds the tuned method with its chosen config."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import polars as pl
import pytest
import torch

from ddbench.artifact import ImageSet
from ddbench.context import Context
from ddbench.evals import EvalJob
from ddbench.evals.cross_arch import CrossArch
from ddbench.fit import Recipe, fit_artifact
from ddbench.plan import make_plan
from ddbench.protocols import SOFT_LABEL_RECIPE
from ddbench.selection import TrialScore, choose
from ddbench.spec import load_suite
from ddbench.teacher import teacher_labels
from ddbench.tuning import SelectionParams, TuneSelection, selection_cells, trial_job
from tests.conftest import MlflowServer, run_cli

TUNED = """\
name: tuned
dataset: {name: digits}
ipc: [1]
methods:
  - name: dm
    params: {iterations: 20, batch_real: 32}
    tune:
      space: {lr_img: {grid: [0.1, 10.0]}}
      scheduler: asha
      max_concurrent_trials: 1
      eval_seeds: 2
      eval_epochs: 20
  - name: random_real
evals:
  - name: cross_arch
    params: {archs: [convnet], seeds: 1, epochs: 20}
"""


def selection_rows(out: Path) -> pl.DataFrame:
    return pl.read_parquet(str(out / "tuned" / "results" / "tune" / "**" / "*.parquet"))


def trial_windows(out: Path, tuned_job: str) -> list[tuple[float, float]]:
    """(start, end) in unix seconds of every trial of `tuned_job`, from its result.json lines."""
    windows = []
    for path in (out / "tuned" / "ray_tune").glob(f"tune-{tuned_job}/*/result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        windows.append((lines[0]["timestamp"] - lines[0]["time_total_s"], lines[-1]["timestamp"]))
    return sorted(windows)


def server_db(tmp_path: Path) -> str:
    """A second tracking store for reruns once the server is stopped."""
    return f"sqlite:///{tmp_path / 'rerun.db'}"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_tune_blocks_are_validated_with_lines(tmp_path):
    bad_names = TUNED.replace(
        "space: {lr_img: {grid: [0.1, 10.0]}}",
        "space: {lr_imgg: {grid: [1.0]}, momentum: {grid: [0.5, 2.0]}}\n      eval_arch: convnett",
    )
    path = write(tmp_path / "names.yaml", bad_names)
    proc = run_cli("validate", str(path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{path}:8: methods.dm.tune.space.lr_imgg: dm has no parameter 'lr_imgg'" in proc.stderr
    assert "did you mean 'lr_img'" in proc.stderr
    assert "methods.dm.tune.space.momentum.grid.1: 2.0: Input should be less than 1" in proc.stderr
    assert "methods.dm.tune.eval_arch: unknown architecture 'convnett'" in proc.stderr
    bad_range = TUNED.replace("{grid: [0.1, 10.0]}", "{loguniform: [0.0, 1.0]}")
    proc = run_cli("validate", str(write(tmp_path / "range.yaml", bad_range)))
    assert proc.returncode == 2 and "need 0 < low < high for loguniform" in proc.stderr


def test_trial_jobs_and_the_choice(tmp_path):
    plan = make_plan(load_suite(write(tmp_path / "s.yaml", TUNED)))
    (job,) = [j for j in plan.jobs if j.tune and j.method == "dm"]
    low, high = trial_job(job, {"lr_img": 0.1}), trial_job(job, {"lr_img": 10.0})
    assert low.job_id != high.job_id != job.job_id
    assert low.job_id == trial_job(job, {"lr_img": 0.1}).job_id  # a rerun finds its trials
    assert (low.params["lr_img"], high.params["lr_img"]) == (0.1, 10.0)
    assert low.params["iterations"] == 20 and low.tune is None and low.eval_ipcs == ()
    cells = selection_cells(job, low, {"lr_img": 0.1}, [1])
    assert [c.cell["eval_seed"] for c in cells] == [0, 1]
    assert all(c.evaluator == "tune" and c.eval_params["tuned_job"] == job.job_id for c in cells)
    trials = [
        TrialScore("b", {"lr_img": 0.1}, 0.6, 2),
        TrialScore("a", {"lr_img": 1.0}, 0.6, 2),  # a tie: the smaller trial id wins
        TrialScore("c", {"lr_img": 10.0}, 0.9, 1),  # stopped early (ASHA): not eligible
    ]
    assert choose(trials, models=2, mode="max").trial_job_id == "a"
    assert choose(trials[2:], models=2, mode="max") is None


class SplitRead(AssertionError):
    """Raised by the stand-in test split of `test_selection_never_reads_the_test_split`."""


class Unreadable:
    """A stand-in for a test-split tensor that fails on any use."""

    def __getattr__(self, name: str):
        raise SplitRead(f"the test split was read (.{name})")

    def __len__(self) -> int:
        raise SplitRead("the test split was read (len)")

    def __getitem__(self, key):
        raise SplitRead("the test split was read ([...])")


@pytest.mark.parametrize("labels", ["hard", "teacher"])
def test_selection_never_reads_the_test_split(digits, tmp_path, labels):
    """Tune's selection scores trials on val: with a test split that fails on any use, its
    cells (hard labels, or a teacher trained for them, on every class or a class subset) run
    and write val rows only."""
    blind = dataclasses.replace(digits, test_x=Unreadable(), test_y=Unreadable())
    idx = torch.cat([digits.class_indices(c)[:2] for c in digits.classes])
    job = EvalJob(ImageSet(digits.train_x[idx], digits.train_y[idx]), blind, 2, "digits")
    ctx = Context(0)
    ctx.cache_dir = str(tmp_path)
    params = SelectionParams(
        tuned_job="t",
        config={},
        arch="mlp",
        seeds=1,
        epochs=3,
        labels=labels,
        sampling="fixed",
        temperature=4.0,
        teacher_arch="mlp",
        teacher_epochs=2,
        teacher_lr=0.05,
        teacher_batch_size=64,
        recipe={},
    )
    whole = {"arch": "mlp", "eval_seed": 0}
    for cell in (whole, {**whole, "classes": [1, 2]}):
        (row,) = TuneSelection().run(cell, job, params, ctx)
        assert row["split"] == "val" and 0.0 <= row["value"] <= 1.0
    with pytest.raises(SplitRead):  # the stand-in does fail when read
        len(blind.test_y)


def test_selection_under_teacher_labels_shares_cross_arch_teacher(digits, tmp_path, monkeypatch):
    idx = torch.cat([digits.class_indices(c)[:3] for c in digits.classes])
    job = EvalJob(ImageSet(digits.train_x[idx], digits.train_y[idx]), digits, 3, "digits")
    teacher = {
        "temperature": 4.0,
        "teacher_arch": "mlp",
        "teacher_epochs": 2,
        "teacher_lr": 0.05,
        "teacher_batch_size": 64,
    }
    ctx = Context(0)
    ctx.cache_dir = str(tmp_path)
    cell = {"arch": "mlp", "eval_seed": 0}

    def val_top1(labels: str) -> float:
        params = SelectionParams(
            tuned_job="t",
            config={},
            arch="mlp",
            seeds=1,
            epochs=30,
            labels=labels,
            sampling="fixed",
            recipe=SOFT_LABEL_RECIPE,  # d4m's paper protocol: the models learn with AdamW
            **teacher,
        )
        (row,) = TuneSelection().run(cell, job, params, ctx)
        assert row["split"] == "val"
        return row["value"]

    soft = val_top1("teacher")
    assert len(list((tmp_path / "teachers").glob("mlp-*.safetensors"))) == 1
    labeler = teacher_labels(digits, "mlp", Recipe(epochs=2, lr=0.05, batch_size=64), 4.0, tmp_path)
    top1, _ = fit_artifact(
        "mlp",
        job.artifact,
        3,
        digits,
        Recipe(epochs=30, **SOFT_LABEL_RECIPE),
        0,
        label_mode="teacher",
        labeler=labeler,
    )
    assert soft == top1["val"]  # the selection trained on that teacher's labels, that recipe
    assert val_top1("hard") != soft

    def no_training(*args, **kwargs):
        raise AssertionError("cross_arch trained a second teacher")

    monkeypatch.setattr("ddbench.teacher._train", no_training)
    cross = CrossArch.Params(archs=["mlp"], seeds=1, epochs=30, labels="teacher", **teacher)
    rows = CrossArch().run(cell, job, cross, ctx)
    assert {r["split"] for r in rows if r["metric"] == "top1"} == {"val", "test"}
    bad = TUNED.replace("eval_epochs: 20", "eval_epochs: 20\n      eval_teacher_arch: convnett")
    with pytest.raises(Exception, match="eval_teacher_arch: unknown architecture 'convnett'"):
        load_suite(write(tmp_path / "bad.yaml", bad))


def test_tune_needs_ray(tmp_path, capsys):
    from ddbench.cli import main

    path = write(tmp_path / "s.yaml", TUNED)
    assert main(["run", str(path), "--local", "--out", str(tmp_path / "runs")]) == 2
    assert "['dm'] have a tune: block, which runs on Ray: drop --local" in capsys.readouterr().err


@pytest.mark.ray
@pytest.mark.server
def test_tuned_suite_against_an_mlflow_server(tmp_path):
    """Trials distil as Train runs inside Tune trials; the chosen config is evaluated; MLflow
    (a real server) holds a child run per trial; the leaderboard finds the tuned method."""
    suite = write(tmp_path / "s.yaml", TUNED)
    out = tmp_path / "runs"
    server = MlflowServer(tmp_path / "mlflow").start()
    try:
        proc = run_cli("run", str(suite), "--out", str(out), "--tracking-uri", server.uri)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "tuning dm ipc=1 seed=0 [" in proc.stdout and "a Ray Tune experiment" in proc.stdout
        # each trial on its own job with its config; one after the other (max_concurrent_trials)
        selection = selection_rows(out)
        assert set(selection["method"]) == {"dm"}
        assert {json.dumps(json.loads(p)["config"]) for p in selection["eval_params"]} == {
            json.dumps({"lr_img": 0.1}),
            json.dumps({"lr_img": 10.0}),
        }
        tuned_of = {"dm": json.loads(selection["eval_params"][0])["tuned_job"]}
        (_, first_end), (second_start, _) = trial_windows(out, tuned_of["dm"])
        assert second_start >= first_end - 1.0  # timestamps are whole seconds
        board = run_cli(
            "leaderboard", "--tracking-uri", server.uri, "--suite", "tuned", "--format", "json"
        )
        assert board.returncode == 0, board.stderr[-2000:]
        entries = {(r["method"], r["arch"]): r for r in json.loads(board.stdout)}
        assert entries[("dm", "convnet")]["n"] == 1 and 0.0 <= entries[("dm", "convnet")]["mean"]

        import mlflow

        mlflow.set_tracking_uri(server.uri)
        runs = mlflow.search_runs(experiment_names=["tuned"])
        trials = runs[(runs["tags.ddbench.kind"] == "trial") & runs["params.lr_img"].notna()]
        assert sorted(trials["params.lr_img"]) == ["0.1", "10.0"]
        assert (trials["tags.chosen"] == "True").sum() == 1
        chosen = trials[trials["tags.chosen"] == "True"]["params.lr_img"].iloc[0]
        job_run = runs[(runs["tags.ddbench.kind"] == "job") & (runs["tags.method"] == "dm")]
        assert job_run["params.tune.lr_img"].iloc[0] == chosen
        assert set(trials["tags.mlflow.parentRunId"]) == {job_run["run_id"].iloc[0]}
    finally:
        server.stop()

    # a rerun that lost the tuned job's artifact re-runs Tune on the finished trials: no trial
    # distils or scores again (their artifacts and rows are kept), the same config is chosen
    tuned_job = tuned_of["dm"]
    kept = [
        *(out / "tuned" / "artifacts").glob("*/meta.json"),  # trial artifacts
        *(out / "tuned" / "results" / "tune").glob("*/*.parquet"),  # their selection rows
    ]
    stamps = {path: path.stat().st_mtime_ns for path in kept}
    shutil.rmtree(out / "tuned" / "artifacts" / tuned_job)
    again = run_cli("run", str(suite), "--out", str(out), "--tracking-uri", server_db(tmp_path))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "tuning dm ipc=1" in again.stdout
    after = [
        *(out / "tuned" / "results" / "tune").glob("*/*.parquet"),
        *[p for p in (out / "tuned" / "artifacts").glob("*/meta.json") if tuned_job not in str(p)],
    ]
    assert {p: p.stat().st_mtime_ns for p in after} == {
        p: t for p, t in stamps.items() if tuned_job not in str(p)
    }
    meta = json.loads((out / "tuned" / "artifacts" / tuned_job / "meta.json").read_text())
    assert meta["tune"]["config"] == {"lr_img": float(chosen)}

    rows = pl.read_parquet(str(out / "tuned" / "results" / "**" / "*.parquet"))
    selection = rows.filter(pl.col("evaluator") == "tune")
    assert set(selection["split"]) == {"val"}  # trials never see the test split
    final = rows.filter((pl.col("evaluator") == "cross_arch") & (pl.col("method") == "dm"))
    assert {json.loads(p)["lr_img"] for p in final["method_params"]} == {float(chosen)}
    events = list((out / "tuned" / "ray_tune").glob("tune-*/*/events.out.tfevents.*"))
    # one TensorBoard file per trial and run: two trials, then the same two again
    assert len(events) == 4
    report = run_cli("report", str(out / "tuned"), "--out", str(tmp_path / "reports"))
    assert report.returncode == 0, report.stderr[-2000:]
    text = (tmp_path / "reports" / "tuned" / "README.md").read_text()
    assert "## Ray Tune sweeps (selection on the val split)" in text
    assert f"| **{chosen}** |" in text and "_parallel.png" in text
