"""`PRPOConfig`: TRL's `GRPOConfig` plus PRPO's fields, every field and combination checked on construction.

The checks are tables (`FIELD_CHECKS`, `COMBINATION_CHECKS`) run from `__post_init__`, so a config
built in Python is checked like one read from a YAML run file (`prpo.training.run_config`); each raises
`ConfigError` naming the key, the bad value and what to set instead.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers.trainer_utils import SchedulerType
from trl import GRPOConfig

from prpo.advantages import ADVANTAGES, CORRECT_REWARD, EPS, MU0, SIGMA0, WRONG_REWARD, Estimator, get_method, resolve_estimator
from prpo.filters import FILTERS, bind_filter, get_filter
from prpo.kl import k3_bounds
from prpo.training.metrics import COLLAPSE_DROP, COLLAPSE_WINDOW
from prpo.training.shared_prefix import SharedPrefixMode
from prpo.segmentation import K, MARKER, MIN_GAP, SEGMENT_LENGTH, SEGMENTERS, get_segmenter
from prpo.typecheck import has_type, type_name

Normalization = Literal["fixed_prior", "group"]
OutcomeScale = Literal["none", "group"]
# Sequence-level losses reduce the (B, T) advantages to one weight per response; PRPO needs token credit.
TokenLoss = Literal["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo"]


class ConfigError(ValueError):
    """A bad run configuration; `key` is the dotted key at fault."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config key '{key}': {message}" if key else message)


