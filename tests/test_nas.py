"""NAS evaluators: the NAS-Bench-201 cell strings, the 720-ConvNet grid, seeded candidate sets,
tiny runs on digits with their reduce metrics, the shared whole-set cache and the report section."""

from __future__ import annotations

import itertools
import sys

import polars as pl
import pytest
import torch
from pydantic import ValidationError

from ddbench.archs.nb201 import (
    EDGES,
    OPS,
    ArchStringError,
    canonical,
    format_arch,
    make_op,
    parse_arch,
    sample_archs,
)
from ddbench.context import Context
from ddbench.errors import UserError
from ddbench.evals import EvalJob, get_eval
from ddbench.evals._nas import ranking_rows
from ddbench.evals.nas_bench_201 import benchmark_result, load_benchmark
from ddbench.methods import get_method
from ddbench.report.sections import SECTIONS

BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"  # noqa: E501


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small nets on a shared 2-core box
    yield
    torch.set_num_threads(threads)


def test_arch_string_round_trip() -> None:
    ops = parse_arch(BEST)
    assert ops == ("nor_conv_3x3",) * 3 + ("skip_connect", "nor_conv_3x3", "nor_conv_3x3")
    assert format_arch(ops) == BEST
    for combo in itertools.islice(itertools.product(OPS, repeat=len(EDGES)), 0, None, 997):
        assert parse_arch(format_arch(combo)) == combo


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "non-empty"),
        ("|none~0|+|none~0|none~1|", "3 node groups"),
        ("none~0|+|none~0|none~1|+|none~0|none~1|none~2|", "must be '|...|'"),
        ("|none~0|+|none~0|+|none~0|none~1|none~2|", "node 2 needs 2 inputs"),
        ("|none0|+|none~0|none~1|+|none~0|none~1|none~2|", "'op~source'"),
        ("|conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|", "did you mean 'nor_conv_3x3'"),
        ("|none~0|+|none~1|none~0|+|none~0|none~1|none~2|", "must read node ~0"),
    ],
)
def test_malformed_arch_strings(text: str, message: str) -> None:
    with pytest.raises(ArchStringError, match=message.replace("|", r"\|").replace(".", r"\.")):
        parse_arch(text)


def test_canonical_prunes_dead_edges_and_samples_are_distinct() -> None:
    # node 1 receives nothing, so its outgoing conv is dead; node 3 reads node 0 directly
    ops = parse_arch("|none~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_1x1~1|none~2|")
    assert canonical(ops) == ("none",) * 3 + ("skip_connect", "none", "none")
    archs = sample_archs(200, seed=0)
    assert archs == sample_archs(200, seed=0) and archs != sample_archs(200, seed=1)
    assert len({canonical(parse_arch(a)) for a in archs}) == 200


def test_720_unique_candidates_and_seeded_subset() -> None:
    nas = get_eval("nas720")
    cells = nas.cells("cpu", nas.Params())
    assert len(cells) == 720
    assert len({c["arch"] for c in cells}) == 720
    assert len({tuple(v for k, v in c.items() if k != "arch") for c in cells}) == 720
    subset = nas.cells("cpu", nas.Params(subset=48))
    assert subset == get_eval("nas720").cells("cpu", nas.Params(subset=48))  # stable, not the clock
    assert len(subset) == 48 and all(c in cells for c in subset)
    assert subset != nas.cells("cpu", nas.Params(subset=48, subset_seed=1))


def test_nas720_params_are_checked() -> None:
    nas = get_eval("nas720")
    with pytest.raises(ValidationError, match="divisible by 4"):
        nas.Params(widths=[6])
    with pytest.raises(ValidationError, match="larger than the grid"):
        nas.Params(widths=[8], depths=[1], subset=100)
    with pytest.raises(ValidationError, match="unknown activations"):
        nas.Params(activations=["gelu"])


def test_ranking_rows() -> None:
    proxy = {f"a{i}": i / 10 for i in range(10)}
    whole_val = {f"a{i}": i / 10 for i in range(10)}
    whole_test = {f"a{i}": 0.5 + i / 100 for i in range(10)}
    rows = {r["metric"]: r for r in ranking_rows("", proxy, whole_val, whole_test)}
    assert rows["spearman_rho"]["value"] == pytest.approx(1.0)
    assert rows["kendall_tau"]["value"] == pytest.approx(1.0)
    assert rows["top20_spearman_rho"]["value"] == pytest.approx(1.0)  # a9, a8
    assert rows["selected_test_top1"]["value"] == pytest.approx(0.59)
    assert rows["spearman_rho"]["split"] == "val" and rows["selected_test_top1"]["split"] == "test"
    # the two best by whole-set val in reversed proxy order: top-20 % rho -1
    flipped = {**proxy, "a9": 0.8, "a8": 0.9}
    rows = {r["metric"]: r for r in ranking_rows("x_", flipped, whole_val, whole_test)}
    assert rows["x_top20_spearman_rho"]["value"] == pytest.approx(-1.0)
    assert rows["x_selected_test_top1"]["value"] == pytest.approx(0.58)
    # a constant proxy has no rank correlation: the rows are left out, not NaN
    constant = dict.fromkeys(proxy, 0.3)
    metrics = {r["metric"] for r in ranking_rows("", constant, whole_val, whole_test)}
    assert metrics == {"selected_test_top1"}


