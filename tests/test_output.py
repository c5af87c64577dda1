"""What a run prints (ddbench/progress.py): a `--local` run's captured output has no duplicated
lines and no colour codes, carries counts, names a failed cell with its cause and ends with the
next commands; `--quiet` prints only problems and the summary."""

from __future__ import annotations

import re

from ddbench.plan import ipc_text
from ddbench.progress import next_steps
from ddbench.runner.work import RunSummary

ANSI = re.compile(r"\x1b\[")
STAMP = re.compile(r"^\[\s*\d+\.\ds\] ")


def test_local_run_output(tmp_path, failing_eval, capsys):
    from ddbench.cli import main

    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "name: output\ndataset: {name: digits}\nipc: [1]\n"
        "methods: [{name: random_real}, {name: dm, params: {iterations: 3, batch_real: 16}}]\n"
        f"evals: [{{name: {failing_eval}, params: {{archs: [mlp], seeds: 2, epochs: 2}}}}]\n"
    )
    out = tmp_path / "runs"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["run", str(suite), "--local", "--out", str(out), "--tracking-uri", tracking]
    assert main(argv) == 1
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert not ANSI.search(text)
    assert len(lines) == len(set(lines)), [x for x in lines if lines.count(x) > 1]
    # counts on the lines of ended units, up to the totals
    assert "[distill 1/2 · eval 0/4" in text and "[distill 2/2 · eval 4/4]" in text
    assert "distilled dm ipc=1 seed=0 [" in text
    # the failed cell: named (evaluator, label, ipc, arch, seed) with the first line of its cause
    failed = [x for x in lines if " failed " in x and "fails on purpose" in x]
    assert len(failed) == 2, lines
    assert any(
        f"failed {failing_eval} random_real ipc=1 arch=mlp eval_seed=1: "
        "RuntimeError: this cell fails on purpose" in x
        for x in failed
    )
    assert "second line not shown" not in text
    assert "ran 4 cells (0 cached, 2 failed)" in text
    # the next commands, exact for this run
    footer = lines[lines.index("next:") :]
    assert f"ddbench report output --runs {out} --format md,html" in footer[1]
    assert f"mlflow ui --backend-store-uri {tracking}" in footer[2]
    assert f"{out}/output/results/**/*.parquet" in footer[3]

    # --quiet: the rerun retries the failed cells only; problems, the summary and next commands
    assert main([*argv, "--quiet"]) == 1
    quiet = capsys.readouterr().out.splitlines()
    stamped = [x for x in quiet if STAMP.match(x)]
    assert len(stamped) == 3, quiet
    assert all("fails on purpose" in x for x in stamped[:2])
    assert "ran 2 cells (2 cached, 2 failed)" in stamped[2]
    assert quiet[len(stamped)] == "next:" and len(quiet) == len(stamped) + 4


def test_tally_and_eta():
    summary = RunSummary(jobs_total=2, cells_total=4)
    assert summary.tally() == "[distill 0/2 · eval 0/4]"  # no ETA before a unit ends
    summary.distilled, summary.cells_run, summary.cells_cached = 1, 1, 1
    summary.started -= 10.0  # 2 units ended in 10 s; 1 job and 2 cells left: 15 s
    assert re.fullmatch(r"\[distill 1/2 · eval 2/4 · ETA 1[56] s\]", summary.tally())
    summary.distilled, summary.cells_run = 2, 3
    assert summary.tally() == "[distill 2/2 · eval 4/4]"


def test_one_spelling_for_every_ipc():
    assert [ipc_text(i) for i in (None, 0, 10)] == ["every", "whole", "10"]


def test_next_steps_name_a_server_by_its_url():
    lines = next_steps("quickstart", "runs", "http://127.0.0.1:5000", "runs/quickstart/results")
    assert lines[1].startswith("  ddbench report quickstart --format md,html")
    assert "open http://127.0.0.1:5000" in lines[2]
