"""Plugin discovery: import every module of a package so its decorators register it.

`import_all("ddbench.methods")` imports ddbench/methods/*.py (modules starting with `_` are
helpers, not plugins). Adding a plugin therefore touches exactly one new file.
"""

from __future__ import annotations

import importlib
import pkgutil


def import_all(package: str) -> None:
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
