"""The Python API: the README's example run as written (so it cannot drift), suites from dicts
with overrides, dry runs, and `import ddbench` staying light."""

from __future__ import annotations

import re
import subprocess
import sys

import polars as pl
import pytest

from tests.conftest import REPO

QUICK = str(REPO / "suites" / "quickstart.yaml")


def readme_example() -> str:
    """The first python block under the README's "Python API" heading."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README.md: no python block under ## Python API"
    return match.group(1)


@pytest.mark.slow
def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    import ddbench

    (tmp_path / "suites").symlink_to(REPO / "suites")
    monkeypatch.chdir(tmp_path)  # the example writes runs/ and reports/ where it runs
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    scope: dict[str, object] = {}
    exec(compile(readme_example(), "README.md", "exec"), scope)

    run = scope["run"]
    assert isinstance(run, ddbench.RunResult) and run.exit_code == 0
    assert run.dir == tmp_path / "runs" / "quickstart"
    rows = ddbench.rows(run)
    assert set(rows["method_label"]) == {"random_real", "dm", "whole_dataset"}
    assert (rows["status"] == "ok").all()
    assert rows.filter(pl.col("metric") == "top1", pl.col("split") == "test").height == 6
    assert (tmp_path / "reports" / "quickstart" / "README.md").is_file()
    assert (tmp_path / "runs" / "mlflow.db").is_file()  # tracked like `ddbench run`
    dm = scope["dm"]
    image, label = dm[0]
    assert len(dm) == 10 and image.shape == (1, 8, 8) and int(label) == 0
    assert dm.meta["method_params"]["iterations"] == 10
    assert "reports/quickstart/README.md" in capsys.readouterr().out

    again = ddbench.run(scope["suite"], local=True, only=["random_real", "dm", "whole_dataset"])
    assert again.summary.distilled == 0 and again.summary.cells_run == 0  # all cached


def test_suite_from_a_dict_with_overrides_and_a_dry_run(tmp_path):
    import ddbench

    raw = {
        "name": "api_dict",
        "ipc": [1, 10],
        "methods": [{"name": "random_real"}, {"name": "dm"}],
        "evals": [{"name": "cross_arch"}],
        "profiles": {"tiny": {"ipc": [1]}},
    }
    loaded = ddbench.load_suite(
        raw,
        set={"evals.cross_arch.params.archs": ["mlp", "convnet"], "methods.dm.params.lr_img": 2},
        profile="tiny",
    )
    assert loaded.suite.ipc == [1] and loaded.path == "<dict>"
    assert loaded.eval_params[0].archs == ["mlp", "convnet"]
    assert loaded.method_params[1].lr_img == 2.0
    same = ddbench.load_suite(
        raw, set=["evals.cross_arch.params.archs=[mlp, convnet]", "methods.dm.params.lr_img=2"]
    )
    assert same.eval_params == loaded.eval_params

    run = ddbench.run(loaded, store=tmp_path, dry_run=True, only="random_*")
    assert run.summary is None and run.exit_code == 0
    assert len(run.status) == 1 and "random_real" in run.status[0] and "todo" in run.status[0]
    assert not (tmp_path / "api_dict").exists()  # a dry run writes nothing

    from ddbench.spec import SuiteError

    with pytest.raises(SuiteError, match="unknown method 'random_rael'.*did you mean"):
        ddbench.load_suite({**raw, "methods": [{"name": "random_rael"}]})
    with pytest.raises(SuiteError, match=r"quickstart.yaml: --set profile=nope: no such profile"):
        ddbench.load_suite(QUICK, profile="nope")


def test_import_ddbench_is_light_and_report_is_the_api_function():
    code = (
        "import sys, ddbench\n"
        "heavy = sorted(m for m in ('torch', 'polars', 'ray', 'mlflow') if m in sys.modules)\n"
        "import ddbench.report\n"
        "print(heavy, callable(ddbench.report), ddbench.report.__module__)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["[]", "True", "ddbench.api"]
