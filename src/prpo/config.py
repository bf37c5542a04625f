"""Run configuration: one YAML file -> validated `model`, `task`, `eval_task` sections and a `PRPOConfig`.

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
import difflib
import enum
import math
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers.trainer_utils import SchedulerType
from trl import GRPOConfig, ModelConfig

from prpo.typecheck import has_type, type_name

SEGMENTERS = ("entropy", "marker", "fixed")
NORMALIZATIONS = ("fixed_prior", "group")
OUTCOME_SCALES = ("none", "group")
# Sequence-level losses reduce the (B, T) advantages to one weight per response; PRPO needs token credit.
TOKEN_LOSSES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo")


class ConfigError(ValueError):
    """A bad run configuration; `key` is the dotted key at fault."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config key '{key}': {message}" if key else message)


@dataclass
class PRPOConfig(GRPOConfig):
    """`GRPOConfig` plus the PRPO stages: segmentation, PRM, outcome reward and advantage method.

    Defaults follow the paper (ALGORITHM.md section 5): clip 0.2 with dual clip 3.0 (`delta`), k3 KL
    to the frozen initial model with `beta = 0.001`, token-mean loss (`loss_type="dapo"`), AdamW at
    lr 1e-6 constant, weight decay 0.01, grad clip 1.0, G = 8, temperature 1.0, 2048 response tokens.
    """

    method: str = field(default="prpo", metadata={"help": "Advantage method of prpo.advantages.ADVANTAGES."})
    normalization: str = field(default="fixed_prior", metadata={"help": "Process advantage: fixed_prior or group."})
    mu0: float = field(default=0.5, metadata={"help": "fixed_prior location of the PRM score."})
    sigma0: float = field(default=math.sqrt(1 / 24), metadata={"help": "fixed_prior scale of the PRM score."})
    outcome_scale: str = field(default="none", metadata={"help": "Divide beta by the group std ('group') or not."})
    eps: float = field(default=1e-6, metadata={"help": "Added to standard deviations."})
    advantage_options: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Further options of the advantage method (e.g. `tau` for pure)."}
    )
    segmenter: str = field(default="entropy", metadata={"help": "entropy, marker or fixed."})
    k: int = field(default=5, metadata={"help": "Entropy segmenter: at most k spikes."})
    min_gap: int = field(default=10, metadata={"help": "Entropy segmenter: spikes at least min_gap tokens apart."})
    marker: str = field(default="\n\n", metadata={"help": "Marker segmenter: a new step after each marker."})
    segment_length: int = field(default=64, metadata={"help": "Fixed segmenter: tokens per segment."})
    prm: dict[str, Any] | None = field(default=None, metadata={"help": "PRM spec for prpo.prm.load_prm."})
    correct_reward: float = field(default=1.0, metadata={"help": "Outcome reward R of a correct answer."})
    wrong_reward: float = field(default=-1.0, metadata={"help": "Outcome reward R of a wrong or missing answer."})
    overlong_len: int | None = field(default=None, metadata={"help": "L_pen of the overlong penalty (None: off)."})
    grading_timeout: float = field(default=5.0, metadata={"help": "Seconds allowed to grade one answer."})
    max_prompt_length: int | None = field(default=2048, metadata={"help": "Longest prompt in tokens (None: no limit)."})
    samples_per_step: int = field(default=16, metadata={"help": "Rows of samples.jsonl per step (-1: all)."})
    eval_before_after: bool = field(
        default=True, metadata={"help": "`prpo train`: greedy accuracy on eval_task before and after training."}
    )
    collapse_window: int = field(default=5, metadata={"help": "Steps averaged for the collapse warning."})
    collapse_drop: float = field(
        default=0.3, metadata={"help": "Warn when length and final-answer rate both fell by this fraction."}
    )
    # TRL defaults changed to the paper's settings.
    beta: float = field(default=0.001, metadata={"help": "KL coefficient (k3 estimator, frozen initial model)."})
    delta: float | None = field(default=3.0, metadata={"help": "Dual clip of the ratio for negative advantages."})
    loss_type: str = field(default="dapo", metadata={"help": "Token-mean over the global batch ('dapo')."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    lr_scheduler_type: SchedulerType | str = field(default="constant", metadata={"help": "Learning-rate schedule."})
    max_completion_length: int | None = field(default=2048, metadata={"help": "Longest response in tokens."})
    logging_steps: float = field(default=1, metadata={"help": "Log every step."})
    # TRL turns checkpointing on through the alias transformers deprecates; use the new name instead.
    activation_checkpointing: bool | None = field(default=True, metadata={"help": "Recompute activations in backward."})
    gradient_checkpointing: bool | None = field(default=None, metadata={"help": "Deprecated alias of the above."})

    def __post_init__(self):
        # TRL turns bf16 on whenever it is unset, which transformers then rejects on a machine without a GPU.
        if self.bf16 is None and not self.fp16 and (self.use_cpu or not torch.cuda.is_available()):
            self.bf16 = False
        super().__post_init__()

    def advantage_kwargs(self) -> dict[str, Any]:
        """Options for `compute_advantages(self.method, ...)`: the shared fields the method takes, then extras."""
        from prpo.advantages import get_method

        takes = get_method(self.method).options()
        shared = {
            "normalization": self.normalization,
            "mu0": self.mu0,
            "sigma0": self.sigma0,
            "outcome_scale": self.outcome_scale,
            "eps": self.eps,
        }
        return {**{k: v for k, v in shared.items() if k in takes}, **self.advantage_options}

    def uses_prm(self) -> bool:
        from prpo.advantages import get_method

        return get_method(self.method).uses_prm


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

    def resolved(self) -> dict[str, Any]:
        """The full config as YAML-ready data: every key, given or defaulted, that `build_config` reads back."""
        out = {
            "model": _declared(self.model, self.source.get("model") or {}),
            "task": _declared(self.task, self.source.get("task") or {}),
        }
        if self.eval_task is not None:
            out["eval_task"] = _declared(self.eval_task, self.source.get("eval_task") or {})
        given = {k: v for k, v in self.source.items() if k not in SECTIONS}
        out.update(_declared(self.training, given))
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.resolved(), sort_keys=False, allow_unicode=True, width=120)


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


def _did_you_mean(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _check_fields(cls: type, values: Mapping[str, Any], prefix: str, extra: Sequence[str] = ()) -> None:
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(dotted, f"unknown key{_did_you_mean(key, [*known, *extra])}")
        if not has_type(value, hints[key]):
            raise ConfigError(dotted, f"expected {type_name(hints[key])}, got {type(value).__name__} {value!r}")


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
    """Validate a config mapping into a `RunConfig`; raises `ConfigError` naming the bad key."""
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
    _check_prpo_fields(data)
    try:
        training = PRPOConfig(**data)
    except ValueError as err:
        raise ConfigError(_key_named_in(str(err)), str(err)) from err
    _check_combinations(training)
    return RunConfig(model=model, task=task, training=training, eval_task=eval_task, source=source)


def _key_named_in(message: str) -> str:
    """The config key a TRL/transformers error message names first (they name fields in their text)."""
    found = []
    for f in dataclasses.fields(PRPOConfig):
        match = re.search(rf"\b{re.escape(f.name)}\b", message)
        if match:
            found.append((match.start(), -len(f.name), f.name))
    return min(found)[2] if found else ""


def _check_prpo_fields(data: Mapping[str, Any]) -> None:
    """Checks of the PRPO fields that must run before `GRPOConfig.__post_init__`."""
    from prpo.advantages import ADVANTAGES

    method = data.get("method", "prpo")
    if method not in ADVANTAGES:
        raise ConfigError("method", f"unknown method {method!r}{_did_you_mean(method, list(ADVANTAGES))}; "
                          f"known: {', '.join(sorted(ADVANTAGES))}")
    choices = {"segmenter": SEGMENTERS, "normalization": NORMALIZATIONS, "outcome_scale": OUTCOME_SCALES,
               "loss_type": TOKEN_LOSSES}
    for key, allowed in choices.items():
        if key in data and data[key] not in allowed:
            raise ConfigError(key, f"{data[key]!r} is not one of {', '.join(allowed)}")
    positive = ("sigma0", "eps", "min_gap", "segment_length", "overlong_len", "grading_timeout",
                "max_prompt_length", "collapse_window", "collapse_drop", "temperature")
    for key in positive:
        value = data.get(key)
        if value is not None and value <= 0:
            raise ConfigError(key, f"must be > 0, got {value}")
    if data.get("k", 5) < 0:
        raise ConfigError("k", f"must be >= 0, got {data['k']}")
    if "collapse_drop" in data and data["collapse_drop"] >= 1:
        raise ConfigError("collapse_drop", f"must be < 1, got {data['collapse_drop']}")


def _check_combinations(args: PRPOConfig) -> None:
    """Impossible combinations of otherwise valid fields."""
    from prpo.advantages import get_method

    entry = get_method(args.method)
    if entry.uses_prm and args.prm is None:
        raise ConfigError("prm", f"method {args.method!r} scores segments with a PRM: set prm (e.g. {{type: arithmetic}})")
    if args.prm is not None and "type" not in args.prm:
        raise ConfigError("prm.type", "is required (a registered PRM type, e.g. arithmetic or step_tag)")
    takes = entry.options()
    for key in args.advantage_options:
        if key not in takes:
            raise ConfigError(f"advantage_options.{key}", f"method {args.method!r} takes: {', '.join(takes) or 'none'}")
    high = args.epsilon if args.epsilon_high is None else args.epsilon_high
    if args.delta is not None and args.delta <= 1 + high:
        raise ConfigError("delta", f"the dual clip {args.delta} must exceed 1 + epsilon_high = {1 + high}")
    if args.correct_reward <= args.wrong_reward:
        raise ConfigError("correct_reward", f"must exceed wrong_reward ({args.correct_reward} <= {args.wrong_reward})")
    if args.overlong_len is not None and args.max_completion_length and args.overlong_len > 2 * args.max_completion_length:
        raise ConfigError("overlong_len", f"{args.overlong_len} can never apply: responses stop at "
                          f"max_completion_length={args.max_completion_length} <= overlong_len / 2")
    if args.remove_unused_columns:
        raise ConfigError("remove_unused_columns", "must be false: prompt_id, problem and answer travel with each sample")
    if args.segmenter == "entropy" and args.k > 0 and args.max_completion_length and args.max_completion_length < 2 * args.min_gap:
        raise ConfigError("min_gap", f"{args.min_gap} leaves no entropy spike in max_completion_length="
                          f"{args.max_completion_length} tokens (needs >= 2 * min_gap)")


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
