"""End to end: real suites through the CLI on embedded local Ray (with a killed driver), a
separately started two-node Ray cluster, and in-process; rows, MLflow runs, the report,
resuming and failed cells."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from ddbench.runner.loopback import (
    LoopbackCluster,
    processes_mentioning,
    stop_processes_mentioning,
)
from tests.conftest import REPO, run_cli

QUICK = str(REPO / "suites" / "quickstart.yaml")
SHARED_TOP1 = r"metrics\.cross_arch\.shared\.[0-9a-f]{8}\.ipc1\.convnet\.test_top1"


def results(out: Path, suite: str = "quickstart") -> pl.DataFrame:
    return pl.read_parquet(str(out / suite / "results" / "**" / "*.parquet"))


def result_files(out: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in out.glob("*/results/**/*.parquet")}


def kill_driver_once_cells_are_written(
    args: list[str], results: Path, ray_tmp: str, log: Path
) -> int:
    """Start `ddbench ARGS` (embedded Ray under `ray_tmp`, its output to `log`), SIGKILL it
    once 2 cells' result files exist, stop what it left (its embedded Ray); returns how many
    cells were written."""
    with log.open("w") as sink:
        driver = subprocess.Popen(
            [sys.executable, "-m", "ddbench.cli", *args],
            cwd=REPO,
            # unbuffered: a SIGKILL loses what a buffer holds
            env={**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        while driver.poll() is None and len(list(results.glob("**/*.parquet"))) < 2:
            time.sleep(0.2)  # no deadline of its own: the driver ending ends the wait
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    stop_processes_mentioning(ray_tmp)
    assert not processes_mentioning(ray_tmp)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    return len(list(results.glob("**/*.parquet")))


def assert_quiet(printed: str) -> None:
    """A quiet log: none of Ray's own lines, no colour codes, each worker progress line once."""
    assert "PlacementGroupCleaner" not in printed and "Failed to query" not in printed
    assert "\x1b[" not in printed
    progress = [line.split("] ", 1)[1] for line in printed.splitlines() if "iteration=" in line]
    assert len(progress) == len(set(progress)), progress


@pytest.mark.ray
def test_quickstart_smoke_on_embedded_ray(tmp_path):
    """The quickstart's smoke profile on embedded Ray, the way a user's run can go: the driver
    is SIGKILLed mid-suite (once 2 cells are written), the same command reruns and completes
    it (no row twice, none lost, no partial file), a third run has nothing to do; then the
    log, the rows, MLflow, the leaderboard and the report."""
    out, reports = tmp_path / "runs", tmp_path / "reports"
    args = ["run", QUICK, "--set", "profile=smoke", "--out", str(out)]
    from ddbench.plan import make_plan
    from ddbench.spec import load_suite

    plan = make_plan(load_suite(QUICK, ["profile=smoke"]))
    ray_tmp = f"/tmp/ddbk{os.getpid()}"  # short: Ray's socket paths have a length limit
    killed_log = tmp_path / "killed.log"
    written = kill_driver_once_cells_are_written(
        args, out / "quickstart" / "results", ray_tmp, killed_log
    )
    assert 2 <= written < len(plan.cells)  # killed mid-suite, after some cells
    killed = killed_log.read_text()
    assert_quiet(killed)
    assert "iteration=" in killed  # the distillation's progress was shown

    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not list(out.glob("quickstart/results/**/.tmp-*"))  # no partial file survived
    assert_quiet(proc.stdout + proc.stderr)

    rows = results(out)
    keys = rows.select("job_id", "eval_config", "ipc", "arch", "eval_seed", "split", "metric")
    assert keys.n_unique() == rows.height  # no row twice (two protocols: one per eval config)
    test_top1 = rows.filter((pl.col("metric") == "top1") & (pl.col("split") == "test"))
    assert (test_top1["status"] == "ok").all() and test_top1.height == len(plan.cells)
    expected = {(c.job.label, c.ipc, c.cell["arch"], c.cell["eval_seed"]) for c in plan.cells}
    got = {
        (r["method_label"], r["ipc"], r["arch"], r["eval_seed"])
        for r in test_top1.iter_rows(named=True)
    }
    assert got == expected
    evaluated = {j.job_id for j in plan.jobs if j.eval_ipcs}  # not prerequisites (d2m's cgan)
    assert set(rows["job_id"].unique()) == evaluated

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    runs = pl.from_pandas(mlflow.search_runs(experiment_names=["quickstart"]))
    kinds = runs["tags.ddbench.kind"].to_list()
    assert kinds.count("invocation") == 1 and kinds.count("job") == len(evaluated)
    job_runs = runs.filter(pl.col("tags.ddbench.kind") == "job")
    assert set(job_runs["tags.job_id"].to_list()) == evaluated
    # one metric family per eval config: cross_arch.<protocol>.<eval_config>.ipc1.convnet...
    family = [c for c in job_runs.columns if re.fullmatch(SHARED_TOP1, c)]
    assert len(family) == 1 and job_runs[family[0]].drop_nulls().len() >= 3
    assert job_runs["tags.ddbench.store"].drop_nulls().len() == len(evaluated)

    board = run_cli("leaderboard", "--runs", str(out), "--suite", "quickstart", "--format", "json")
    assert board.returncode == 0, board.stderr
    board_rows = pl.read_json(board.stdout.encode())
    assert {"random_real", "herding", "kcenter"} <= set(board_rows["method"].to_list())
    assert (board_rows["n"] >= 1).all()

    rep = run_cli(
        "report", "quickstart", "--runs", str(out), "--out", str(reports), "--format", "md,csv"
    )
    assert rep.returncode == 0, rep.stderr
    text = (reports / "quickstart" / "README.md").read_text()
    assert "### IPC 1" in text and "| random_real |" in text and "whole_dataset" in text
    assert "Gain over random_real" in text
    assert "## Top-1 by method and architecture: each method's paper protocol" in text
    for method in ("cgan", "dim", "d2m", "d4m"):  # each under its paper's protocol too
        assert f"| {method} (paper:{method}) |" in text
    assert "| methods | dm | iterations | 5 | budget |" in text  # the smoke profile's value
    assert (reports / "quickstart" / "accuracy_vs_ipc.png").stat().st_size > 1000
    assert list((reports / "quickstart" / "grids").glob("*.png"))
    assert (reports / "quickstart" / "summary.csv").is_file()

    before = result_files(out)
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "nothing to do" in again.stdout
    assert result_files(out) == before
    assert results(out).height == rows.height


