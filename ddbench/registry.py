"""Named registries of plugins (datasets, architectures, methods, evaluators).

A plugin registers itself with a decorator at import time::

    METHODS = Registry("method")

    @METHODS.register("random_real")
    class RandomReal(Method): ...

Registering a name twice is an error at import naming both modules; asking for an unknown name
raises `UnknownNameError` with the closest known names ("did you mean ...?").

A registry with an entry-point `group` (`Registry("method", "ddbench.methods")`) imports the
plugins of installed distributions in that group, and those of `--include` files shipped to a Ray
worker, on its first lookup (`ddbench.plugins`), after its built-ins have registered.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

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


class Registry(Generic[T]):
    """A name -> plugin mapping with import-time duplicate checks."""

    def __init__(self, kind: str, group: str | None = None) -> None:
        self.kind = kind
        self.group = group  # entry-point group of installed plugins; None: built-ins only
        self._items: dict[str, T] = {}
        self._plugins_loaded = group is None

    def _load_plugins(self) -> None:
        """Entry-point plugins of `group` and a Ray worker's `--include` modules, once."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from ddbench.plugins import import_env_plugins, load_entry_points

        import_env_plugins()
        load_entry_points(str(self.group))

    def register(self, name: str) -> Callable[[T], T]:
        if not _NAME_PATTERN.match(name):
            raise ValueError(f"{self.kind} name {name!r} is not a snake_case identifier")

        def decorate(item: T) -> T:
            if name in self._items:
                first = getattr(self._items[name], "__module__", "?")
                raise ValueError(
                    f"duplicate {self.kind} name {name!r}: {first} registers it and "
                    f"{getattr(item, '__module__', '?')} registers it again; rename one"
                )
            self._items[name] = item
            return item

        return decorate

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
