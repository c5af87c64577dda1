"""Where a suite's values were chosen (`chosen_on`): checked at load, recorded per run, reported."""

from __future__ import annotations

import json

import pytest

from ddbench.choices import CHOSEN_ON_FILE, OVERRIDDEN, TUNED, UNRECORDED, value_choices
from ddbench.report import choices_section
from ddbench.spec import SuiteError, load_suite
from ddbench.storage import Store
from tests.conftest import REPO
from tests.test_spec import write

SUITE = """\
name: chosen
ipc: [1]
methods:
  - name: dm
    params: {iterations: 30, batch_real: 64, lr_img: 1.0}
    chosen_on: {iterations: budget, lr_img: paper}
    tune:
      space: {batch_real: {grid: [32, 64]}}
evals:
  - name: cross_arch
    params: {epochs: 60, seeds: 2}
    chosen_on: {epochs: budget}
"""


def test_chosen_on_names_a_param_the_entry_sets_and_never_the_test_split(tmp_path):
    typo = SUITE.replace("lr_img: paper", "lr_imgg: paper")
    with pytest.raises(SuiteError, match=r"suite.yaml:6: methods.dm.chosen_on.lr_imgg: not a par"):
        load_suite(write(tmp_path, typo))
    unset = SUITE.replace("{epochs: budget}", "{epochs: budget, lr: val}")
    with pytest.raises(SuiteError, match=r"evals.cross_arch.chosen_on.lr: not a param this entr"):
        load_suite(write(tmp_path, unset))
    on_test = SUITE.replace("lr_img: paper", "lr_img: test")
    with pytest.raises(SuiteError, match=r"methods.dm.chosen_on.lr_img: .*'val', 'paper'"):
        load_suite(write(tmp_path, on_test))


def test_every_set_value_is_recorded_with_where_it_was_chosen(tmp_path):
    loaded = load_suite(write(tmp_path, SUITE), ["methods.dm.params.iterations=5"])
    records = value_choices(loaded)
    set_values = {
        (r["entry"], r["param"]): (r["value"], r["chosen_on"])
        for r in records
        if r["chosen_on"] != TUNED
    }
    assert set_values == {
        ("dm", "iterations"): ("5", OVERRIDDEN),  # the override, not the suite's budget
        ("dm", "batch_real"): ("64", UNRECORDED),
        ("dm", "lr_img"): ("1.0", "paper"),
        ("cross_arch", "epochs"): ("60", "budget"),
        ("cross_arch", "seeds"): ("2", UNRECORDED),
    }
    whole = load_suite(write(tmp_path, SUITE), ["evals.cross_arch.params={epochs: 9}"])
    assert [
        (r["param"], r["chosen_on"]) for r in value_choices(whole) if r["section"] == "evals"
    ] == [
        ("epochs", OVERRIDDEN)  # an override of the whole params mapping covers its values
    ]
    tuned = [r for r in records if r["chosen_on"] == TUNED]
    assert [(r["entry"], r["param"], json.loads(r["value"])) for r in tuned] == [
        ("dm", "batch_real", {"grid": [32, 64]})
    ]


def test_the_report_lists_the_record(tmp_path):
    store = Store(tmp_path / "run")
    assert choices_section(store) == []  # a run from before the record: no section
    loaded = load_suite(write(tmp_path, SUITE))
    store.write_text(CHOSEN_ON_FILE, json.dumps(value_choices(loaded)))
    text = "\n".join(choices_section(store))
    assert "| methods | dm | lr_img | 1.0 | paper |" in text
    assert "| evals | cross_arch | epochs | 60 | budget |" in text
    assert '| methods | dm | batch_real | {"grid": [32, 64]} | val (Ray Tune) |' in text
    assert "2 of 6 values do not say where they were chosen" in text


def test_the_quickstart_says_where_its_values_were_chosen():
    """The embedded-defaults suite leaves no value unrecorded."""
    loaded = load_suite(REPO / "suites" / "quickstart.yaml")
    unrecorded = [
        f"{r['entry']}.{r['param']}" for r in value_choices(loaded) if r["chosen_on"] == UNRECORDED
    ]
    assert unrecorded == []
