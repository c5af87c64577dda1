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


def module_imports(path, modules: set[str]) -> set[str]:
    """The ddbench modules `path` imports anywhere (top level or inside a function; imports
    under `if TYPE_CHECKING:` excluded), each resolved to the longest module name it names."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" in ast.unparse(node.test):
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(a.name for a in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level == 0 and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)

    Visitor().visit(ast.parse(path.read_text()))
    resolved = set()
    for name in found:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name:
            resolved.add(name)
    return resolved


def ddbench_modules() -> dict[str, object]:
    modules = {}
    for path in (REPO / "ddbench").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_no_import_cycles():
    """No two ddbench modules import each other, directly or through others, even lazily:
    a lazy import that closes a cycle is a helper living in the wrong module."""
    modules = ddbench_modules()
    graph = {name: module_imports(path, set(modules)) - {name} for name, path in modules.items()}
    assert import_cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
