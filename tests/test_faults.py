"""Faults a run meets: a NaN loss, an unreachable MLflow server (a killed driver: the quickstart
smoke test in tests/test_e2e.py)."""

from __future__ import annotations

import polars as pl
import pytest

from tests.conftest import REPO, run_cli

QUICK = str(REPO / "suites" / "quickstart.yaml")


@pytest.mark.slow
def test_nan_loss_stops_the_job_with_a_clear_message(tmp_path):
    suite = tmp_path / "nan.yaml"
    suite.write_text(
        # eager matching net: on a compiled one (`compile: auto` picks it for this job's length)
        # 1e38-scale images were seen to give a finite loss: NaN stops are tested eager only
        "name: nan\nipc: [1]\nmethods: [{name: dm, params: {iterations: 50, lr_img: 1.0e+38, "
        "compile: 'off'}}]\n"
        "evals: [{name: cross_arch, params: {archs: [mlp], seeds: 1, epochs: 2}}]\n"
    )
    proc = run_cli("run", str(suite), "--local", "--out", str(tmp_path / "runs"))
    assert proc.returncode == 1
    rows = pl.read_parquet(str(tmp_path / "runs" / "nan" / "results" / "**" / "*.parquet"))
    assert (rows["status"] == "failed").all()
    assert "matching loss became" in rows["error"][0]
    assert "distillation failed" in proc.stdout


@pytest.mark.slow
def test_unreachable_mlflow_keeps_results_and_a_later_run_logs_them(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # nothing listens here once the socket closes
    out = tmp_path / "runs"
    args = [
        "run",
        QUICK,
        "--set",
        "profile=smoke",
        "--only",
        "random_real",
        "--local",
        "--out",
        str(out),
    ]
    proc = run_cli(*args, "--tracking-uri", f"http://127.0.0.1:{dead_port}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "could not be reached" in proc.stdout
    assert list((out / "quickstart" / "results").glob("**/*.parquet"))
    db = f"sqlite:///{tmp_path / 'later.db'}"
    later = run_cli(*args, "--tracking-uri", db)
    assert later.returncode == 0
    assert "nothing to do" in later.stdout and "logged 1 job runs" in later.stdout

    import mlflow

    mlflow.set_tracking_uri(db)
    runs = mlflow.search_runs(experiment_names=["quickstart"])
    assert (runs["tags.ddbench.kind"] == "job").sum() == 1
