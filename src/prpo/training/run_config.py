"""The YAML run file: one file -> validated `model`, `task`, `eval_task` sections and a `PRPOConfig`.

Layout (TRL's CLI convention: training arguments are flat top-level keys)::

    model: {model_name_or_path: Qwen/Qwen2.5-Math-1.5B, dtype: bfloat16}   # trl.ModelConfig
    task: {name: math, data_file: data/math_train.json}                    # prpo.tasks.load_task
    eval_task: {name: math500}                                             # optional
    method: prpo                                                           # PRPOConfig / GRPOConfig
    prm: {type: step_tag, model: Qwen/Qwen2.5-Math-PRM-7B}
    learning_rate: 1.0e-6

Every key is checked: an unknown key, a value of the wrong type or an impossible combination
raises `ConfigError` naming the key. `--key value` overrides use dotted keys (`--task.limit 8`).
"""

from __future__ import annotations

import dataclasses
import enum
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from trl import ModelConfig

from prpo.training.config import ConfigError, PRPOConfig, check_value, did_you_mean


@dataclass
class TaskConfig:
    """Arguments of `prpo.tasks.load_task`."""

    name: str
    data_file: str | None = None
    dataset_id: str | None = None
    split: str | None = None
    limit: int | None = None
    template: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    """A validated run: the policy model, the training task, an optional eval task and the trainer arguments."""

    model: ModelConfig
    task: TaskConfig
    training: PRPOConfig
    eval_task: TaskConfig | None = None
    source: dict[str, Any] = field(default_factory=dict, repr=False)

    def resolved(self, *, effective: bool = False) -> dict[str, Any]:
        """The full config as YAML-ready data: every key, given or defaulted, that `build_config` reads back.

        ``effective``: the values this launch trains with where `PRPOConfig` derives them
        (``gradient_accumulation_steps`` from ``prompts_per_step`` and the process count), which read
        back only on the same number of processes; otherwise the keys as given.
        """
        out = {
            "model": _declared(self.model, self.source.get("model") or {}),
            "task": _declared(self.task, self.source.get("task") or {}),
        }
        if self.eval_task is not None:
            out["eval_task"] = _declared(self.eval_task, self.source.get("eval_task") or {})
        given = {k: v for k, v in self.source.items() if k not in SECTIONS}
        out.update(_declared(self.training, given))
        if effective and self.training.prompts_per_step is not None:
            out["gradient_accumulation_steps"] = self.training.gradient_accumulation_steps
        return out

    def to_yaml(self, *, effective: bool = False) -> str:
        return yaml.safe_dump(self.resolved(effective=effective), sort_keys=False, allow_unicode=True, width=120)


SECTIONS: dict[str, type] = {"model": ModelConfig, "task": TaskConfig, "eval_task": TaskConfig}


# ----------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-6` as a float (YAML 1.2), not the string YAML 1.1 makes of it."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """A command-line value read as YAML: `1e-6` -> float, `true` -> bool, `[a, b]` -> list, else a string."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML run config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("", f"config file {path} does not exist")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError("", f"{path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("", f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `--key value` / `--key=value` pairs; dotted keys reach into sections and mappings."""
    data = _deepcopy(data)
    args = list(overrides)
    while args:
        flag = args.pop(0)
        if not flag.startswith("--") or len(flag) < 3:
            raise ConfigError("", f"expected --key value, got {flag!r}")
        key, eq, raw = flag[2:].partition("=")
        if not eq:
            if not args or args[0].startswith("--"):
                raise ConfigError(key, "missing value after the flag")
            raw = args.pop(0)
        *parents, leaf = key.split(".")
        node = data
        for depth, part in enumerate(parents):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(".".join(parents[: depth + 1]), f"is {type(child).__name__}, not a mapping")
            node = child
        node[leaf] = parse_value(raw)
    return data


def _deepcopy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data


# ----------------------------------------------------------------------------- validation


def _check_fields(cls: type, values: Mapping[str, Any], prefix: str, extra: Sequence[str] = ()) -> None:
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{prefix}{key}", f"unknown key{did_you_mean(key, [*known, *extra])}")
        check_value(f"{prefix}{key}", value, hints[key])


def _required(cls: type) -> list[str]:
    missing = dataclasses.MISSING
    return [f.name for f in dataclasses.fields(cls) if f.default is missing and f.default_factory is missing]


def _build_section(name: str, cls: type, values: Any) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(name, f"expected a mapping, got {type(values).__name__}")
    _check_fields(cls, values, f"{name}.")
    for key in _required(cls):
        if key not in values:
            raise ConfigError(f"{name}.{key}", "is required")
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(name, str(err)) from err


def build_config(data: Mapping[str, Any]) -> RunConfig:
    """Validate a config mapping into a `RunConfig`; raises `ConfigError` naming the bad key.

    Here: the sections, unknown top-level keys, the types of TRL's keys, and what only a YAML run
    needs (a PRM spec for a method that uses one: no PRM object can be passed). `PRPOConfig` checks
    the rest itself.
    """
    source = _deepcopy(dict(data))
    data = dict(data)
    sections = {name: data.pop(name) for name in list(SECTIONS) if name in data}
    for name in ("model", "task"):
        if sections.get(name) is None:
            raise ConfigError(name, "section is required")
    model = _build_section("model", ModelConfig, sections["model"])
    if not model.model_name_or_path:
        raise ConfigError("model.model_name_or_path", "is required")
    task = _build_section("task", TaskConfig, sections["task"])
    eval_values = sections.get("eval_task")
    eval_task = None if eval_values is None else _build_section("eval_task", TaskConfig, eval_values)
    _check_fields(PRPOConfig, data, "", extra=list(SECTIONS))
    training = PRPOConfig(**data)
    if training.uses_prm() and training.prm is None:
        raise ConfigError("prm", f"method {training.method!r} scores segments with a PRM: set prm (e.g. {{type: arithmetic}})")
    if training.reward_range is not None:
        raise ConfigError("reward_range", f"{training.reward_range} maps the sum of reward_funcs, but a YAML run grades "
                          "with the task's grader, whose R is already correct_reward / wrong_reward: remove it")
    return RunConfig(model=model, task=task, training=training, eval_task=eval_task, source=source)


# ----------------------------------------------------------------------------- load and save


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read, override and validate a YAML run config."""
    data = read_yaml(path) if path is not None else {}
    return build_config(apply_overrides(data, overrides))


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _declared(obj: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every init field of a dataclass: the given value, else the declared default (before `__post_init__`)."""
    out = {}
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        if f.name in given:
            out[f.name] = _plain(given[f.name])
        elif f.default is not dataclasses.MISSING:
            out[f.name] = _plain(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = _plain(f.default_factory())
    return out
