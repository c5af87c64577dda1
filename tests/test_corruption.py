"""Corrupt files never crash a run: damaged result files and artifacts are moved aside, reported
in the log and recomputed by the rerun, while everything intact is left as it was.

One small suite (random_real at IPC 1 and 2 on digits, two 2-epoch MLP models per job) runs once
per module with `--local`; each test damages a copy of that run and reruns it in-process.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ddbench.cli import main

SUITE = """\
name: corrupt
ipc: [1, 2]
methods: [{name: random_real}]
evals: [{name: cross_arch, params: {archs: [mlp], seeds: 2, epochs: 2}}]
"""


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output root of one complete run of the suite (its MLflow database included)."""
    root = tmp_path_factory.mktemp("first")
    (root / "suite.yaml").write_text(SUITE)
    assert main(["run", str(root / "suite.yaml"), "--local", "--out", str(root / "runs")]) == 0
    return root


@pytest.fixture
def run_dir(first_run: Path, tmp_path: Path) -> Path:
    """A copy of the first run (file times kept) for one test to damage."""
    shutil.copytree(first_run, tmp_path / "copy", copy_function=shutil.copy2)
    return tmp_path / "copy"


def rerun(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run the suite again on `root`; its exit code and everything it printed."""
    code = main(["run", str(root / "suite.yaml"), "--local", "--out", str(root / "runs")])
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text
    return code, text


def files_of(root: Path) -> dict[str, int]:
    """Modification times (ns) of the run's artifact and cell result files, by relative path
    (moved-aside damage and the reduce rows, rewritten by every run, left out)."""
    run = root / "runs" / "corrupt"
    return {
        str(p.relative_to(run)): p.stat().st_mtime_ns
        for sub in ("artifacts", "results")
        for p in sorted((run / sub).rglob("*"))
        if p.is_file() and ".corrupt-" not in str(p) and not p.name.startswith("reduce-")
    }


def report(root: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """`ddbench report` of the run (it must succeed); the markdown it wrote."""
    out = root / "report"
    assert main(["report", "corrupt", "--runs", str(root / "runs"), "--out", str(out)]) == 0
    text = capsys.readouterr()
    assert "Traceback" not in text.out + text.err
    return (out / "corrupt" / "README.md").read_text()


def artifact_dirs(root: Path) -> list[Path]:
    return sorted(p for p in (root / "runs" / "corrupt" / "artifacts").iterdir() if p.is_dir())


def changed(before: dict[str, int], after: dict[str, int]) -> set[str]:
    return {rel for rel in before.keys() | after.keys() if before.get(rel) != after.get(rel)}


def test_truncated_result_file_is_listed_moved_aside_and_its_cell_rerun(run_dir, capsys):
    before = files_of(run_dir)
    cell = sorted(r for r in before if r.endswith(".parquet"))[0]
    path = run_dir / "runs" / "corrupt" / cell
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    text = report(run_dir, capsys)  # read-only: lists the file, renders the rest
    assert "## Unreadable files" in text and cell in text and "| random_real |" in text
    exported = run_dir / "export"
    args = ["export", "corrupt", "--all", "--runs", str(run_dir / "runs"), "--out", str(exported)]
    assert main(args) == 0
    assert f"skipped unreadable result file {cell}" in capsys.readouterr().out
    assert len(list(exported.iterdir())) == 2  # both distillates still exported

    code, log = rerun(run_dir, capsys)
    assert code == 0
    assert f"unreadable result file {cell}" in log and "moved aside" in log
    assert (path.parent / f"{path.name}.corrupt-1").is_file()  # kept, not deleted
    assert changed(before, files_of(run_dir)) == {cell}  # only the damaged cell was recomputed
    assert "## Unreadable files" not in report(run_dir, capsys)


@pytest.mark.parametrize(
    "damage",
    ["truncated tensors", "deleted meta.json", "unparsable meta.json"],
)
def test_damaged_artifact_is_moved_aside_and_distilled_again_at_start(run_dir, capsys, damage):
    """The cheap start-of-run check (sizes, meta.json) finds these without reading tensors."""
    before = files_of(run_dir)
    adir = artifact_dirs(run_dir)[0]
    job_id = adir.name
    if damage == "truncated tensors":
        tensors = adir / "tensors.safetensors"
        tensors.write_bytes(tensors.read_bytes()[:100])
        cause = "tensors.safetensors has 100 bytes"
    elif damage == "deleted meta.json":
        (adir / "meta.json").unlink()
        cause = "meta.json is missing"
    else:
        (adir / "meta.json").write_text('{"kind": "image_set", ')
        cause = "meta.json is not valid JSON"

    code, log = rerun(run_dir, capsys)
    assert code == 0
    assert f"artifact {job_id} is corrupt: {cause}" in log
    assert f"[{job_id[:8]}]" in log  # distilled again (lines name a job by its short id)
    moved = adir.parent / f"{job_id}.corrupt-1"
    assert moved.is_dir() and (moved / "tensors.safetensors").is_file()  # kept, not deleted
    # the artifact was distilled again; every result file and the other artifact are untouched
    assert changed(before, files_of(run_dir)) == {
        r for r in before if r.startswith(f"artifacts/{job_id}/")
    }
    from ddbench.artifact import verify_artifact
    from ddbench.storage import Store

    verify_artifact(Store(run_dir / "runs" / "corrupt"), f"artifacts/{job_id}")
    report(run_dir, capsys)


def test_bit_flipped_artifact_fails_its_cell_once_then_is_distilled_again(run_dir, capsys):
    """Same size, other bytes: only the digest check of a cell that reads the artifact sees it
    (one of its cells' results is deleted so that the rerun reads it)."""
    before = files_of(run_dir)
    adir = artifact_dirs(run_dir)[0]
    job_id = adir.name
    tensors = adir / "tensors.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0x01  # the last byte: image data, the header stays valid
    tensors.write_bytes(bytes(data))
    cell = sorted(r for r in before if r.startswith(f"results/cross_arch/{job_id}/"))[0]
    (run_dir / "runs" / "corrupt" / cell).unlink()

    code, log = rerun(run_dir, capsys)
    assert code == 1  # that cell legitimately failed: its artifact is corrupt
    line = f"artifact {job_id} is corrupt: tensors.safetensors does not match its sha256 digest"
    assert line in log and "rerun the suite to distil it again" in log
    assert (adir.parent / f"{job_id}.corrupt-1").is_dir()
    import polars as pl

    row = pl.read_parquet(run_dir / "runs" / "corrupt" / cell).row(0, named=True)
    assert row["status"] == "failed" and row["error"].startswith(line)
    assert "\n" not in row["error"]  # one line, no traceback

    code, log = rerun(run_dir, capsys)
    assert code == 0
    assert f"[{job_id[:8]}]" in log  # distilled again (lines name a job by its short id)
    assert changed(before, files_of(run_dir)) == {
        *(r for r in before if r.startswith(f"artifacts/{job_id}/")),
        cell,
    }
    assert "## Failed cells" not in report(run_dir, capsys)


def test_a_stale_node_cache_copy_is_fetched_again(tmp_path, monkeypatch, digits):
    """A URI store's artifact cached on this node: a damaged cached copy is dropped and copied
    again; a damaged store copy raises `CorruptArtifact`, and old artifacts without digests are
    accepted."""
    import json

    import torch

    from ddbench.artifact import FILES_KEY, CorruptArtifact, ImageSet, load_artifact
    from ddbench.runner.work import local_artifact
    from ddbench.storage import Store

    monkeypatch.setenv("DDBENCH_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "store"
    ImageSet(digits.train_x[:10], digits.train_y[:10]).save(root / "artifacts" / "j")
    store = Store(f"file://{root}")

    stored = root / "artifacts" / "j" / "tensors.safetensors"
    cached = local_artifact(store, "j")
    assert cached != stored.parent
    (cached / "tensors.safetensors").write_bytes(b"\0" * 8)  # a damaged node-local copy
    assert local_artifact(store, "j") == cached
    assert (cached / "tensors.safetensors").read_bytes() == stored.read_bytes()  # fetched again

    good = stored.read_bytes()
    stored.write_bytes(good[:-4])  # now the store's own copy is damaged
    shutil.rmtree(cached)
    with pytest.raises(CorruptArtifact, match="artifact j is corrupt: tensors.safetensors has"):
        local_artifact(store, "j")
    assert stored.parent.is_dir()  # moving it aside is the caller's decision (`set_aside`)

    stored.write_bytes(good)
    meta_path = stored.parent / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta[FILES_KEY]  # an artifact written before digests were recorded: not checked
    meta_path.write_text(json.dumps(meta))
    shutil.rmtree(cached, ignore_errors=True)
    assert torch.equal(load_artifact(local_artifact(store, "j")).labels, digits.train_y[:10])