TWO_NODES = """\
name: two_nodes
dataset: {name: digits}
ipc: [2]
distill_seeds: [0, 1]
methods:
  - name: dm
    params: {iterations: 60, batch_real: 64, checkpoint_every: 1000}
  - name: random_real
evals: [{name: cross_arch, params: {archs: [mlp], seeds: 2, epochs: 2}}]
"""


@pytest.mark.ray
def test_two_node_cluster_started_separately(tmp_path):
    """`ray start --head` and a second node on 127.0.0.1 (1 CPU each, own custom resources, own
    node-local caches); `ddbench run --address` with `--out` a `file://` URI, so artifacts and
    rows move through pyarrow.fs exactly as with s3:// or gs:// and no shared local disk is
    assumed. One cluster start-up checks what a cluster must do:

    - the two dm jobs are two Ray Train runs, one per node, at the same time (the windows and
      nodes each artifact's meta.json records);
    - eval cells run on both nodes (rows name the node), each node fetching the artifacts it
      evaluates into its own cache through the store;
    - a rerun has nothing to do and rewrites nothing; the report reads the URI.
    """
    import json
    from datetime import datetime

    from ddbench.storage import Store

    suite = tmp_path / "two_nodes.yaml"
    suite.write_text(TWO_NODES)
    out = (tmp_path / "runs").as_uri()
    caches = {name: tmp_path / f"cache_{name}" for name in ("head", "second")}
    nodes = LoopbackCluster("ddbn", multi_node=True)
    args = ["run", str(suite), "--out", out, "--tracking-uri", f"sqlite:///{tmp_path / 'ml.db'}"]
    try:
        for name, head in (("head", True), ("second", False)):
            nodes.start(
                head=head,
                num_cpus=1,
                resources=f'{{"node_{name}": 1}}',
                env={"DDBENCH_CACHE": str(caches[name])},
            )
        proc = run_cli(*args, "--address", nodes.address, env=nodes.env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        before = result_files(tmp_path / "runs")
        again = run_cli(*args, "--address", nodes.address, env=nodes.env)
        assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout[-2000:]
        assert result_files(tmp_path / "runs") == before
    finally:
        nodes.stop()

    run = tmp_path / "runs" / "two_nodes"
    metas = [json.loads((run / "artifacts" / j / "meta.json").read_text()) for j in _dm_jobs(run)]
    assert len(metas) == 2
    assert len({m["node"] for m in metas}) == 2, [m["node"] for m in metas]
    windows = [
        (
            datetime.fromisoformat(m["distill_started_at"]),
            datetime.fromisoformat(m["distill_ended_at"]),
        )
        for m in metas
    ]
    overlap = min(end for _, end in windows) - max(start for start, _ in windows)
    shortest = min(end - start for start, end in windows)
    assert overlap > shortest / 2, (windows, overlap)  # side by side, not one after the other

    rows = results(tmp_path / "runs", "two_nodes")
    assert (rows["status"] == "ok").all()
    assert rows["node"].str.starts_with("ray:").all()
    assert rows["node"].n_unique() == 2, rows["node"].value_counts()
    for cache in caches.values():  # each node copied what it evaluated from the URI store
        assert list(cache.glob("*/store/artifacts/*/meta.json")), cache
    assert not list(run.glob("**/.tmp-*"))  # no temporary file left in the store

    reports = tmp_path / "reports"
    rep = run_cli("report", "two_nodes", "--runs", out, "--out", str(reports))
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert "| dm |" in (reports / "two_nodes" / "README.md").read_text()
    assert Store(out).child("two_nodes").list_files("artifacts", suffix="meta.json")


def _dm_jobs(run: Path) -> list[str]:
    """The ids of the dm artifacts under a run directory."""
    import json

    return [
        p.parent.name
        for p in run.glob("artifacts/*/meta.json")
        if json.loads(p.read_text())["method"] == "dm"
    ]


def test_failed_cell_is_a_row_and_exit_code_1(tmp_path, failing_eval, capsys):
    from ddbench.cli import main

    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "name: failing\nipc: [1]\nmethods: [{name: random_real}]\n"
        f"evals: [{{name: {failing_eval}, params: {{archs: [mlp], seeds: 2, epochs: 5}}}}]\n"
    )
    out = tmp_path / "runs"
    assert main(["run", str(suite), "--local", "--out", str(out)]) == 1
    rows = results(out, "failing")
    failed = rows.filter(pl.col("status") == "failed")
    assert failed.height == 1 and "fails on purpose" in failed["error"][0]
    assert failed["value"].is_nan().all()
    ok = rows.filter(pl.col("status") == "ok")
    assert set(ok["eval_seed"].to_list()) == {0}
    # a rerun retries only the failed cell, and it fails again: still exit 1, no duplicates
    assert main(["run", str(suite), "--local", "--out", str(out)]) == 1
    assert results(out, "failing").height == rows.height
    assert "1 failed" in capsys.readouterr().out


