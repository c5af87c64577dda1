"""Plugin discovery: the modules whose decorators fill the registries.

Three sources, each imported once per process:

- ddbench's own packages: `import_all("ddbench.methods")` imports ddbench/methods/*.py (modules
  starting with `_` are helpers, not plugins) on the registry's first lookup
  (`Registry(..., builtins=...)`), so a built-in plugin is exactly one new file;
- installed distributions: an entry point in group `ddbench.methods`, `ddbench.evals`,
  `ddbench.datasets`, `ddbench.archs` or `ddbench.report_sections` names a module to import
  (`load_entry_points`). Each
  registry loads its group lazily, on its first lookup (`Registry(kind, group)`), after the
  built-ins, so a plugin reusing a built-in name fails with both modules named;
- plugin files given with `--include PATH` / `include=[...]` (`include_plugins`): a `.py` file,
  or a folder whose non-underscore `.py` files are plugins (underscore files are helpers they may
  import). Each file is imported under its own stem as a top-level module, its folder appended
  to `sys.path`, so pickled plugin classes resolve by name. Ray workers import by module name
  too: `ddbench.runner.cluster.init_ray` ships the files included in this process
  (`included_paths`) as Ray `py_modules` and names their modules in `PLUGIN_MODULES_ENV`, which
  every registry imports on first lookup (`import_env_plugins`).

A plugin that fails to import raises `PluginError` naming the entry point and its distribution,
or the file. A new registry kind names its entry-point group in its `Registry(kind, group)`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
import traceback
from collections.abc import Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from ddbench.errors import UserError

# comma-separated module names of `--include` files, set for Ray workers by `init_ray`
PLUGIN_MODULES_ENV = "DDBENCH_PLUGIN_MODULES"

_loaded_groups: set[str] = set()
_env_modules_loaded = False
_included: list[Path] = []  # every --include path imported in this process (for Ray workers)


class PluginError(UserError):
    """A plugin module that cannot be imported (or registers a name twice): exit code 2."""


def import_all(package: str) -> None:
    """Import every non-underscore module of `package` (ddbench's own plugin folders)."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def _failure(exc: BaseException) -> str:
    """`Type: message (file:line)` of an import failure, the line in the plugin's own code."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _describe(ep: EntryPoint) -> str:
    dist = ep.dist
    owner = f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"
    return f"entry point {ep.name!r} = {ep.value!r} (group {ep.group}, distribution {owner})"


def load_entry_points(group: str) -> None:
    """Import the module each entry point of `group` names, once per process."""
    if group in _loaded_groups:
        return
    _loaded_groups.add(group)  # first: a plugin that looks a name up must not recurse
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        try:
            ep.load()
        except Exception as exc:  # noqa: BLE001 - any failure of foreign code, reported whole
            raise PluginError(f"plugin {_describe(ep)} failed to load: {_failure(exc)}") from exc


def import_env_plugins() -> None:
    """Import the modules named in `PLUGIN_MODULES_ENV` (a Ray worker's `--include` files,
    importable there through Ray's `py_modules`), once per process."""
    global _env_modules_loaded
    if _env_modules_loaded:
        return
    _env_modules_loaded = True
    for name in filter(None, os.environ.get(PLUGIN_MODULES_ENV, "").split(",")):
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any failure of foreign code, reported whole
            raise PluginError(
                f"--include plugin module {name!r} failed to load: {_failure(exc)}"
            ) from exc


def plugin_files(paths: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """(plugin files, every file to ship) of `--include` paths: a `.py` file is a plugin; a
    folder's non-underscore `.py` files are plugins and its underscore files their helpers."""
    plugins: list[Path] = []
    shipped: list[Path] = []
    for given in paths:
        path = Path(given).expanduser().resolve()
        if path.is_dir():
            files = sorted(path.glob("*.py"))
            found = [f for f in files if not f.name.startswith("_")]
            if not found:
                raise PluginError(f"--include {given}: no plugin .py files in this folder")
            plugins += found
            shipped += files
        elif path.is_file() and path.suffix == ".py":
            plugins.append(path)
            shipped.append(path)
        else:
            raise PluginError(f"--include {given}: not a .py file or a folder of them")
    return plugins, list(dict.fromkeys(shipped))


def included_paths() -> list[Path]:
    """The `--include` paths imported in this process, which Ray workers need too."""
    return list(_included)


def include_plugins(paths: Sequence[str | Path]) -> list[str]:
    """Import the plugin files of `--include` paths (`plugin_files`) and remember the paths
    (`included_paths`); returns the modules' names. Importing a file again is a no-op; a stem
    that names another module is an error."""
    names = []
    for file in plugin_files(paths)[0]:
        name = file.stem
        if not name.isidentifier():
            raise PluginError(f"--include {file}: {name!r} is not a Python module name")
        if str(file.parent) not in sys.path:
            sys.path.append(str(file.parent))
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None or Path(spec.origin).resolve() != file:
            other = spec.origin if spec is not None else "another module"
            raise PluginError(
                f"--include {file}: module name {name!r} is already taken by {other}; "
                "rename the file"
            )
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any failure of foreign code, reported whole
            raise PluginError(f"--include plugin {file} failed to load: {_failure(exc)}") from exc
        names.append(name)
    for given in paths:
        path = Path(given).expanduser().resolve()
        if path not in _included:
            _included.append(path)
    return names
