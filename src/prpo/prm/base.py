"""The PRM protocol, its error type, score validation and the registry behind `load_prm`.

A process reward model scores every segment of every response:
`score(problems, segments)[i][j] in [0, 1]` reads "the reasoning of response i up to and
including segment j is correct" (docs/algorithm.md section 3). Adapters register themselves by name
with a dataclass config, so `load_prm({"type": name, **fields})` can reject a bad field by name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import yaml

from prpo.registry import Registry
from prpo.typecheck import has_type, type_name


class PRMError(RuntimeError):
    """A PRM could not produce one valid score per segment, or was configured wrongly."""


class PRMOutage(PRMError):
    """A served PRM did not answer usably for ``max_outage_seconds``: ``url``, ``waited`` (s), ``last_error``."""

    def __init__(self, url: str, waited: float, attempts: int, last_error: str):
        super().__init__(f"PRM server {url} did not answer for {waited:.1f} s ({attempts} attempts, "
                         f"max_outage_seconds reached): {last_error}")
        self.url, self.waited, self.attempts, self.last_error = url, waited, attempts, last_error


@runtime_checkable
class ProcessRewardModel(Protocol):
    """Scores each segment of each response; one finite score in [0, 1] per segment."""

    @property
    def prm_id(self) -> str:
        """Stable identity of the model and every option that changes its scores (a cache key part)."""
        ...

    def score(self, problems: list[str], segments: list[list[str]]) -> list[list[float]]:
        """`scores[i][j]`: probability that response i is correct up to and including segment j."""
        ...


def check_inputs(problems: Sequence[str], segments: Sequence[Sequence[str]]) -> None:
    """Raise PRMError unless there is one problem string per response and segments are strings."""
    if len(problems) != len(segments):
        raise PRMError(f"got {len(problems)} problems for {len(segments)} responses: pass one problem per response")
    for i, (problem, response) in enumerate(zip(problems, segments)):
        if not isinstance(problem, str):
            raise PRMError(f"problem {i} is {type(problem).__name__}, expected str")
        if isinstance(response, str) or not isinstance(response, Sequence):
            raise PRMError(f"segments of response {i} must be a list of strings, got {type(response).__name__}")
        for j, segment in enumerate(response):
            if not isinstance(segment, str):
                raise PRMError(f"segment {j} of response {i} is {type(segment).__name__}, expected str")


def validate_scores(scores: Any, segments: Sequence[Sequence[str]]) -> list[list[float]]:
    """Check one finite score in [0, 1] per segment and return them as plain floats.

    Raises PRMError naming the response index, the segment index and the bad value; a missing,
    NaN, infinite or out-of-range score is never filled in (a 0 would become a -2.45 advantage).
    """
    if not isinstance(scores, Sequence) or isinstance(scores, str):
        raise PRMError(f"PRM returned {type(scores).__name__}, expected a list of per-response score lists")
    if len(scores) != len(segments):
        raise PRMError(f"PRM returned scores for {len(scores)} responses, expected {len(segments)}")
    checked: list[list[float]] = []
    for i, (row, response) in enumerate(zip(scores, segments)):
        if not isinstance(row, Sequence) or isinstance(row, str):
            raise PRMError(f"scores of response {i} are {type(row).__name__}, expected a list of floats")
        if len(row) != len(response):
            raise PRMError(f"PRM returned {len(row)} scores for response {i}, which has {len(response)} segments")
        checked_row = []
        for j, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise PRMError(f"score of response {i}, segment {j} is {value!r}, expected a float")
            value = float(value)
            if not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise PRMError(f"score of response {i}, segment {j} is {value!r}, expected a finite value in [0, 1]")
            checked_row.append(value)
        checked.append(checked_row)
    return checked


def config_id(kind: str, config: Any, exclude: tuple[str, ...] = ()) -> str:
    """`kind(field=value, ...)` over the config's fields: a stable identity of an adapter's scores."""
    fields = ", ".join(
        f"{f.name}={getattr(config, f.name)!r}" for f in dataclasses.fields(config) if f.name not in exclude
    )
    return f"{kind}({fields})"


@dataclasses.dataclass(frozen=True)
class PRMType:
    """A registered PRM type: `Config`, the dataclass of its fields, and `fn(config)` that builds the PRM."""

    name: str
    fn: Callable[[Any], ProcessRewardModel]
    Config: type

    def __post_init__(self) -> None:
        if not dataclasses.is_dataclass(self.Config):
            raise TypeError(f"PRM type {self.name!r} needs a dataclass `Config` to be registered")


# The built-in adapters, imported when first named: the Hugging Face ones load transformers, the
# remote client httpx; `prpo.prm.base` itself needs neither.
BUILTIN_PRMS = {"arithmetic": "prpo.prm.arithmetic", "bench_family": "prpo.bench.prm", "cached": "prpo.prm.cached",
                "remote": "prpo.prm.remote", "shepherd": "prpo.prm.shepherd", "step_tag": "prpo.prm.step_tag"}
PRM_REGISTRY: Registry[PRMType] = Registry("PRM type", lazy=BUILTIN_PRMS)

# The verdict scores of the rule-based PRMs (`arithmetic`, `bench_family`): with the fixed prior
# (docs/algorithm.md s.4) they give Z = +1.96 / -1.96 / 0.
RIGHT, WRONG, NO_EVIDENCE = 0.9, 0.1, 0.5


def register_prm(name: str) -> Callable[[type], type]:
    """Class decorator: make an adapter loadable as `load_prm({"type": name, ...})`.

    The class must define `Config`, a dataclass of its options, and take an instance of it as
    the only constructor argument. A second type of the same name is an error.
    """

    def decorate(cls: type) -> type:
        if not dataclasses.is_dataclass(getattr(cls, "Config", None)):
            raise TypeError(f"{cls.__qualname__} needs a dataclass attribute `Config` to be registered as a PRM")
        PRM_REGISTRY.add(PRMType(name, cls, cls.Config))
        return cls

    return decorate


def load_prm(spec: str | Path | Mapping[str, Any]) -> ProcessRewardModel:
    """Build a PRM from a registered name, a config mapping, or a path to a YAML/JSON config file.

    `load_prm("arithmetic")`, `load_prm({"type": "step_tag", "model": "Qwen/Qwen2.5-Math-PRM-7B"})`,
    `load_prm("configs/prm/qwen_prm_7b.yaml")`. An unknown type or field raises PRMError naming it.
    """
    source = "config"
    if isinstance(spec, Path) or (isinstance(spec, str) and spec not in PRM_REGISTRY.names() and _looks_like_file(spec)):
        source = str(spec)
        spec = read_config_file(Path(spec))
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, Mapping):
        raise PRMError(f"a PRM spec must be a name, a mapping or a config file path, got {type(spec).__name__}")
    fields = dict(spec)
    kind = fields.pop("type", None)
    try:
        entry = PRM_REGISTRY.lookup(kind)
    except ValueError as err:
        raise PRMError(f"{source}: {err}") from None
    return entry.fn(build_config(entry.Config, fields, where=f"{source} (type {kind!r})"))


class FunctionPRM:
    """A plain function ``(problems, segments) -> scores`` as a `ProcessRewardModel`."""

    def __init__(self, fn: Callable[[list[str], list[list[str]]], list[list[float]]]):
        self.fn = fn
        self.prm_id = f"function:{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"

    def score(self, problems: list[str], segments: list[list[str]]) -> list[list[float]]:
        return self.fn(problems, segments)


def as_prm(value: Any) -> ProcessRewardModel:
    """A PRM from a `load_prm` spec (name, mapping, config path), an object with ``score``, or a plain function."""
    if isinstance(value, (str, Path, Mapping)):
        return load_prm(value)
    if callable(getattr(value, "score", None)):
        return value
    if callable(value):
        return FunctionPRM(value)
    raise PRMError(f"a PRM must be a load_prm spec, an object with score(problems, segments) or a function "
                   f"(problems, segments) -> scores; got {type(value).__name__}")


def build_config(config_cls: type, fields: Mapping[str, Any], where: str) -> Any:
    """Instantiate a config dataclass, rejecting unknown fields and values of the wrong type by name."""
    hints = typing.get_type_hints(config_cls)
    known = {f.name for f in dataclasses.fields(config_cls)}
    for name, value in fields.items():
        if name not in known:
            raise PRMError(f"{where}: unknown field {name!r}; allowed fields: {', '.join(sorted(known))}")
        if not has_type(value, hints[name]):
            raise PRMError(f"{where}: field {name!r} = {value!r} is not of type {type_name(hints[name])}")
    values = {name: tuple(v) if isinstance(v, list) else v for name, v in fields.items()}
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as err:
        raise PRMError(f"{where}: {err}") from err


def _looks_like_file(spec: str) -> bool:
    return spec.endswith((".yaml", ".yml", ".json")) or Path(spec).is_file()


def read_config_file(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise PRMError(f"PRM config file {path} does not exist")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise PRMError(f"PRM config file {path} is not valid {path.suffix.lstrip('.').upper() or 'YAML'}: {err}") from err
    if not isinstance(data, Mapping):
        raise PRMError(f"PRM config file {path} must hold a mapping with a 'type' field, got {type(data).__name__}")
    return data
