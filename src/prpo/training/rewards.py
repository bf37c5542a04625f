"""The outcome reward ``R_i`` of a rollout, as a TRL reward function: the default grader, or TRL's reward functions combined.

``R_i`` is in the paper's units, ``correct_reward`` / ``wrong_reward`` (+-1): the built-in grader
gives them; the weighted sum of ``reward_funcs`` is mapped onto them from ``reward_range`` (the
config's, or the one every reward function declares). PRPO's outcome location ``beta = R - mean_g R``
is in R's units while the PRM's Z is not, so the mapping matters.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prpo.advantages import outcome_rewards
from prpo.training.config import PRPOConfig

logger = logging.getLogger(__name__)


def completion_text(completion: str | list[dict[str, Any]]) -> str:
    """The text of a TRL completion: a string, or a conversational ``[{"role": "assistant", "content": ...}]``."""
    if isinstance(completion, str):
        return completion
    return "".join(message["content"] for message in completion if message.get("role") == "assistant")


@dataclass(frozen=True)
class Outcomes:
    """What grading one rollout gave, for this process's rows: carried by the trainer's `Rollout`."""

    texts: list[str]  # each response's text
    rewards: Tensor  # R[B], float; NaN where every reward function returned None (unscorable)
    correct: Tensor | None  # [B] bool verdicts of the default grader; None with reward functions


class OutcomeReward:
    """The outcome reward ``R_i`` of a rollout: TRL's reward function, and the combination of TRL's rewards.

    ``R_i = sum_k w_k r_ik`` over TRL's reward functions and ``reward_weights`` (`combine`; a None
    reward is skipped; all None: NaN, the response is unscorable), mapped from ``reward_range =
    [lo, hi]`` onto ``[wrong_reward, correct_reward]`` when set: ``wrong + (R - lo) (correct - wrong)
    / (hi - lo)``. Called itself, it is the default reward function: it grades response i against
    the gold ``answer`` of its own row, ``r_i = correct_reward`` or ``wrong_reward``, minus
    ``L_i / overlong_len`` when ``L_i > overlong_len / 2``. Its verdicts wait for the `combine` of the
    same rollout, which returns them in the rollout's `Outcomes`; it keeps nothing after that.
    """

    __name__ = "outcome"

    def __init__(self, grade_many: Callable[[list[str], list[str]], list[bool]] | None, args: PRPOConfig,
                 reward_range: Sequence[float] | None = None):
        self.grade_many = grade_many
        self.correct_reward, self.wrong_reward, self.overlong_len = args.correct_reward, args.wrong_reward, args.overlong_len
        self.reward_range = reward_range
        self._verdicts: Tensor | None = None  # of the call in progress, until `combine` hands them over

    def __call__(self, prompts, completions, completion_ids, answer, **kwargs) -> list[float]:
        texts = [completion_text(c) for c in completions]
        verdicts = [bool(c) for c in self.grade_many(texts, list(answer))]
        if len(verdicts) != len(texts):
            raise ValueError(f"grader returned {len(verdicts)} verdicts for {len(texts)} responses")
        self._verdicts = torch.tensor(verdicts, dtype=torch.bool)
        lengths = torch.tensor([len(ids) for ids in completion_ids])
        return outcome_rewards(
            self._verdicts, lengths,
            correct_reward=self.correct_reward, wrong_reward=self.wrong_reward, overlong_len=self.overlong_len,
        ).tolist()

    def combine(self, completions: list, rewards_per_func: Tensor, weights: Tensor) -> Outcomes:
        """The `Outcomes` of this process's rows from TRL's per-function rewards ``r[B, K]`` (and the verdicts)."""
        rewards = (rewards_per_func * weights).nansum(dim=1)
        rewards[rewards_per_func.isnan().all(dim=1)] = math.nan
        if self.reward_range is not None:
            low, high = self.reward_range
            rewards = self.wrong_reward + (rewards - low) * (self.correct_reward - self.wrong_reward) / (high - low)
        verdicts, self._verdicts = self._verdicts, None
        if self.grade_many is not None and verdicts is None:
            raise RuntimeError("the default reward function was not called for this rollout: no verdicts to combine")
        correct = None if verdicts is None else verdicts.to(rewards.device)
        return Outcomes([completion_text(c) for c in completions], rewards, correct)


def checked_reward_function(func: Any) -> Any:
    """``func`` as TRL calls it, its answer checked: one finite number, or None (this response is not
    scorable by it, as in TRL), per completion. A NaN or infinite value is an error naming the function and
    the completion, never a silent skip (TRL turns None into NaN, after which the two look the same).
    Reward models (an id or a module) and async functions are passed through as they are."""
    if isinstance(func, (str, torch.nn.Module)) or inspect.iscoroutinefunction(func) or not callable(func):
        return func

    @functools.wraps(func)
    def checked(*args: Any, **kwargs: Any) -> Any:
        values = func(*args, **kwargs)
        name = getattr(func, "__name__", type(func).__name__)
        if not isinstance(values, (list, tuple)):
            raise ValueError(f"reward function {name} returned {type(values).__name__}, expected a list with one "
                             "number (or None) per completion")
        for index, value in enumerate(values):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"reward function {name} returned {value!r} for completion {index}: expected a finite "
                                 "number, or None where it cannot score the response")
        return values

    return checked


def declared_reward_range(reward_funcs: Sequence[Any], weights: Sequence[float] | None) -> tuple[float, float] | None:
    """``[low, high]`` of ``R = sum_k w_k r_k`` when every reward function declares ``reward_range = (lo, hi)``, else None.

    A function declares its range as an attribute (``accuracy.reward_range = (0.0, 1.0)``); a
    negative weight swaps its bounds.
    """
    ranges = [getattr(func, "reward_range", None) for func in reward_funcs]
    if any(r is None for r in ranges):
        return None
    weights = [1.0] * len(ranges) if weights is None else list(weights)
    low = sum(w * (lo if w >= 0 else hi) for w, (lo, hi) in zip(weights, ranges, strict=True))
    high = sum(w * (hi if w >= 0 else lo) for w, (lo, hi) in zip(weights, ranges, strict=True))
    return float(low), float(high)


def outcome_reward_range(reward_funcs: Any, args: PRPOConfig) -> tuple[float, float] | None:
    """The range `OutcomeReward` maps onto ``[wrong_reward, correct_reward]``: ``args.reward_range``, else the declared one.

    Refused with the built-in grader (its R is already in those units); without either range, R keeps
    the reward functions' units and a warning says what that does to beta.
    """
    if not reward_funcs:
        if args.reward_range is not None:
            raise ValueError(f"reward_range={args.reward_range} maps the weighted sum of reward_funcs onto [wrong_reward, "
                             "correct_reward]; without reward_funcs the built-in grader's R is already correct_reward / "
                             "wrong_reward and would be mapped twice: remove reward_range")
        return None
    if args.reward_range is not None:
        return tuple(args.reward_range)
    funcs = reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
    declared = declared_reward_range(funcs, args.reward_weights)
    if declared is None:
        logger.warning(
            "reward_funcs without reward_range: R = sum_k w_k r_k is used in the reward functions' units, so PRPO's "
            "outcome location beta = R - mean_g R is not in the paper's +-1 units beside the PRM's Z (0/1 rewards halve "
            "it); set reward_range: [low, high] of R (e.g. [0, 1]), or give each reward function a reward_range "
            "attribute"
        )
    return declared
