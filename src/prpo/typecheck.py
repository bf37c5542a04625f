"""Runtime checks of config values against their type annotations (YAML/JSON values: lists, not tuples)."""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any


def _enums(options: tuple[Any, ...]) -> list[type[enum.Enum]]:
    return [a for a in options if isinstance(a, type) and issubclass(a, enum.Enum)]


def has_type(value: Any, annotation: Any) -> bool:
    """Whether ``value`` fits ``annotation`` (bools are not numbers; an int is a float; a list is a tuple)."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        enums = _enums(options)
        if enums and isinstance(value, str):  # `SchedulerType | str`: the string must name a member
            return any(has_type(value, e) for e in enums)
        return any(has_type(value, a) for a in options)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin in (list, tuple, Sequence):
        args = typing.get_args(annotation)
        return isinstance(value, (list, tuple)) and (not args or all(has_type(v, args[0]) for v in value))
    if origin in (dict, Mapping) or annotation in (dict, Mapping):
        return isinstance(value, Mapping)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return isinstance(value, annotation) or value in {m.value for m in annotation}
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def type_name(annotation: Any) -> str:
    """A readable name for an annotation, for error messages."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        enums = _enums(options)
        if enums:
            return "one of " + ", ".join(m.value for e in enums for m in e)
        return " or ".join(type_name(a) for a in options)
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
