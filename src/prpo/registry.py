"""Named registries: advantage methods, segmenters and rollout filters are chosen by name from one of these.

Every registry refuses a duplicate name, names the known ones on a miss, and reads an entry's options
from the keyword-only parameters of its function (so a typo in an option is an error, never ignored).
"""

from __future__ import annotations

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

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def add(self, entry: E) -> None:
        """Register ``entry`` under its name; a second entry of the same name is an error."""
        if entry.name in self:
            raise ValueError(f"{self.kind} {entry.name!r} is already registered")
        self[entry.name] = entry

    def lookup(self, name: str) -> E:
        """The entry ``name``; a clear error listing the known ones otherwise."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self))}")
        return self[name]

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
