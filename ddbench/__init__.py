"""ddbench: a reproducible, Ray-scaled benchmark for dataset distillation.

Importing this package is cheap on purpose: torch, ray, mlflow, timm and diffusers are imported by
the modules that need them, so `ddbench validate` and `ddbench ls` start quickly. The Python API
(`ddbench.api`: `load_suite`, `run`, `rows`, `report`, `load_distillate`) is imported on first
use of one of its names::

    import ddbench

    run = ddbench.run(ddbench.load_suite("suites/quickstart.yaml", profile="smoke"), local=True)
    print(ddbench.rows(run).head())

A new public name is added to `ddbench.api` and to `__all__` here. `ddbench.report` is the
API's function even though `ddbench/report/` is a package too: importing a submodule binds it
as an attribute of its package, which `_Package` declines for the API's names (code imports the
package with `from ddbench.report import ...`, which reads `sys.modules`).
"""

from __future__ import annotations

import sys
import types
from typing import Any

from ddbench.version import __version__

__all__ = ["RunResult", "__version__", "load_distillate", "load_suite", "report", "rows", "run"]


def __getattr__(name: str) -> Any:
    """The API's names, imported from `ddbench.api` when first asked for (PEP 562)."""
    if name in __all__:
        from ddbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'ddbench' has no attribute {name!r}")


class _Package(types.ModuleType):
    """The package's module type: submodules do not replace the API's names (`ddbench.report`)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in __all__ and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
