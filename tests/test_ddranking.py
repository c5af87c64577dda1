"""DD-Ranking scores: the formulas against hand-computed values, the report's section built from
result rows of whole_dataset, random_real and a method in three cross_arch settings, and the
smoke profile of suites/dd_ranking.yaml end to end (in-process runner, about a minute)."""

from __future__ import annotations

import math
from datetime import timedelta

import polars as pl
import pytest

from ddbench.report import write_report
from ddbench.report.ddranking import ars, dd_ranking_section, hlr, ior, lrs, normalise
from ddbench.report.rows import load_rows
from ddbench.schema import now_utc, to_json, write_rows
from ddbench.storage import Store
from tests.conftest import REPO, run_cli
from tests.test_schema_plan import row

HARD = {"labels": "hard", "augment": True, "epochs": 300}
PLAIN = {"labels": "hard", "augment": False, "epochs": 300}
TEACHER = {"labels": "teacher", "augment": True, "epochs": 300, "temperature": 1.0}
# (method, ipc) -> params -> the two eval seeds' test top1; means: whole 0.90 (hard), dm
# 0.60 / 0.50 / 0.70, random_real 0.40 / 0.45 / 0.50 (hard / plain / teacher)
ACCURACIES = {
    ("whole_dataset", 0): {"hard": (0.88, 0.92), "plain": (0.86, 0.88), "teacher": (0.9, 0.9)},
    ("dm", 1): {"hard": (0.55, 0.65), "plain": (0.5, 0.5), "teacher": (0.68, 0.72)},
    ("random_real", 1): {"hard": (0.4, 0.4), "plain": (0.44, 0.46), "teacher": (0.5, 0.5)},
}
# the same accuracies give HLR 0.3, IOR 0.2, LRS normalise(0.5 * 0.2 - 0.5 * 0.3) and
# ARS normalise(0.5 * (0.6 - 0.4) + 0.5 * (0.5 - 0.45)) = normalise(0.125)
LRS = 0.248192  # (e^-0.05 - e^-1) / (e - e^-1)
ARS = 0.325591  # (e^0.125 - e^-1) / (e - e^-1)


def test_normalise_maps_minus_one_to_one_onto_zero_to_one():
    assert normalise(-1.0) == pytest.approx(0.0, abs=1e-12)
    assert normalise(1.0) == pytest.approx(1.0)
    assert normalise(0.0) == pytest.approx(1 / (1 + math.e))


def test_scores_against_hand_computed_values():
    assert hlr(0.9, 0.6) == pytest.approx(0.3)
    assert ior(0.7, 0.5) == pytest.approx(0.2)
    assert lrs(0.3, 0.2) == pytest.approx(LRS, abs=1e-6)
    assert ars(0.6, 0.4, 0.5, 0.45) == pytest.approx(ARS, abs=1e-6)
    # endpoints: alpha = 0.5 * IOR - 0.5 * HLR = 1 -> 1 and -1 -> 0 (likewise beta for ARS)
    assert lrs(hlr_value=-1.0, ior_value=1.0) == pytest.approx(1.0)
    assert lrs(hlr_value=1.0, ior_value=-1.0) == pytest.approx(0.0, abs=1e-12)
    assert ars(1.0, 0.0, 1.0, 0.0) == pytest.approx(1.0)
    assert ars(0.0, 1.0, 0.0, 1.0) == pytest.approx(0.0, abs=1e-12)
    # the weights: w = 1 is IOR alone, gamma = 1 the gap with augmentation alone
    assert lrs(0.3, 0.2, w=1.0) == pytest.approx(normalise(0.2))
    assert ars(0.6, 0.4, 0.5, 0.45, gamma=1.0) == pytest.approx(normalise(0.2))


def result_rows(settings: tuple[str, ...] = ("hard", "plain", "teacher")) -> list[dict]:
    params = {"hard": HARD, "plain": PLAIN, "teacher": TEACHER}
    rows = []
    for (method, ipc), by_setting in ACCURACIES.items():
        for setting in settings:
            for seed, value in enumerate(by_setting[setting]):
                rows.append(
                    row(
                        job_id=f"{method}{ipc}",
                        method=method,
                        method_label=method,
                        ipc=ipc,
                        eval_params=to_json(params[setting]),
                        eval_seed=seed,
                        value=value,
                    )
                )
    return rows


def section(tmp_path, rows: list[dict]) -> str:
    run = Store(tmp_path / "run")
    write_rows(run, "results/cross_arch/rows.parquet", rows)
    return "\n".join(dd_ranking_section(load_rows(run)[0]))


def test_report_tables_the_left_out_configs_apart(tmp_path):
    """The main table shows the latest config (teacher labels); the earlier hard-label run gets
    its own table, titled by what differs, rather than vanishing or being averaged in."""
    yesterday = now_utc() - timedelta(days=1)
    rows = [
        {**r, "created_at": yesterday} if '"hard"' in r["eval_params"] else r
        for r in result_rows(("hard", "teacher"))
    ]
    run = Store(tmp_path / "run")
    write_rows(run, "results/cross_arch/rows.parquet", rows)
    text = write_report(run, tmp_path / "report").read_text()
    main, others = text.split("## Other evaluation configs")
    assert "| dm | 70.0 ± 2.8 (2) |" in main and "| dm | 60.0 ± 7.1 (2) |" not in main
    assert "### cross_arch with labels: hard\n\n#### IPC 1" in others
    assert "| dm | 60.0 ± 7.1 (2) |" in others and "*whole_dataset* (reference)" in others


