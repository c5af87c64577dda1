"""Suite validation: every error at once, with file:line: dotted.path: message; overrides."""

from pathlib import Path

import pytest

from ddbench.spec import SuiteError, load_suite
from tests.conftest import REPO, run_cli

BAD_SUITE = """\
name: broken
dataset: {name: digits}
ipc: [1]
methods:
  - name: herding
    params:
      embed_epochz: 3
  - name: datadamm
evals:
  - name: cross_arch
    params:
      seeds: many
"""


def write(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_validate_reports_all_errors_with_lines_and_exits_2(tmp_path):
    path = write(tmp_path, BAD_SUITE)
    proc = run_cli("validate", str(path))
    assert proc.returncode == 2
    err = proc.stderr
    assert "Traceback" not in err
    assert f"{path}:7: methods.herding.params.embed_epochz: unknown parameter" in err
    assert "did you mean 'embed_epochs'" in err
    assert f"{path}:8: methods.datadamm.name: unknown method 'datadamm'" in err
    assert f"{path}:12: evals.cross_arch.params.seeds:" in err and "integer" in err


def test_unknown_top_level_key_and_duplicate_keys(tmp_path):
    path = write(
        tmp_path,
        "name: x\nipcs: [1]\nipc: [1]\nmethods: [{name: random_real}]\n"
        "evals: [{name: cross_arch}]\n",
    )
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert f"{path}:2: ipcs: unknown key (did you mean 'ipc'?)" in str(info.value)
    dup = write(tmp_path, "name: x\nname: y\n", "dup.yaml")
    with pytest.raises(SuiteError, match=r"dup.yaml:2: name: duplicate key"):
        load_suite(dup)


def test_yaml_tags_are_rejected(tmp_path):
    path = write(tmp_path, "name: !!python/object:os.system x\n")
    with pytest.raises(SuiteError, match=r"suite.yaml:1:"):
        load_suite(path)


def test_set_overrides_by_name_and_profiles():
    quick = REPO / "suites" / "quickstart.yaml"
    loaded = load_suite(
        quick, ["evals.cross_arch.params.epochs=7", "methods.herding.params.embed_epochs=2"]
    )
    assert loaded.eval_params[0].epochs == 7
    herding = [
        p
        for s, p in zip(loaded.suite.methods, loaded.method_params, strict=True)
        if s.name == "herding"
    ]
    assert herding[0].embed_epochs == 2
    smoke = load_suite(quick, ["profile=smoke"])
    assert smoke.suite.ipc == [1] and smoke.eval_params[0].seeds == 1
    # --set wins over the profile
    both = load_suite(quick, ["profile=smoke", "evals.cross_arch.params.seeds=3"])
    assert both.eval_params[0].seeds == 3
    # a paper-scale suite's smoke profile shrinks what the suite sets (smoke params fill gaps)
    paper = load_suite(REPO / "suites" / "cross_arch.yaml", ["profile=smoke"])
    budgets = {s.name: p for s, p in zip(paper.suite.methods, paper.method_params, strict=True)}
    assert budgets["dm"].iterations == budgets["datadam"].iterations == 100
    assert budgets["dc"].iterations == 2  # dc's own smoke params: the suite leaves it unset


def test_bad_overrides_are_located():
    quick = REPO / "suites" / "quickstart.yaml"
    with pytest.raises(SuiteError, match="no entry named 'herdin'.*did you mean 'herding'"):
        load_suite(quick, ["methods.herdin.params.embed_epochs=2"])
    with pytest.raises(SuiteError, match=r"--set evals.cross_arch.params.epochs: .*epochs"):
        load_suite(quick, ["evals.cross_arch.params.epochs=-1"])
    with pytest.raises(SuiteError, match="no such profile.*did you mean 'smoke'"):
        load_suite(quick, ["profile=smok"])


def test_unknown_arch_is_caught_with_suggestion(tmp_path):
    path = write(
        tmp_path,
        "name: x\nipc: [1]\nmethods: [{name: random_real}]\n"
        "evals: [{name: cross_arch, params: {archs: [convnt]}}]\n",
    )
    with pytest.raises(
        SuiteError, match=r"suite.yaml:4: evals.cross_arch.params.archs: .*did you mean 'convnet'"
    ):
        load_suite(path)


@pytest.mark.parametrize("suite", sorted((REPO / "suites").rglob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_suites_validate(suite):
    loaded = load_suite(suite)
    for name in loaded.suite.profiles:
        load_suite(suite, [f"profile={name}"])
