"""Named registries of plugins: one mechanism for every kind (methods, evaluators, architectures,
datasets, artifact kinds, report sections).

A plugin is a class with a snake_case `name` that registers itself with its kind's decorator at
import time::

    METHODS = Registry("method")

    @METHODS.register
    class RandomReal(Method):
        '''Random real images per class (the docstring's first paragraph describes it).'''
        name = "random_real"

Every kind's base class derives from `Plugin`, which declares the hooks all kinds share
(`description`). Registering a name twice is an error at import naming both modules; asking for an
unknown name raises `UnknownNameError` with the closest known names ("did you mean ...?").

A registry with an entry-point `group` (`Registry("method", "ddbench.methods")`) imports the
plugins of installed distributions in that group, and those of `--include` files shipped to a Ray
worker, on its first lookup (`ddbench.plugins`), after its built-ins have registered. The
built-ins are the non-underscore modules of the `builtins` package (`ddbench/methods/`,
`ddbench/evals/`, `ddbench/archs/`, `ddbench/datasets/`), imported with `import_all` on that
first lookup too, so a plugin module may import its registry's module without a cycle.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Iterator
from typing import ClassVar, Generic, TypeVar

T = TypeVar("T", bound=type)

# snake_case identifiers only (docs/architecture.md#registries-and-plugins)
_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")


class UnknownNameError(KeyError, ValueError):
    """An unknown registry name (a KeyError, and a ValueError so validators report it)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def did_you_mean(name: str, choices: list[str]) -> str:
    """Return ' (did you mean X?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


class Plugin:
    """Base of every plugin class: a registry key and a one-line description."""

    name: ClassVar[str]  # the registry key: snake_case, unique within its kind

    @classmethod
    def description(cls) -> str:
        """One line for `ddbench ls -v`: the first paragraph of the class docstring, else of its
        module's (a one-file plugin's module docstring describes it), joined."""
        doc = cls.__doc__ or getattr(sys.modules.get(cls.__module__), "__doc__", None) or ""
        doc = " ".join(doc.strip().split("\n\n")[0].split()).replace("``", "`")  # reST literals
        return doc.removeprefix(f"`{cls.name}`: ")  # module docstrings open with the name


class Registry(Generic[T]):
    """A name -> plugin mapping with import-time duplicate checks."""

    def __init__(self, kind: str, group: str | None = None, builtins: str | None = None) -> None:
        self.kind = kind
        self.group = group  # entry-point group of installed plugins; None: built-ins only
        self.builtins = builtins  # package of built-in plugin modules imported on first lookup
        self._items: dict[str, T] = {}
        self._builtins_loaded = builtins is None
        self._plugins_loaded = group is None

    def _load_builtins(self) -> None:
        """The `builtins` package's plugin modules, once (first, so that a plugin reusing a
        built-in name is the one that fails, named)."""
        if self._builtins_loaded:
            return
        self._builtins_loaded = True  # first: a built-in module that looks a name up
        from ddbench.plugins import import_all

        import_all(str(self.builtins))

    def _load_plugins(self) -> None:
        """The built-ins, then the entry-point plugins of `group` and a Ray worker's `--include`
        modules, once."""
        self._load_builtins()
        if self._plugins_loaded:
            return
        self._plugins_loaded = True  # first: a plugin module that looks a name up must not recurse
        from ddbench.plugins import import_env_plugins, load_entry_points

        import_env_plugins()
        load_entry_points(str(self.group))

    def register(self, item: T) -> T:
        """Class decorator: register `item` under `item.name` (a duplicate name is an error)."""
        if not item.__module__.startswith(f"{self.builtins}."):
            self._load_builtins()  # a plugin from elsewhere registers after the built-ins
        name = getattr(item, "name", None)
        if not isinstance(name, str) or not _NAME_PATTERN.match(name):
            raise ValueError(
                f"{self.kind} {item!r}: `name` must be a snake_case identifier, got {name!r}"
            )
        if name in self._items:
            first = self._items[name].__module__
            raise ValueError(
                f"duplicate {self.kind} name {name!r}: {first} registers it and "
                f"{item.__module__} registers it again; rename one"
            )
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        self._load_plugins()
        try:
            return self._items[name]
        except KeyError:
            hint = did_you_mean(name, self.names())
            raise UnknownNameError(f"unknown {self.kind} {name!r}{hint}") from None

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load_plugins()
        return len(self._items)
