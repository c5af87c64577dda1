"""Faults a cluster brings: a killed driver, a NaN loss, an unreachable MLflow server."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import polars as pl

from ddbench.runner.loopback import processes_mentioning, stop_processes_mentioning
from tests.conftest import REPO, run_cli

QUICK = str(REPO / "suites" / "quickstart.yaml")


def test_driver_killed_mid_suite_then_rerun_completes_without_duplicates(tmp_path):
    """SIGKILL the driver (embedded Ray) once cells are written; rerunning completes the suite."""
    out = tmp_path / "runs"
    ray_tmp = f"/tmp/ddbk{os.getpid()}"  # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    args = ["run", QUICK, "--set", "profile=smoke", "--out", str(out)]
    driver = subprocess.Popen(
        [sys.executable, "-m", "ddbench.cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results = out / "quickstart" / "results"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(results.glob("**/*.parquet"))) < 2:
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    stop_processes_mentioning(ray_tmp)  # what the killed driver left: its embedded Ray
    assert not processes_mentioning(ray_tmp)
    assert len(list(results.glob("**/*.parquet"))) >= 2

    proc = run_cli(*args, env=env)
    stop_processes_mentioning(ray_tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = pl.read_parquet(str(results / "**" / "*.parquet"))
    # the smoke profile evaluates two protocols: a row is one per eval config too
    keys = rows.select("job_id", "eval_config", "ipc", "arch", "eval_seed", "split", "metric")
    assert keys.n_unique() == rows.height  # no duplicated row
    from ddbench.plan import make_plan
    from ddbench.spec import load_suite

    plan = make_plan(load_suite(QUICK, ["profile=smoke"]))
    test_top1 = rows.filter((pl.col("split") == "test") & (pl.col("metric") == "top1"))
    assert test_top1.height == len(plan.cells)  # none lost
    assert not list(results.glob("**/.tmp-*"))  # no partial file survived the kill
    shutil.rmtree(ray_tmp, ignore_errors=True)


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
