"""Name -> "module:attr" registries with lazy import, used for archs, datasets, formats, backends."""

from __future__ import annotations

import fnmatch
import importlib
from typing import Any, Callable, Iterator

from sparsebench.errors import SparsebenchError, UnknownNameError


class Registry:
    """Maps kebab/snake-case names to objects or lazy "module:attr" targets.

    >>> r = Registry("thing"); r.register("math-pi", "math:pi"); round(r.get("math-pi"), 2)
    3.14
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._targets: dict[str, Any] = {}
        self._help: dict[str, str] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, target: Any, help: str = "", **meta: Any) -> None:
        """``meta``: facts about the entry readable without importing it (an architecture's
        default input, classifier, ...)."""
        self._targets[name] = target
        self._help[name] = help
        self._meta[name] = meta

    def decorator(self, name: str, help: str = "") -> Callable[[Any], Any]:
        def wrap(obj: Any) -> Any:
            self.register(name, obj, help)
            return obj

        return wrap

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._targets if fnmatch.fnmatch(n, pattern))

    def help(self, name: str) -> str:
        return self._help.get(name, "")

    def meta(self, name: str) -> dict[str, Any]:
        """The facts registered with ``name`` (a copy; a one-line error for unknown names)."""
        return dict(self._meta.get(self.check(name), {}))

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def check(self, name: str) -> str:
        """Return ``name`` if registered, else raise a one-line error listing the valid names."""
        if name not in self._targets:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; choose from: {', '.join(self.names())}"
            )
        return name

    def get(self, name: str) -> Any:
        """The registered object, importing a "module:attr" target on first use."""
        target = self._targets[self.check(name)]
        if isinstance(target, str) and ":" in target:
            try:
                target = resolve(target)
            except ImportError as exc:
                raise SparsebenchError(f"{self.kind} {name!r} is unavailable: {exc}") from exc
            self._targets[name] = target
        return target


def resolve(target: Any) -> Any:
    """A "module:attr" string imported (the object itself for anything else)."""
    if not (isinstance(target, str) and ":" in target):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def split_list(text: str | None, cast: Callable[[str], Any] = str) -> list[Any]:
    """Parse a comma-separated CLI list ("1,2, 4") into a list, casting each item."""
    if text is None or str(text).strip() == "":
        return []
    return [cast(item.strip()) for item in str(text).split(",") if item.strip()]