def _run_all(name: str, params_kwargs: dict, digits, cache_dir: str | None) -> list[dict]:
    evaluator = get_eval(name)
    params = evaluator.Params.model_validate({**evaluator.smoke, **params_kwargs})
    artifact = get_method("random_real").distill(digits, 2, None, Context(0))
    ctx = Context(1)
    ctx.cache_dir = cache_dir
    job = EvalJob(artifact, digits, 2, "digits")
    cells = evaluator.cells("cpu", params)
    rows = [r for cell in cells for r in evaluator.run(cell, job, params, ctx)]
    return rows + evaluator.reduce(rows, params)


def test_nas720_tiny_run_and_cache_reuse(digits, tmp_path) -> None:
    small = {"activations": ["relu", "sigmoid"], "norms": ["none", "batchnorm"], "subset": 4}
    rows = _run_all("nas720", small, digits, str(tmp_path))
    cached = sorted((tmp_path / "nas").glob("*.json"))
    assert len(cached) == 2 * 4  # a whole-set and an early-stopping result per candidate
    metrics = {(r["metric"], r["split"]) for r in rows}
    for metric in ("proxy_top1", "whole_top1", "early_stop_top1"):
        assert {(metric, "val"), (metric, "test")} <= metrics
    for metric in ("spearman_rho", "kendall_tau", "num_candidates"):
        assert (metric, "val") in metrics
    assert ("selected_test_top1", "test") in metrics
    assert ("early_stop_selected_test_top1", "test") in metrics
    for r in rows:
        if r["metric"].endswith("top1"):
            assert 0.0 <= r["value"] <= 1.0
    mtimes = [p.stat().st_mtime_ns for p in cached]
    again = _run_all("nas720", small, digits, str(tmp_path))  # the second run reads the cache
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "nas").glob("*.json"))] == mtimes

    def reference(rs: list[dict]) -> list:
        keep = ("whole_top1", "early_stop_top1", "whole_seconds")
        return [(r["arch"], r["metric"], r["split"], r["value"]) for r in rs if r["metric"] in keep]

    assert reference(again) == reference(rows)

    # the report's NAS section: the reduce table and the proxy-vs-whole scatter plot
    table = pl.DataFrame(
        [{**r, "status": "ok", "evaluator": "nas720", "method_label": "rr", "ipc": 2} for r in rows]
    )
    section = SECTIONS.get("nas720")()
    lines = section.render(table, tmp_path)
    assert any(line.startswith("| rr | 2 | 4 |") for line in lines)
    assert (tmp_path / "nas_nas720.png").is_file()
    assert section.render(table.filter(pl.col("arch").is_null()), tmp_path) == []


def test_nas_bench_201_tiny_run(digits) -> None:
    rows = _run_all("nas_bench_201", {"samples": 3, "early_stop": False}, digits, None)
    archs = {r["arch"] for r in rows if r["arch"] is not None}
    assert len(archs) == 3 and all(parse_arch(a) for a in archs)
    metrics = {r["metric"] for r in rows}
    assert {"proxy_top1", "whole_top1", "selected_test_top1", "oracle_test_top1"} <= metrics
    assert not any(m.startswith("early_stop") for m in metrics)


def test_benchmark_file_errors(tmp_path, monkeypatch) -> None:
    with pytest.raises(UserError, match="no results for dataset 'digits'"):
        benchmark_result(str(tmp_path), BEST, "digits")
    with pytest.raises(UserError, match="does not exist"):
        load_benchmark(str(tmp_path / "missing.pth"))
    monkeypatch.setitem(sys.modules, "nats_bench", None)  # neither API installed
    monkeypatch.setitem(sys.modules, "nas_201_api", None)
    with pytest.raises(UserError, match="pip install nats_bench"):
        load_benchmark(str(tmp_path))


def test_correlations_on_known_inputs() -> None:
    """Hand-computed values (no scipy): proxy order 1..5 against whole-set 2,1,4,3,5."""
    names = [f"a{i}" for i in range(5)]
    proxy = dict(zip(names, [0.1, 0.2, 0.3, 0.4, 0.5], strict=True))
    whole_val = dict(zip(names, [0.2, 0.1, 0.4, 0.3, 0.5], strict=True))
    rows = {r["metric"]: r["value"] for r in ranking_rows("", proxy, whole_val, whole_val)}
    assert rows["spearman_rho"] == pytest.approx(1 - 6 * 4 / (5 * 24))  # sum d^2 = 4
    assert rows["kendall_tau"] == pytest.approx((8 - 2) / 10)  # 2 of 10 pairs discordant
    assert rows["top20_spearman_rho"] == pytest.approx(1.0)  # a4, a2 agree
    assert rows["selected_test_top1"] == pytest.approx(0.5)  # the proxy's best, a4


def test_nb201_op_semantics() -> None:
    x = torch.randn(2, 4, 6, 6)
    assert torch.equal(make_op("none", 4)(x), torch.zeros_like(x))
    assert torch.equal(make_op("skip_connect", 4)(x), x)
    pooled = make_op("avg_pool_3x3", 4)(x)
    assert torch.allclose(pooled[..., 2, 2], x[..., 1:4, 1:4].mean(dim=(-1, -2)))
    assert torch.allclose(pooled[..., 0, 0], x[..., :2, :2].mean(dim=(-1, -2)))  # no zero pad
    for conv in ("nor_conv_1x1", "nor_conv_3x3"):
        op = make_op(conv, 4)
        assert isinstance(op[0], torch.nn.ReLU) and op(x).shape == x.shape
    with pytest.raises(UserError, match="unknown operation"):
        make_op("sep_conv_3x3", 4)