@dataclass
class PRPOConfig(GRPOConfig):
    """`GRPOConfig` plus the PRPO stages: segmentation, PRM, outcome reward and advantage method.

    Defaults follow the paper (PRPO, arXiv 2601.07182): clip 0.2 with dual clip 3.0 (`delta`); the
    plain k3 KL ``exp(r) - r - 1`` (``r = logp_ref - logp``) to the frozen initial model as a loss term
    with ``beta = 0.001`` (TRL's importance-weighted KL is off); token-mean loss (``loss_type="dapo"``);
    AdamW at lr 1e-6 constant, weight decay 0.01, grad clip 1.0; temperature 1.0; 2048 response
    tokens; no vLLM importance-sampling correction. The paper's unit is ``prompts_per_step`` prompts x
    ``num_generations`` rollouts per optimiser update; the accumulation is derived from it.
    Every field and every combination is checked here, on every construction path, raising
    `ConfigError` that names the key, the bad value and what is accepted::

        args = PRPOConfig(output_dir="runs/x", method="prpo", prm={"type": "arithmetic"},
                          num_generations=8, prompts_per_step=16, per_device_train_batch_size=32)
    """

    method: str = field(default="prpo", metadata={"help": "Advantage method: a name of prpo.advantages.ADVANTAGES."})
    normalization: Normalization = field(default="fixed_prior", metadata={"help": "Process advantage: fixed_prior or group."})
    mu0: float = field(default=MU0, metadata={"help": "fixed_prior location of the PRM score."})
    sigma0: float = field(default=SIGMA0, metadata={"help": "fixed_prior scale of the PRM score (sqrt(1/24))."})
    outcome_scale: OutcomeScale = field(default="none", metadata={"help": "Divide beta by the group std ('group') or not."})
    eps: float = field(default=EPS, metadata={"help": "Added to standard deviations."})
    advantage_options: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Further options of the advantage method (e.g. `tau` for pure)."}
    )
    # Rollout filter (prpo.filters): a stage between PRM scoring and the advantages; a spec like `prm`.
    filter: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "Keep some rollouts of each group before the advantages, e.g. {type: consistency, keep: 4} "
                  "(PROF, arXiv 2509.03403); the others get advantage 0 and leave the loss. None: the method's "
                  "own (prof, prpo_prof: consistency keeping half of each group) or no filter."},
    )
    segmenter: str = field(default="entropy", metadata={"help": "A name of prpo.segmentation.SEGMENTERS: entropy, marker, fixed."})
    k: int = field(default=K, metadata={"help": "Entropy segmenter: at most k spikes."})
    min_gap: int = field(default=MIN_GAP, metadata={"help": "Entropy segmenter: spikes at least min_gap tokens apart."})
    marker: str = field(default=MARKER, metadata={"help": "Marker segmenter: a new step after each marker."})
    segment_length: int = field(default=SEGMENT_LENGTH, metadata={"help": "Fixed segmenter: tokens per segment."})
    prm: dict[str, Any] | None = field(default=None, metadata={"help": "PRM spec for prpo.prm.load_prm."})
    correct_reward: float = field(default=CORRECT_REWARD, metadata={"help": "Outcome reward R of a correct answer."})
    wrong_reward: float = field(default=WRONG_REWARD, metadata={"help": "Outcome reward R of a wrong or missing answer."})
    reward_range: list[float] | None = field(
        default=None,
        metadata={"help": "[low, high] of the reward_funcs' weighted sum R: mapped onto [wrong_reward, correct_reward] "
                  "(default +-1, the paper's units) before the advantages. None: R as the reward functions give it. "
                  "beta = R - mean_g R is in R's units while the process advantage Z is not, so a 0/1 reward "
                  "moves responses half as far as the paper's +-1: set [0, 1] for it."},
    )
    overlong_len: int | None = field(default=None, metadata={"help": "L_pen of the overlong penalty (None: off)."})
    grading_timeout: float = field(default=5.0, metadata={"help": "Seconds allowed to grade one answer."})
    max_prompt_length: int | None = field(default=2048, metadata={"help": "Longest prompt in tokens (None: no limit)."})
    prompts_per_step: int | None = field(
        default=None,
        metadata={"help": "Prompts per optimiser update (each with num_generations rollouts); derives "
                  "gradient_accumulation_steps from the process count. None: TRL's batch keys as given."},
    )
    samples_per_step: int = field(default=16, metadata={"help": "Rows of samples.jsonl per step (-1: all)."})
    eval_before_after: bool = field(
        default=True, metadata={"help": "`prpo train`: greedy accuracy on eval_task before and after training."}
    )
    collapse_window: int = field(default=COLLAPSE_WINDOW, metadata={"help": "Steps averaged for the collapse warning."})
    collapse_drop: float = field(
        default=COLLAPSE_DROP, metadata={"help": "Warn when the final-answer rate fell and the length moved by this fraction."}
    )
    # TRL defaults changed to the paper's settings.
    beta: float = field(default=0.001, metadata={"help": "KL coefficient (k3 estimator, frozen initial model)."})
    scale_rewards: str | bool = field(
        default="none",
        metadata={"help": "TRL's reward scaling; PRPO's outcome location is scaled by outcome_scale instead "
                  "(only 'none' is accepted)."},
    )
    kl_clamp: float | None = field(
        default=None,
        metadata={"help": "Cap the per-token k3 KL at this value with zero gradient beyond, as verl's low_var_kl "
                  "(which the paper's authors trained with) does at 10; None: TRL's unclamped k3 (prpo.kl)."},
    )
    use_bias_correction_kl: bool = field(
        default=False,
        metadata={"help": "Multiply the k3 KL by the importance ratio (TRL's default). False: the paper's plain k3 "
                  "loss term, whose gradient is beta * (1 - exp(logp_ref - logp)) * grad logp."},
    )
    vllm_importance_sampling_correction: bool = field(
        default=False,
        metadata={"help": "With use_vllm: weight each rollout's loss by the trainer/vLLM probability ratio and mask "
                  "it above vllm_importance_sampling_clip_max (TRL's default). Not in the paper: off."},
    )
    delta: float | None = field(default=3.0, metadata={"help": "Dual clip of the ratio for negative advantages."})
    loss_type: TokenLoss = field(default="dapo", metadata={"help": "Token-mean over the global batch ('dapo')."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    lr_scheduler_type: SchedulerType | str = field(
        default="constant_with_warmup",
        metadata={"help": "Learning-rate schedule: constant after warmup_steps of linear warm-up (exactly constant with "
                  "none, the paper's setting). 'constant' ignores a warm-up, so it is refused with warmup_steps > 0."},
    )
    max_completion_length: int | None = field(default=2048, metadata={"help": "Longest response in tokens."})
    logging_steps: float = field(default=1, metadata={"help": "Log every step."})
    # TRL turns checkpointing on through the alias transformers deprecates; use the new name instead.
    activation_checkpointing: bool | None = field(default=True, metadata={"help": "Recompute activations in backward."})
    gradient_checkpointing: bool | None = field(default=None, metadata={"help": "Deprecated alias of the above."})
    shared_prefix: SharedPrefixMode | bool = field(
        default="auto",
        metadata={"help": "Forward each group's prompt once in every policy pass (exact; docs/design.md). auto: where "
                  "the model and setup allow it exactly and it saves >= 1.3x tokens, checked against the unshared "
                  "pass on each new shape; true: always (refused where it cannot be exact); false: never."},
    )

    def __post_init__(self):
        if isinstance(self.shared_prefix, bool):  # YAML reads `shared_prefix: true` as a boolean
            self.shared_prefix = "true" if self.shared_prefix else "false"
        for check in FIELD_CHECKS:
            check(self)
        # TRL turns bf16 on whenever it is unset, which transformers then rejects on a machine without a GPU.
        if self.bf16 is None and not self.fp16 and (self.use_cpu or not torch.cuda.is_available()):
            self.bf16 = False
        try:
            super().__post_init__()
        except ConfigError:
            raise
        except ValueError as err:  # TRL and transformers name the fields in their messages
            raise ConfigError(_key_named_in(str(err)), str(err)) from err
        for check in COMBINATION_CHECKS:
            check(self)

    def advantage_kwargs(self) -> dict[str, Any]:
        """Options of the advantage method (`prpo.advantages.run_advantages`): the shared fields it takes, then extras.

        ``separator_ends`` comes from the segmenter's registry entry (PURE zeroes separator tokens).
        """
        takes = get_method(self.method).options()
        shared = {
            "normalization": self.normalization,
            "mu0": self.mu0,
            "sigma0": self.sigma0,
            "outcome_scale": self.outcome_scale,
            "eps": self.eps,
            "correct_reward": self.correct_reward,
            "wrong_reward": self.wrong_reward,
            "separator_ends": get_segmenter(self.segmenter).separator_ends,
        }
        return {**{k: v for k, v in shared.items() if k in takes}, **self.advantage_options}

    def estimator(self) -> Estimator:
        """The run's advantage stage, resolved once: method, options (`advantage_kwargs`) and rollout filter."""
        spec = self.filter_spec()
        rollout_filter = None if spec is None else bind_filter(*spec)
        return resolve_estimator(self.method, self.advantage_kwargs(), rollout_filter)

    def segmenter_kwargs(self) -> dict[str, Any]:
        """Options of the registered segmenter, from the same-named fields (``k``, ``min_gap``, ``marker``, ...)."""
        return {name: getattr(self, name) for name in get_segmenter(self.segmenter).options() if hasattr(self, name)}

    def uses_prm(self) -> bool:
        spec = self.filter_spec()
        return get_method(self.method).uses_prm or (spec is not None and get_filter(spec[0]).uses_prm)

    def filter_spec(self) -> tuple[str, dict[str, Any]] | None:
        """The rollout filter's name and options: the `filter` key, else the method's preset filter, else None."""
        if self.filter is not None:
            return self.filter["type"], {k: v for k, v in self.filter.items() if k != "type"}
        preset = get_method(self.method).filter
        return None if preset is None else (preset, {})

    def batch_summary(self) -> str:
        """The effective update of this launch: prompts x rollouts per optimiser step, and how it is made."""
        rows = self.per_device_train_batch_size * self.world_size * self.gradient_accumulation_steps
        return (f"{rows // self.num_generations} prompts x {self.num_generations} rollouts = {rows} rollouts per "
                f"optimiser step ({self.world_size} processes x per_device_train_batch_size "
                f"{self.per_device_train_batch_size} x gradient_accumulation_steps {self.gradient_accumulation_steps})")


# ----------------------------------------------------------------------------- validation


def did_you_mean(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _choice_error(key: str, value: Any, allowed: Sequence[str]) -> ConfigError:
    hint = did_you_mean(value, list(allowed)) if isinstance(value, str) else ""
    return ConfigError(key, f"{value!r} is not one of {', '.join(allowed)}{hint}")


def check_value(key: str, value: Any, hint: Any) -> None:
    """``value`` fits ``hint``; a `Literal` names its accepted values (and the nearest one)."""
    if typing.get_origin(hint) is Literal:
        if value not in typing.get_args(hint):
            raise _choice_error(key, value, typing.get_args(hint))
    elif not has_type(value, hint):
        raise ConfigError(key, f"expected {type_name(hint)}, got {type(value).__name__} {value!r}")


def _check_types(args: PRPOConfig) -> None:
    """The fields PRPOConfig declares have their annotated types (TRL does not check its own)."""
    hints = typing.get_type_hints(PRPOConfig)
    for key in PRPOConfig.__annotations__:
        check_value(key, getattr(args, key), hints[key])


def _check_registered(args: PRPOConfig) -> None:
    """`method` and `segmenter` name registered entries (one registered later is accepted too)."""
    for key, registry in (("method", ADVANTAGES), ("segmenter", SEGMENTERS)):
        value = getattr(args, key)
        if value not in registry:
            raise _choice_error(key, value, sorted(registry))


def _check_ranges(args: PRPOConfig) -> None:
    positive = ("sigma0", "eps", "min_gap", "segment_length", "overlong_len", "grading_timeout",
                "max_prompt_length", "prompts_per_step", "collapse_window", "collapse_drop", "temperature")
    for key in positive:
        value = getattr(args, key)
        if value is not None and value <= 0:
            raise ConfigError(key, f"must be > 0, got {value}")
    if args.k < 0:
        raise ConfigError("k", f"must be >= 0, got {args.k}")
    if args.collapse_drop >= 1:
        raise ConfigError("collapse_drop", f"must be < 1, got {args.collapse_drop}")
    if not args.marker:
        raise ConfigError("marker", "must be a non-empty string")
    if args.prm is not None and "type" not in args.prm:
        raise ConfigError("prm.type", "is required (a registered PRM type, e.g. arithmetic or step_tag)")


def _check_advantage_options(args: PRPOConfig) -> None:
    takes = get_method(args.method).options()
    for key in args.advantage_options:
        if key in SHARED_OPTIONS:
            raise ConfigError(f"advantage_options.{key}", f"{SHARED_OPTIONS[key]}; not an advantage option")
        if key not in takes:
            raise ConfigError(f"advantage_options.{key}", f"method {args.method!r} takes: {', '.join(takes) or 'none'}")


# Advantage options the config fills from elsewhere: set there, not in advantage_options.
SHARED_OPTIONS = {
    **{name: f"set the top-level key '{name}'" for name in
       ("normalization", "mu0", "sigma0", "outcome_scale", "eps", "correct_reward", "wrong_reward")},
    "separator_ends": "follows the segmenter (true for 'marker')",
}


def processes() -> int:
    """Processes of this launch, as `accelerate launch` / `torchrun` announce it (1 when run plainly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def derive_accumulation(prompts_per_step: int, num_generations: int, per_device: int, n_processes: int) -> int:
    """``gradient_accumulation_steps`` that makes ``prompts_per_step x num_generations`` rollouts per update."""
    rollouts = prompts_per_step * num_generations
    per_micro_step = per_device * n_processes
    if rollouts % per_micro_step:
        raise ConfigError("prompts_per_step", f"{prompts_per_step} prompts x num_generations {num_generations} = "
                          f"{rollouts} rollouts per update is not a multiple of per_device_train_batch_size "
                          f"{per_device} x {n_processes} processes = {per_micro_step}: pick per_device_train_batch_size "
                          f"and the process count so that their product divides {rollouts}")
    return rollouts // per_micro_step


def _check_batch_unit(args: PRPOConfig) -> None:
    """``prompts_per_step`` set: derive ``gradient_accumulation_steps`` (one update per generation batch)."""
    if args.prompts_per_step is None:
        return
    for key in ("generation_batch_size", "steps_per_generation"):
        if getattr(args, key) is not None:
            raise ConfigError(key, f"is {getattr(args, key)}, but prompts_per_step={args.prompts_per_step} sets the "
                              "generation batch (one optimiser update per batch): leave it unset")
    accumulation = derive_accumulation(args.prompts_per_step, args.num_generations, args.per_device_train_batch_size,
                                       processes())
    if args.gradient_accumulation_steps not in (1, accumulation):
        raise ConfigError("gradient_accumulation_steps", f"is {args.gradient_accumulation_steps}, but prompts_per_step="
                          f"{args.prompts_per_step} x num_generations={args.num_generations} on {processes()} processes "
                          f"with per_device_train_batch_size={args.per_device_train_batch_size} needs {accumulation}: "
                          "leave it unset (it is derived)")
    args.gradient_accumulation_steps = accumulation


def _check_world_size(args: PRPOConfig) -> None:
    if args.prompts_per_step is not None and args.world_size != processes():
        raise ConfigError("prompts_per_step", f"derived for WORLD_SIZE={processes()} processes, but this launch has "
                          f"{args.world_size}: launch with accelerate or torchrun, which set WORLD_SIZE")


def _check_loss(args: PRPOConfig) -> None:
    high = args.epsilon if args.epsilon_high is None else args.epsilon_high
    if args.delta is not None and args.delta <= 1 + high:
        raise ConfigError("delta", f"the dual clip {args.delta} must exceed 1 + epsilon_high = {1 + high}")
    if args.kl_clamp is not None:
        try:
            k3_bounds(args.kl_clamp)
        except ValueError as err:
            raise ConfigError("kl_clamp", f"{err} (verl's low_var_kl: 10)") from None
        if args.use_liger_kernel:
            raise ConfigError("kl_clamp", "the Liger loss computes its own KL; set use_liger_kernel: false")


def _check_rewards(args: PRPOConfig) -> None:
    if args.correct_reward <= args.wrong_reward:
        raise ConfigError("correct_reward", f"must exceed wrong_reward ({args.correct_reward} <= {args.wrong_reward})")
    if args.overlong_len is not None and args.max_completion_length and args.overlong_len > 2 * args.max_completion_length:
        raise ConfigError("overlong_len", f"{args.overlong_len} can never apply: responses stop at "
                          f"max_completion_length={args.max_completion_length} <= overlong_len / 2")


def _check_warmup(args: PRPOConfig) -> None:
    """transformers' 'constant' schedule ignores `warmup_steps`: a warm-up asked for must happen, so refuse the pair."""
    if args.lr_scheduler_type == SchedulerType.CONSTANT and args.warmup_steps > 0:
        raise ConfigError("warmup_steps", f"{args.warmup_steps} warm-up steps with lr_scheduler_type='constant', which "
                          "ignores them; set lr_scheduler_type: constant_with_warmup (the default) or warmup_steps: 0")


def _check_columns(args: PRPOConfig) -> None:
    if args.remove_unused_columns:
        raise ConfigError("remove_unused_columns", "must be false: prompt_id, problem and answer travel with each sample")


def _check_segments(args: PRPOConfig) -> None:
    if args.segmenter == "entropy" and args.k > 0 and args.max_completion_length and args.max_completion_length < 2 * args.min_gap:
        raise ConfigError("min_gap", f"{args.min_gap} leaves no entropy spike in max_completion_length="
                          f"{args.max_completion_length} tokens (needs >= 2 * min_gap)")


def _check_trl_options(args: PRPOConfig) -> None:
    """TRL options that would change what PRPO's token advantages mean: `reward_range`, and refusals with the reason.

    The table of every such `GRPOConfig` option, supported or refused, is in docs/trl.md.
    """
    if args.reward_range is not None:
        if len(args.reward_range) != 2 or not all(math.isfinite(v) for v in args.reward_range):
            raise ConfigError("reward_range", f"must be two finite numbers [low, high], got {args.reward_range!r}")
        if args.reward_range[0] >= args.reward_range[1]:
            raise ConfigError("reward_range", f"low must be below high, got {args.reward_range!r} (e.g. [0, 1])")
    if args.scale_rewards != "none":
        raise ConfigError("scale_rewards", f"{args.scale_rewards!r}: TRL's scaling applies to the GRPO advantages that "
                          "PRPO replaces; set 'none' and use outcome_scale='group' to divide PRPO's outcome location "
                          "by the group std (or method='grpo' for GRPO's scaled advantages)")
    if args.multi_objective_aggregation != "sum_then_normalize":
        raise ConfigError("multi_objective_aggregation", f"{args.multi_objective_aggregation!r} normalises each "
                          "reward per group before the sum, so R leaves the rewards' units and PRPO's outcome location "
                          "becomes a z-score beside the PRM's Z; use 'sum_then_normalize' (R = sum_k w_k r_k)")
    if args.importance_sampling_level != "token":
        raise ConfigError("importance_sampling_level", f"{args.importance_sampling_level!r}: one ratio per response "
                          "gives every token the gradient of the response's mean advantage, erasing PRPO's per-token "
                          "credit; use 'token'")
    if args.max_tool_calling_iterations is not None:
        raise ConfigError("max_tool_calling_iterations", "tool calling is not supported: the PRM would score tool "
                          "outputs as the policy's reasoning, and tool tokens were not sampled (no entropy); leave it None")


def _check_filter(args: PRPOConfig) -> None:
    """`filter` names a registered filter, takes only its options, with their types; 1 <= keep <= num_generations."""
    if args.filter is None:
        return
    if "type" not in args.filter:
        raise ConfigError("filter.type", f"is required: one of {', '.join(sorted(FILTERS))} (e.g. {{type: consistency, keep: 4}})")
    name = args.filter["type"]
    if name not in FILTERS:
        raise _choice_error("filter.type", name, sorted(FILTERS))
    takes = FILTERS[name].options()
    hints = typing.get_type_hints(FILTERS[name].fn)
    for key, value in args.filter.items():
        if key == "type":
            continue
        if key not in takes:
            raise ConfigError(f"filter.{key}", f"unknown option{did_you_mean(key, list(takes))}; filter {name!r} "
                              f"takes: {', '.join(takes) or 'none'}")
        check_value(f"filter.{key}", value, hints[key])
    keep = args.filter.get("keep")
    if keep is not None and not 1 <= keep <= args.num_generations:
        raise ConfigError("filter.keep", f"must be between 1 and num_generations={args.num_generations} rollouts "
                          f"per group, got {keep} (PROF's paper: keep 4 of 8)")


# Run in order by `PRPOConfig.__post_init__`: FIELD_CHECKS on the fields as given (before TRL derives
# its batch sizes), COMBINATION_CHECKS after. A new check is one function appended here.
FIELD_CHECKS: list[Callable[[PRPOConfig], None]] = [_check_types, _check_registered, _check_ranges, _check_batch_unit]
COMBINATION_CHECKS: list[Callable[[PRPOConfig], None]] = [
    _check_world_size, _check_advantage_options, _check_loss, _check_rewards, _check_warmup, _check_columns, _check_segments,
    _check_trl_options, _check_filter,
]


def _key_named_in(message: str) -> str:
    """The config key a TRL/transformers error message names first (they name fields in their text)."""
    found = []
    for f in dataclasses.fields(PRPOConfig):
        match = re.search(rf"\b{re.escape(f.name)}\b", message)
        if match:
            found.append((match.start(), -len(f.name), f.name))
    return min(found)[2] if found else ""