def test_missing_data_is_exit_2_without_traceback(tmp_path, capsys):
    from ddbench.cli import main

    suite = tmp_path / "suite.yaml"
    suite.write_text(
        f"name: nodata\ndataset: {{name: cifar10, params: {{root: {tmp_path / 'none'}}}}}\n"
        "ipc: [1]\nmethods: [{name: random_real}]\nevals: [{name: cross_arch}]\n"
    )
    assert main(["run", str(suite), "--local", "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(tmp_path / "none") in err


def test_resources_no_node_can_hold():
    from ddbench.runner.resources import unplaceable, worker_slots
    from ddbench.spec import DistillResources, Resources

    cpu_node, gpu_node = {"CPU": 2.0, "memory": 1e9}, {"CPU": 8.0, "GPU": 1.0}
    assert unplaceable(Resources(), [cpu_node]) == []
    gpu_eval = Resources.model_validate({"eval": {"gpus": 1}})
    ((loc, message),) = unplaceable(gpu_eval, [cpu_node])
    assert loc == ("resources", "eval", "gpus") and message.startswith("1 GPU per eval cell")
    assert unplaceable(gpu_eval, [cpu_node, gpu_node]) == []
    wide = Resources.model_validate({"distill": {"workers": 3, "cpus_per_worker": 2}})
    assert [loc for loc, _ in unplaceable(wide, [cpu_node])] == [
        ("resources", "distill", "workers")
    ]
    assert unplaceable(wide, [cpu_node, gpu_node]) == []  # 1 + 4 workers fit
    # the same count sizes Tune's concurrent trials: a worker sits on one node
    assert worker_slots(wide.distill, [cpu_node, gpu_node]) == 5
    gpu_workers = DistillResources(gpus_per_worker=1)
    assert worker_slots(gpu_workers, [cpu_node, gpu_node, {"CPU": 3.0, "GPU": 0.5}]) == 1


@pytest.mark.ray
def test_unplaceable_resources_stop_the_embedded_run(tmp_path):
    """Before any work, with the suite's line; on the embedded Ray nothing could ever join."""
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "name: gpu\ndataset: {name: digits}\nipc: [1]\nmethods: [{name: random_real}]\n"
        "evals: [{name: cross_arch}]\nresources:\n  eval:\n    gpus: 1\n"
    )
    proc = run_cli("run", str(suite), "--out", str(tmp_path / "runs"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{suite}:8: resources.eval.gpus: 1 GPU per eval cell" in proc.stderr
    assert not (tmp_path / "runs" / "gpu" / "artifacts").exists()


@pytest.mark.ray
def test_embedded_ray_stays_on_loopback():
    """The embedded cluster advertises 127.0.0.1, not the machine's network address, and so
    does its dashboard (`ddbench run --dashboard`), which answers there to Ray's token."""
    import subprocess
    import sys

    code = (
        "import subprocess, sys, urllib.request\n"
        "from ddbench.runner.cluster import init_ray\n"
        "url = init_ray(None, num_cpus=1, dashboard=True)\n"
        "import ray\n"
        "ray_cli = sys.executable.replace('python', 'ray')\n"
        "token = subprocess.run([ray_cli, 'get-auth-token'], capture_output=True, text=True)\n"
        "request = urllib.request.Request(url + '/api/version', headers={\n"
        "    'Authorization': 'Bearer ' + token.stdout.strip()})\n"
        "print(url, urllib.request.urlopen(request, timeout=30).status)\n"
        "print(sorted({n['NodeManagerAddress'] for n in ray.nodes()}))\n"
        "ray.shutdown()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    dashboard, nodes = proc.stdout.strip().splitlines()[-2:]
    assert dashboard.startswith("http://127.0.0.1:") and dashboard.endswith(" 200")
    assert nodes == "['127.0.0.1']"