def test_report_shows_the_scores_with_their_accuracies(tmp_path):
    rows = result_rows()
    # an earlier run of the hard setting with other params: left out, the latest config counts
    earlier = {**HARD, "epochs": 10}
    rows.append(
        row(
            job_id="dm1",
            method="dm",
            method_label="dm",
            eval_params=to_json(earlier),
            value=0.1,
            created_at=now_utc() - timedelta(days=1),
        )
    )
    run = Store(tmp_path / "run")
    write_rows(run, "results/cross_arch/rows.parquet", rows)
    text = write_report(run, tmp_path / "report").read_text()
    assert "## DD-Ranking scores" in text
    assert "### Label robustness: HLR, IOR with teacher labels, with augmentation, LRS" in text
    assert (
        "| dm | 1 | convnet | 90.0 ± 2.8 (2) | 60.0 ± 7.1 (2) | 70.0 ± 2.8 (2) | 50.0 ± 0.0 (2) "
        f"| +0.300 | +0.200 | {LRS:.3f} |"
    ) in text
    assert (
        "| dm | 1 | convnet | 60.0 ± 7.1 (2) | 40.0 ± 0.0 (2) | 50.0 ± 0.0 (2) | 45.0 ± 1.4 (2) "
        f"| {ARS:.3f} |"
    ) in text
    assert "No rows of" not in text


def test_missing_inputs_leave_out_the_score_with_a_note(tmp_path):
    text = section(tmp_path, result_rows(("hard", "teacher")))
    assert f"+0.300 | +0.200 | {LRS:.3f} |" in text
    assert "### Augmentation robustness: ARS\n\nNot computed." in text
    assert "No rows of the method (hard labels, no augmentation) for dm ipc 1 convnet" in text
    assert "No rows of random_real (hard labels, no augmentation) for dm ipc 1 convnet" in text


def test_without_other_labels_ior_is_scored_on_hard_labels(tmp_path):
    text = section(tmp_path, result_rows(("hard",)))
    # IOR = 0.60 - 0.40; LRS = normalise(0.5 * 0.2 - 0.5 * 0.3)
    assert "IOR with hard labels, with augmentation" in text
    assert f"| +0.300 | +0.200 | {LRS:.3f} |" in text


def test_no_section_without_a_score(tmp_path):
    rows = [r for r in result_rows(("hard",)) if r["method"] != "whole_dataset"]
    assert section(tmp_path, [r for r in rows if r["method"] != "random_real"]) == ""
    # random_real and whole_dataset alone score nothing: they are the references
    only_references = [r for r in result_rows() if r["method"] != "dm"]
    assert section(tmp_path / "refs", only_references) == ""


@pytest.mark.slow
def test_smoke_suite_reports_the_scores(tmp_path):
    out, reports = tmp_path / "runs", tmp_path / "reports"
    suite = str(REPO / "suites" / "dd_ranking.yaml")
    # the plumbing only (scores recomputed from the rows): one short model per setting
    faster = [
        f"evals.{i}.params.{key}={value}"
        for i in range(3)
        for key, value in (("seeds", 1), ("epochs", 30), ("whole_set_epochs", 5))
    ] + ["evals.0.params.teacher_epochs=20"]
    sets = [arg for pair in faster for arg in ("--set", pair)]
    proc = run_cli("run", suite, "--set", "profile=smoke", *sets, "--local", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = run_cli("report", "dd_ranking", "--runs", str(out), "--out", str(reports))
    assert rep.returncode == 0, rep.stderr
    text = (reports / "dd_ranking" / "README.md").read_text()
    assert "## DD-Ranking scores" in text and "No rows of" not in text
    # every score from the rows themselves: means per method and setting over the eval seeds
    top1 = pl.read_parquet(str(out / "dd_ranking" / "results" / "**" / "*.parquet")).filter(
        (pl.col("metric") == "top1") & (pl.col("split") == "test")
    )
    means = {
        (r["method"], r["eval_params"]): r["value"]
        for r in top1.group_by("method", "eval_params").agg(pl.col("value").mean()).to_dicts()
    }

    def acc(method: str, labels: str, augment: bool) -> float:
        (value,) = [
            v
            for (m, params), v in means.items()
            if m == method
            and f'"labels":"{labels}"' in params
            and f'"augment":{str(augment).lower()}' in params
        ]
        return value

    for method in ("dm", "dsa", "datadam", "d4m"):
        recovery = hlr(acc("whole_dataset", "hard", True), acc(method, "hard", True))
        gain = ior(acc(method, "teacher", True), acc("random_real", "teacher", True))
        robust = ars(
            acc(method, "hard", True),
            acc("random_real", "hard", True),
            acc(method, "hard", False),
            acc("random_real", "hard", False),
        )
        scores = f"| {recovery:+.3f} | {gain:+.3f} | {lrs(recovery, gain):.3f} |"
        lines = [line for line in text.splitlines() if line.startswith(f"| {method} | 1 | convnet")]
        assert (
            len(lines) == 2 and lines[0].endswith(scores) and lines[1].endswith(f"| {robust:.3f} |")
        )
