"""Plugins without a fork: a method in a plugin file (`--include`) or in an installed
distribution (an entry point), run in a suite with `--local`, listed by `ddbench ls`; a name
taken twice and a broken plugin are clear errors; `--include` files reach Ray workers through the
runtime environment.

Each CLI call is a subprocess: entry points and included modules are loaded once per process.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import REPO, run_cli

# a copy-free method: the first `ipc` real train images of each class
PLUGIN = '''"""`first_real`: the first IPC real train images of each class (a test plugin)."""

import torch

from _first_real_help import PAPER
from ddbench.artifact import ImageSet
from ddbench.methods import Method, register_method


@register_method
class FirstReal(Method):
    name = "first_real"
    paper = PAPER

    def distill(self, real, ipc, params, ctx):
        idx = torch.cat([real.class_indices(c)[:ipc] for c in real.classes])
        return ImageSet(real.train_x[idx].clone(), real.train_y[idx].clone())
'''
HELPER = 'PAPER = "a test plugin"  # a helper module beside the plugin, imported by it\n'
SUITE = """name: plugged
ipc: [1]
methods: [{name: first_real}]
evals: [{name: cross_arch, params: {archs: [mlp], seeds: 1, epochs: 5}}]
"""


def plugin_folder(root: Path) -> Path:
    """A folder holding the plugin and its underscore helper."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "first_real.py").write_text(PLUGIN)
    (root / "_first_real_help.py").write_text(HELPER)
    return root


def installed(site: Path, module: str, source: str, group: str = "ddbench.methods") -> Path:
    """A distribution as pip would leave it on `site`: `<dist>.dist-info` with an entry point
    naming `module`, and the module itself (plus the plugin's helper)."""
    dist = site / "ddbench_plugin_test-0.3.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: ddbench-plugin-test\nVersion: 0.3\n"
    )
    (dist / "entry_points.txt").write_text(f"[{group}]\nmy_plugin = {module}\n")
    (site / f"{module}.py").write_text(source)
    (site / "_first_real_help.py").write_text(HELPER)
    return site


def with_path(site: Path) -> dict[str, str]:
    """The environment of a CLI subprocess that also sees the distributions on `site`."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}


def check_run(out: Path, digits) -> None:
    """The plugin's job ran and was evaluated; its distillate is the first real images."""
    import ddbench

    rows = ddbench.rows(out / "plugged")
    assert set(rows["method"]) == {"first_real"} and (rows["status"] == "ok").all()
    assert rows.filter(pl.col("metric") == "top1", pl.col("split") == "test").height == 1
    data = ddbench.load_distillate(out / "plugged", "first_real")
    first = [int(digits.class_indices(c)[0]) for c in digits.classes]
    assert data.images.equal(digits.train_x[first]) and len(data) == digits.num_classes


@pytest.mark.slow
def test_include_folder_runs_a_plugin_method_locally(tmp_path, digits):
    folder = plugin_folder(tmp_path / "plugins")
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)

    unknown = run_cli("validate", str(suite))
    assert unknown.returncode == 2 and "unknown method 'first_real'" in unknown.stderr
    listed = run_cli("ls", "methods", "--include", str(folder), "-v")
    assert listed.returncode == 0, listed.stderr
    assert "first_real (v1): the first IPC real train images of each class" in listed.stdout
    assert "    paper: a test plugin" in listed.stdout  # from the underscore helper it imports

    out = tmp_path / "runs"
    proc = run_cli("run", str(suite), "--include", str(folder), "--local", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_run(out, digits)


@pytest.mark.slow
def test_entry_point_plugin_runs_locally(tmp_path, digits):
    site = installed(tmp_path / "site", "ddbench_first_real", PLUGIN)
    env = with_path(site)
    listed = run_cli("ls", "methods", "first_*", env=env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["first_real"]

    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "runs"
    proc = run_cli("run", str(suite), "--local", "--out", str(out), env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_run(out, digits)


TAKES_DM = """from ddbench.methods import Method, register_method


@register_method
class NotDM(Method):
    name = "dm"
    paper = "a plugin reusing a built-in name"
"""


def test_a_plugin_file_reusing_a_builtin_name_is_an_error(tmp_path):
    (tmp_path / "not_dm.py").write_text(TAKES_DM)
    proc = run_cli("ls", "methods", "--include", str(tmp_path / "not_dm.py"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"--include plugin {tmp_path / 'not_dm.py'} failed to load" in proc.stderr
    assert "duplicate method name 'dm': ddbench.methods.dm registers it" in proc.stderr
    assert "not_dm registers it again" in proc.stderr


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (TAKES_DM, "duplicate method name 'dm': ddbench.methods.dm registers it"),
        ("raise ImportError('needs a missing package')\n", "ImportError: needs a missing"),
    ],
    ids=["duplicate", "broken"],
)
def test_a_failing_entry_point_names_it_and_its_distribution(tmp_path, source, message):
    env = with_path(installed(tmp_path / "site", "ddbench_bad_plugin", source))
    proc = run_cli("ls", "methods", env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        "plugin entry point 'my_plugin' = 'ddbench_bad_plugin' (group ddbench.methods, "
        "distribution ddbench-plugin-test 0.3) failed to load" in proc.stderr
    )
    assert message in proc.stderr


def test_include_errors(tmp_path):
    from ddbench.plugins import PluginError, include_plugins

    (tmp_path / "empty").mkdir()
    with pytest.raises(PluginError, match="no plugin .py files"):
        include_plugins([tmp_path / "empty"])
    with pytest.raises(PluginError, match="not a .py file or a folder"):
        include_plugins([tmp_path / "missing.py"])
    (tmp_path / "json.py").write_text("")
    with pytest.raises(PluginError, match="module name 'json' is already taken"):
        include_plugins([tmp_path / "json.py"])


def test_included_files_reach_ray_workers_as_py_modules(tmp_path):
    from ddbench.plugins import PLUGIN_MODULES_ENV
    from ddbench.runner.cluster import plugin_runtime_env

    folder = plugin_folder(tmp_path / "plugins")
    env = plugin_runtime_env([folder])
    assert env["py_modules"] == [str(folder / "_first_real_help.py"), str(folder / "first_real.py")]
    assert env["env_vars"] == {PLUGIN_MODULES_ENV: "first_real"}
    assert plugin_runtime_env([]) == {}
