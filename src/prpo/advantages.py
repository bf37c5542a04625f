"""Token-level advantages for PRPO and its baselines (ALGORITHM.md section 4).

Every method maps the same inputs -- outcome rewards ``R[B]``, prompt ids ``group_ids[B]``,
the response mask ``M[B, T]`` and, for process methods, token scores ``P[B, T]`` and segment ids
``S[B, T]`` -- to advantages ``A[B, T]`` that are exactly 0 on padding. Groups always come from
``group_ids`` (any order, any sizes), never from positions. Methods live in a registry:

    @register_advantage("my_method", uses_prm=True)
    def my_method(inputs: AdvantageInputs, *, alpha: float = 1.0) -> Tensor: ...

    compute_advantages("my_method", outcome_rewards=R, group_ids=g, mask=M, token_scores=P, alpha=2.0)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from prpo.segmentation import response_lengths


@dataclass(frozen=True)
class AdvantageInputs:
    """Validated inputs of one batch: R[B], group ids[B], mask[B, T] (bool), P[B, T], S[B, T]."""

    outcome_rewards: Tensor
    group_ids: Tensor
    mask: Tensor
    token_scores: Tensor | None = None
    segment_ids: Tensor | None = None

    def scores(self, method: str) -> Tensor:
        """The token scores, or a clear error for a method that needs a PRM."""
        if self.token_scores is None:
            raise ValueError(f"advantage method {method!r} needs token_scores (a PRM score per token)")
        return self.token_scores

    def segments(self, method: str) -> Tensor:
        """The segment ids, or a clear error for a method that needs them."""
        if self.segment_ids is None:
            raise ValueError(f"advantage method {method!r} needs segment_ids")
        return self.segment_ids


@dataclass(frozen=True)
class AdvantageMethod:
    """A registered method: the function and whether it consumes PRM scores."""

    name: str
    fn: Callable[..., Tensor]
    uses_prm: bool

    def options(self) -> dict[str, object]:
        """Keyword options the method takes, with their defaults."""
        params = inspect.signature(self.fn).parameters.values()
        return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


ADVANTAGES: dict[str, AdvantageMethod] = {}


def register_advantage(name: str, *, uses_prm: bool) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Register ``fn(inputs: AdvantageInputs, *, **options) -> Tensor[B, T]`` under ``name``."""

    def decorator(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in ADVANTAGES:
            raise ValueError(f"advantage method {name!r} is already registered")
        ADVANTAGES[name] = AdvantageMethod(name, fn, uses_prm)
        return fn

    return decorator


def get_method(name: str) -> AdvantageMethod:
    """The registered method ``name``; a clear error listing the known ones otherwise."""
    if name not in ADVANTAGES:
        raise ValueError(f"unknown advantage method {name!r}; known: {', '.join(sorted(ADVANTAGES))}")
    return ADVANTAGES[name]


# ----------------------------------------------------------------------------- group statistics


def group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    """Dense group index in ``0..n_groups-1`` for each sample, and ``n_groups``."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    return inverse, int(inverse.max()) + 1 if inverse.numel() else 0


def group_sum(values: Tensor, group_ids: Tensor) -> Tensor:
    """Per-sample sum over its group: ``out_i = sum_{j in g(i)} v_j``."""
    index, n_groups = group_index(group_ids)
    totals = torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add_(0, index, values)
    return totals[index]


def group_mean_std(values: Tensor, group_ids: Tensor, *, unbiased: bool) -> tuple[Tensor, Tensor]:
    """Per-sample group mean and std: ``mean_g = sum v / n_g``, ``std_g = sqrt(sum (v - mean_g)^2 / (n_g - ddof))``.

    ``ddof = 1`` when ``unbiased`` (Bessel); a group too small for it has std 0.
    """
    values = values.float()
    count = group_sum(torch.ones_like(values), group_ids)
    mean = group_sum(values, group_ids) / count
    dof = count - 1 if unbiased else count
    var = group_sum((values - mean) ** 2, group_ids) / dof.clamp(min=1)
    return mean, var.clamp(min=0).sqrt()


def outcome_rewards(
    correct: Tensor,
    lengths: Tensor,
    *,
    correct_reward: float = 1.0,
    wrong_reward: float = -1.0,
    overlong_len: int | None = None,
) -> Tensor:
    """``R_i = correct_reward if correct else wrong_reward``, minus ``L_i / L_pen`` when ``L_i > L_pen / 2``."""
    rewards = torch.where(correct.bool(), correct_reward, wrong_reward).float()
    if overlong_len is not None:
        if overlong_len <= 0:
            raise ValueError(f"overlong_len must be > 0, got {overlong_len}")
        lengths = lengths.float()
        rewards = rewards - torch.where(lengths > overlong_len / 2, lengths / overlong_len, 0.0)
    return rewards


def outcome_location(rewards: Tensor, group_ids: Tensor, *, scale: str = "none", eps: float = 1e-6) -> Tensor:
    """``beta_i = R_i - mean_g R`` (``scale="none"``), or that over ``std_g + eps`` (``"group"``, sample std)."""
    mean, std = group_mean_std(rewards, group_ids, unbiased=True)
    if scale == "none":
        return rewards - mean
    if scale == "group":
        return (rewards - mean) / (std + eps)
    raise ValueError(f"outcome_scale must be 'none' or 'group', got {scale!r}")


def process_advantage(
    token_scores: Tensor,
    mask: Tensor,
    group_ids: Tensor,
    *,
    normalization: str = "fixed_prior",
    mu0: float = 0.5,
    sigma0: float = math.sqrt(1 / 24),
    eps: float = 1e-6,
    shift: Tensor | None = None,
) -> Tensor:
    """Process advantage ``Z[B, T]`` from token scores ``P`` (plus a per-response ``shift``), 0 on padding.

    ``fixed_prior``: ``Z = (P - mu0) / sigma0``. ``group``: ``Z = (P - mean_g) / (std_g + eps)`` with
    the mean and population std over all valid tokens of all responses of the group.
    """
    scores = token_scores.float()
    offset = torch.zeros(scores.shape[0], device=scores.device) if shift is None else shift.float()
    if normalization == "fixed_prior":
        if sigma0 <= 0:
            raise ValueError(f"sigma0 must be > 0, got {sigma0}")
        z = torch.addcmul((offset - mu0 / sigma0)[:, None], scores, scores.new_tensor(1 / sigma0))
    elif normalization == "group":
        valid = mask.float()
        count = group_sum(valid.sum(dim=1), group_ids).clamp(min=1)
        mean = group_sum((scores * valid).sum(dim=1), group_ids) / count
        var = group_sum((((scores - mean[:, None]) ** 2) * valid).sum(dim=1), group_ids) / count
        z = (scores - mean[:, None]) / (var.sqrt()[:, None] + eps) + offset[:, None]
    else:
        raise ValueError(f"normalization must be 'fixed_prior' or 'group', got {normalization!r}")
    return z.masked_fill_(~mask, 0.0)  # not a product: padding may hold NaN


def broadcast(per_response: Tensor, mask: Tensor) -> Tensor:
    """``A[i, t] = a_i`` on valid tokens, 0 on padding."""
    return torch.where(mask, per_response.float()[:, None], 0.0)


def mean_token_score(token_scores: Tensor, mask: Tensor, method: str) -> Tensor:
    """``mean_{t < L_i} P[i, t]`` over each response's own tokens; an empty response is an error."""
    lengths = mask.sum(dim=1)
    if (lengths == 0).any():
        row = int((lengths == 0).nonzero()[0])
        raise ValueError(f"advantage method {method!r}: response {row} has no valid tokens")
    return (token_scores.float() * mask).sum(dim=1) / lengths


# ----------------------------------------------------------------------------- methods


@register_advantage("grpo", uses_prm=False)
def grpo(inputs: AdvantageInputs, *, eps: float = 1e-6) -> Tensor:
    """GRPO: ``A_i = (R_i - mean_g R) / (std_g R + eps)`` (sample std), broadcast to all tokens."""
    return broadcast(outcome_location(inputs.outcome_rewards, inputs.group_ids, scale="group", eps=eps), inputs.mask)


@register_advantage("dr_grpo", uses_prm=False)
def dr_grpo(inputs: AdvantageInputs) -> Tensor:
    """Dr. GRPO: ``A_i = R_i - mean_g R``, broadcast to all tokens."""
    return broadcast(outcome_location(inputs.outcome_rewards, inputs.group_ids), inputs.mask)


@register_advantage("prpo", uses_prm=True)
def prpo(
    inputs: AdvantageInputs,
    *,
    normalization: str = "fixed_prior",
    mu0: float = 0.5,
    sigma0: float = math.sqrt(1 / 24),
    outcome_scale: str = "none",
    eps: float = 1e-6,
) -> Tensor:
    """PRPO: ``A[i, t] = Z[i, t] + beta_i``; the outcome sets the location, the PRM moves credit between segments."""
    beta = outcome_location(inputs.outcome_rewards, inputs.group_ids, scale=outcome_scale, eps=eps)
    return process_advantage(
        inputs.scores("prpo"), inputs.mask, inputs.group_ids,
        normalization=normalization, mu0=mu0, sigma0=sigma0, eps=eps, shift=beta,
    )


@register_advantage("process_only", uses_prm=True)
def process_only(
    inputs: AdvantageInputs,
    *,
    normalization: str = "fixed_prior",
    mu0: float = 0.5,
    sigma0: float = math.sqrt(1 / 24),
    eps: float = 1e-6,
) -> Tensor:
    """Process only: ``A[i, t] = Z[i, t]`` (beta = 0), the setting of Hypothesis 1 (ALGORITHM.md s.6)."""
    return process_advantage(
        inputs.scores("process_only"), inputs.mask, inputs.group_ids,
        normalization=normalization, mu0=mu0, sigma0=sigma0, eps=eps,
    )


@register_advantage("prm_avg", uses_prm=True)
def prm_avg(inputs: AdvantageInputs, *, eps: float = 1e-6) -> Tensor:
    """PRM-Avg: ``R'_i = R_i + mean_{t < L_i} P[i, t]``, then GRPO on ``R'``."""
    shaped = inputs.outcome_rewards.float() + mean_token_score(inputs.scores("prm_avg"), inputs.mask, "prm_avg")
    return broadcast(outcome_location(shaped, inputs.group_ids, scale="group", eps=eps), inputs.mask)


@register_advantage("pure", uses_prm=True)
def pure(
    inputs: AdvantageInputs,
    *,
    tau: float = 0.1,
    use_outcome: bool = True,
    outcome_offset: float = 1.0,
) -> Tensor:
    """PURE min-form credit assignment (Cheng et al., arXiv 2504.15275).

    Step reward ``r_j = 2 s_j - 1`` sits at the last token of segment j and is reweighted by
    ``w_j = softmax_j(-r_j / tau)`` over the response's steps (a soft minimum); the outcome adds
    ``R_i - outcome_offset`` at the last valid token. Return-to-go ``G[i, t] = sum_{t' >= t} x[i, t']``
    (undiscounted); RLOO baseline ``b_i = mean_{j in g(i), j != i} G[j, 0]`` (0 for a group of one);
    ``A[i, t] = G[i, t] - b_i``.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    mask = inputs.mask
    response_lengths(mask)  # the last valid token is at L_i - 1
    ids = inputs.segments("pure")
    next_ids = torch.full_like(ids, -1)
    next_ids[:, :-1] = ids[:, 1:]
    step_end = mask & (next_ids != ids)
    step_reward = 2 * inputs.scores("pure").float() - 1
    weights = torch.softmax(torch.where(step_end, -step_reward / tau, float("-inf")), dim=1).nan_to_num(0.0)
    rewards = torch.where(step_end, weights * step_reward, 0.0)
    if use_outcome:
        lengths = mask.sum(dim=1)
        rows = (lengths > 0).nonzero().flatten()
        outcome = inputs.outcome_rewards.float()[rows] - outcome_offset
        rewards[rows, lengths[rows] - 1] += outcome
    returns = rewards.flip(1).cumsum(dim=1).flip(1)
    total = returns[:, 0]
    count = group_sum(torch.ones_like(total), inputs.group_ids)
    baseline = (group_sum(total, inputs.group_ids) - total) / (count - 1).clamp(min=1)
    return torch.where(mask, returns - baseline[:, None], 0.0)


# ----------------------------------------------------------------------------- entry point


def _validate(inputs: AdvantageInputs) -> None:
    batch = inputs.mask.shape[0]
    if inputs.outcome_rewards.shape != (batch,):
        raise ValueError(f"outcome_rewards must have shape ({batch},), got {tuple(inputs.outcome_rewards.shape)}")
    if inputs.group_ids.shape != (batch,):
        raise ValueError(f"group_ids must have shape ({batch},), got {tuple(inputs.group_ids.shape)}")
    if inputs.group_ids.is_floating_point():
        raise ValueError("group_ids must be an integer tensor of prompt ids")
    if not torch.isfinite(inputs.outcome_rewards).all():
        raise ValueError("outcome_rewards has a NaN or infinite value")
    for name in ("token_scores", "segment_ids"):
        value = getattr(inputs, name)
        if value is not None and value.shape != inputs.mask.shape:
            raise ValueError(f"{name} must have the mask's shape {tuple(inputs.mask.shape)}, got {tuple(value.shape)}")
    if inputs.token_scores is not None:
        scores = inputs.token_scores
        low, high = torch.aminmax(scores)  # padding is usually in range too; only then look closer
        if not (0 <= low.item() and high.item() <= 1):
            low, high = torch.aminmax(torch.where(inputs.mask, scores, 0.5))
        if not (0 <= low.item() and high.item() <= 1):  # also false for NaN
            bad = inputs.mask & (~torch.isfinite(scores) | (scores < 0) | (scores > 1))
            row, t = bad.nonzero()[0].tolist()
            raise ValueError(f"token_scores[{row}, {t}] = {scores[row, t].item()}: scores must be finite and in [0, 1]")


def compute_advantages(
    method: str,
    *,
    outcome_rewards: Tensor,
    group_ids: Tensor,
    mask: Tensor,
    token_scores: Tensor | None = None,
    segment_ids: Tensor | None = None,
    **options: object,
) -> Tensor:
    """Token-level advantages ``A[B, T]`` of the registered ``method`` (0 on padding)."""
    entry = get_method(method)
    known = entry.options()
    unknown = sorted(set(options) - set(known))
    if unknown:
        takes = ", ".join(known) or "no options"
        raise ValueError(f"advantage method {method!r} does not take option(s) {unknown}; it takes: {takes}")
    inputs = AdvantageInputs(outcome_rewards, group_ids, mask.bool(), token_scores, segment_ids)
    _validate(inputs)
    return entry.fn(inputs, **options)
