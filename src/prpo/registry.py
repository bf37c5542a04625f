"""Named registries: advantage methods, segmenters, rollout filters, PRM types, the arithmetic PRM's
reference parsers, tasks and prompt templates are each chosen by name from one of these.

Every registry refuses a duplicate name, names the known ones on a miss, and reads an entry's options
from the keyword-only parameters of its function (so a typo in an option is an error, never ignored).
A registry may know entries it has not loaded yet (``lazy``: name -> the module that registers it), so
that naming one imports its module (and its dependencies) only then.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Protocol, TypeVar


class Entry(Protocol):
    """What a registered entry has: a name and the function it runs."""

    name: str
    fn: Callable[..., object]


E = TypeVar("E", bound=Entry)


class Registry(dict[str, E]):
    """``name -> entry`` for one kind of entry (``kind`` is used in messages, e.g. "segmenter")."""

    def __init__(self, kind: str, lazy: Mapping[str, str] | None = None):
        super().__init__()
        self.kind = kind
        self.lazy = dict(lazy or {})  # name -> module that registers the entry when imported

    def add(self, entry: E) -> None:
        """Register ``entry`` under its name; a second entry of the same name (loaded or lazy) is an error."""
        self._load(entry.name)
        if entry.name in self:
            raise ValueError(f"{self.kind} {entry.name!r} is already registered")
        self[entry.name] = entry

    def names(self) -> list[str]:
        """Every known name, loaded or not, sorted."""
        return sorted(set(self) | set(self.lazy))

    def lookup(self, name: str) -> E:
        """The entry ``name`` (importing its module if it is a lazy one); a clear error listing the known ones."""
        self._load(name)
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self[name]

    def _load(self, name: object) -> None:
        if isinstance(name, str) and name not in self and name in self.lazy:
            importlib.import_module(self.lazy[name])  # mid-import (the module registering itself): no-op

    def check_options(self, name: str, options: Mapping[str, object]) -> None:
        """Refuse options that entry ``name`` does not take (its ``options()`` where it has them, else its
        function's keyword-only parameters), listing those it does."""
        entry = self.lookup(name)
        known = entry.options() if hasattr(entry, "options") else keyword_options(entry.fn)
        unknown = sorted(set(options) - set(known))
        if unknown:
            takes = ", ".join(known) or "no options"
            raise ValueError(f"{self.kind} {name!r} does not take option(s) {unknown}; it takes: {takes}")


def keyword_options(fn: Callable[..., object]) -> dict[str, object]:
    """The keyword-only parameters of ``fn`` with their defaults: an entry's options."""
    params = inspect.signature(fn).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
