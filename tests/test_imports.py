"""Ray stays behind the runner's Ray seam: only the modules that drive Ray import it, and the
CLI, tracking and the local runner load without it."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import REPO

# the modules that start, join or submit to Ray (ddbench/runner/__init__.py names them)
RAY_MODULES = {
    "ddbench/runner/cluster.py",
    "ddbench/runner/scheduler.py",
    "ddbench/runner/train.py",
    "ddbench/runner/tune.py",
}


def imports_ray(path) -> bool:
    """Whether a module imports ray anywhere (top level or inside a function)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import) and any(
            a.name == "ray" or a.name.startswith("ray.") for a in node.names
        ):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "ray" or node.module.startswith("ray."):
                return True
    return False


def test_only_the_ray_modules_import_ray():
    found = {
        str(path.relative_to(REPO))
        for path in sorted((REPO / "ddbench").rglob("*.py"))
        if imports_ray(path)
    }
    assert found == RAY_MODULES


def test_cli_tracking_and_local_runner_load_without_ray():
    code = (
        "import sys\n"
        "import ddbench.cli, ddbench.tracking, ddbench.runner.local, ddbench.runner.schedule\n"
        "from ddbench.cli import main\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
