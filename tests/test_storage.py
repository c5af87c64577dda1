"""The output store: the same behaviour on a plain path and on a URI (`file://`, the pyarrow
local filesystem, which takes the object-store code path); a whole run into a URI on a
two-node cluster is in tests/test_e2e.py."""

from __future__ import annotations

import pickle

import polars as pl
import pytest

from ddbench.errors import UserError
from ddbench.protocols import eval_config
from ddbench.schema import make_row, now_utc, read_results, read_rows, write_rows
from ddbench.storage import Store


@pytest.fixture(params=["path", "uri"])
def store(request, tmp_path, monkeypatch) -> Store:
    monkeypatch.setenv("DDBENCH_CACHE", str(tmp_path / "node_cache"))
    root = tmp_path / "runs" / "suite"
    return Store(root if request.param == "path" else root.as_uri())


def row(**overrides):
    base = dict(
        suite="s", job_id="j", method="m", method_label="m", method_version=1,
        method_params="{}", dataset="digits", ipc=1, distill_seed=0, artifact_bytes=1,
        distill_seconds=0.1, evaluator="cross_arch", eval_version=1, eval_params="{}",
        arch="mlp", eval_seed=0, step=None, split="test", metric="top1", value=0.5,
        higher_is_better=True, status="ok", error=None, wall_time_s=0.1,
        ddbench_version="0", git_sha="x", created_at=now_utc(), node=None, protocol="shared",
        prerequisite_seconds=0.0,
    )  # fmt: skip
    full = {**base, **overrides}
    config = eval_config(full["evaluator"], full["eval_version"], full["eval_params"])
    return make_row(**{"eval_config": config, **full})


def test_files_round_trip_without_temp_files(store):
    store.write_text("a/b/c.txt", "hello")
    store.write_bytes("a/d.bin", b"\x00\x01")
    assert store.read_text("a/b/c.txt") == "hello" and store.exists("a/d.bin")
    assert store.list_files("a") == ["a/b/c.txt", "a/d.bin"]
    assert store.list_files("a", suffix=".txt") == ["a/b/c.txt"]
    assert store.list_files("missing") == []
    store.write_text("a/b/c.txt", "again")  # overwrite is atomic too
    assert store.read_text("a/b/c.txt") == "again"
    store.delete("a/b")
    assert not store.exists("a/b/c.txt") and store.list_files("a") == ["a/d.bin"]
    store.delete("never/there")  # missing is fine


def test_rows_round_trip(store):
    write_rows(store, "results/x/j/c1.parquet", [row()])
    write_rows(store, "results/x/j/c2.parquet", [row(eval_seed=1, value=0.75)])
    assert [r["value"] for r in read_rows(store, "results/x/j/c2.parquet")] == [0.75]
    table = pl.from_arrow(read_results(store))
    assert table.height == 2 and table["value"].sum() == pytest.approx(1.25)


def test_staged_dir_publishes_with_marker_and_replaces(store):
    with store.staged_dir("artifacts/j1", marker="meta.json") as d:
        d.mkdir()
        (d / "tensors.bin").write_bytes(b"1234")
        (d / "meta.json").write_text("{}")
    assert store.list_files("artifacts") == ["artifacts/j1/meta.json", "artifacts/j1/tensors.bin"]
    with pytest.raises(RuntimeError), store.staged_dir("artifacts/j2", marker="meta.json") as d:
        d.mkdir()
        (d / "meta.json").write_text("{}")
        raise RuntimeError("the job died before publishing")
    assert not store.exists("artifacts/j2")  # nothing half-written is visible
    with store.staged_dir("artifacts/j1", marker="meta.json") as d:  # a forced recomputation
        d.mkdir()
        (d / "meta.json").write_text('{"v": 2}')
    assert store.list_files("artifacts") == ["artifacts/j1/meta.json"]


def test_local_copy_reads_through_the_store(store, tmp_path):
    with store.staged_dir("artifacts/j", marker="meta.json") as d:
        d.mkdir()
        (d / "meta.json").write_text("{}")
        (d / "sub").mkdir()
        (d / "sub" / "x.txt").write_text("x")
    with store.local_file("artifacts/j/sub/x.txt") as path:
        assert path.read_text() == "x"
    local = store.local_copy("artifacts/j", marker="meta.json")
    assert (local / "sub" / "x.txt").read_text() == "x"
    if store.local_root is None:  # URI store: a node-local copy, reused afterwards
        assert local.is_relative_to(tmp_path / "node_cache")
        store.delete("artifacts/j")
        assert store.local_copy("artifacts/j", marker="meta.json") == local
    with pytest.raises(FileNotFoundError):
        store.local_copy("artifacts/unpublished", marker="meta.json")


def test_pickles_as_its_uri(store):
    store.write_text("t.txt", "x")
    back = pickle.loads(pickle.dumps(store))
    assert back.uri == store.uri and back.read_text("t.txt") == "x"


def test_bad_uri_is_a_user_error():
    with pytest.raises(UserError, match="nosuchscheme"):
        Store("nosuchscheme://bucket/runs").exists("x")
