"""End to end: real suites through the CLI on embedded local Ray, a separately started Ray
cluster, and in-process; rows, MLflow runs, the report, resuming and failed cells."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from ddbench.runner.loopback import LoopbackCluster
from tests.conftest import REPO, run_cli

QUICK = str(REPO / "suites" / "quickstart.yaml")
SHARED_TOP1 = r"metrics\.cross_arch\.shared\.[0-9a-f]{8}\.ipc1\.convnet\.test_top1"


def results(out: Path, suite: str = "quickstart") -> pl.DataFrame:
    return pl.read_parquet(str(out / suite / "results" / "**" / "*.parquet"))


def result_files(out: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in out.glob("*/results/**/*.parquet")}


def test_quickstart_smoke_on_embedded_ray(tmp_path):
    out, reports = tmp_path / "runs", tmp_path / "reports"
    proc = run_cli("run", QUICK, "--set", "profile=smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # a quiet log: none of Ray's own lines, each worker progress line once, no colour codes
    printed = proc.stdout + proc.stderr
    assert "PlacementGroupCleaner" not in printed and "Failed to query" not in printed
    assert "\x1b[" not in printed
    progress = [line.split("] ", 1)[1] for line in proc.stdout.splitlines() if "iteration=" in line]
    assert progress and len(progress) == len(set(progress)), progress

    from ddbench.plan import make_plan
    from ddbench.spec import load_suite

    plan = make_plan(load_suite(QUICK, ["profile=smoke"]))
    rows = results(out)
    test_top1 = rows.filter((pl.col("metric") == "top1") & (pl.col("split") == "test"))
    assert (test_top1["status"] == "ok").all()
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
    assert (reports / "quickstart" / "accuracy_vs_ipc.png").stat().st_size > 1000
    assert list((reports / "quickstart" / "grids").glob("*.png"))
    assert (reports / "quickstart" / "summary.csv").is_file()

    before = result_files(out)
    again = run_cli("run", QUICK, "--set", "profile=smoke", "--out", str(out))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "nothing to do" in again.stdout
    assert result_files(out) == before
    assert results(out).height == rows.height


def test_separately_started_ray_cluster(tmp_path):
    """`ray start --head` on 127.0.0.1, a smoke suite with --address, then stop what we started."""
    nodes = LoopbackCluster("ddbt")
    try:
        nodes.start(head=True, num_cpus=2)
        out = tmp_path / "runs"
        proc = run_cli(
            "run",
            QUICK,
            "--set",
            "profile=smoke",
            "--only",
            "random_real",
            "--address",
            nodes.address,
            "--out",
            str(out),
            env=nodes.env,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        rows = results(out)
        assert (rows["status"] == "ok").all() and rows.height > 0
    finally:
        nodes.stop()


def test_multi_node_cells_run_on_both_nodes(tmp_path):
    """A head and a second node (distinct custom resources) on 127.0.0.1; rows name the node.

    `--out` is a `file://` URI, so artifacts and rows move through pyarrow.fs exactly as with
    s3:// or gs://, and each node has its own local cache: both nodes must have fetched the
    artifact through the store (no shared local disk is assumed).
    """
    nodes = LoopbackCluster("ddbm", multi_node=True)
    caches = {name: tmp_path / f"cache_{name}" for name in ("head", "second")}
    try:
        nodes.start(
            head=True,
            num_cpus=1,
            resources='{"node_head": 1}',
            env={"DDBENCH_CACHE": str(caches["head"])},
        )
        nodes.start(
            head=False,
            num_cpus=1,
            resources='{"node_second": 1}',
            env={"DDBENCH_CACHE": str(caches["second"])},
        )
        out = tmp_path / "runs"
        proc = run_cli(
            "run",
            QUICK,
            "--set",
            "profile=smoke",
            "--only",
            "random_real",
            "--set",
            "evals.cross_arch.params.seeds=4",
            "--address",
            nodes.address,
            "--out",
            out.as_uri(),
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            env=nodes.env,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        rows = results(out)
        assert (rows["status"] == "ok").all()
        assert rows["node"].str.starts_with("ray:").all()
        assert rows["node"].n_unique() == 2, rows["node"].value_counts()
        for cache in caches.values():  # each node copied the artifact from the URI store
            assert list(cache.glob("*/store/artifacts/*/meta.json")), cache
    finally:
        nodes.stop()


TWO_JOBS = """\
name: two_jobs
dataset: {name: digits}
ipc: [2]
distill_seeds: [0, 1]
methods:
  - name: dm
    params: {iterations: 60, batch_real: 64, checkpoint_every: 1000}
evals: [{name: cross_arch, params: {archs: [mlp], seeds: 1, epochs: 2}}]
"""


def test_two_nodes_distil_two_jobs_side_by_side(tmp_path):
    """Two equal distill jobs on a two-node loopback cluster (1 CPU each): each job is its own
    Ray Train run, one per node, and the two run at the same time (from the windows and nodes
    each artifact's meta.json records)."""
    import json
    from datetime import datetime

    suite = tmp_path / "two_jobs.yaml"
    suite.write_text(TWO_JOBS)
    nodes = LoopbackCluster("ddbj", multi_node=True)
    try:
        nodes.start(head=True, num_cpus=1)
        nodes.start(head=False, num_cpus=1)
        out = tmp_path / "runs"
        proc = run_cli(
            "run",
            str(suite),
            "--address",
            nodes.address,
            "--out",
            out.as_uri(),
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            env=nodes.env,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    finally:
        nodes.stop()
    metas = [json.loads(p.read_text()) for p in out.glob("two_jobs/artifacts/*/meta.json")]
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


def test_missing_data_is_exit_2_without_traceback(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        f"name: nodata\ndataset: {{name: cifar10, params: {{root: {tmp_path / 'none'}}}}}\n"
        "ipc: [1]\nmethods: [{name: random_real}]\nevals: [{name: cross_arch}]\n"
    )
    proc = run_cli("run", str(suite), "--local", "--out", str(tmp_path / "runs"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and str(tmp_path / "none") in proc.stderr


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
