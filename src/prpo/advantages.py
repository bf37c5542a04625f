"""Token-level advantages for PRPO and its baselines (docs/algorithm.md section 4).

Every method maps the same inputs -- outcome rewards ``R[B]``, prompt ids ``group_ids[B]``,
the response mask ``M[B, T]`` and, for process methods, token scores ``P[B, T]`` and segment ids
``S[B, T]`` -- to advantages ``A[B, T]`` that are exactly 0 on padding, with the diagnostics the
method defines (`AdvantageResult`). Groups always come from ``group_ids`` (any order, any sizes),
never from positions. Methods live in a registry:

    @register_advantage("my_method", uses_prm=True)
    def my_method(inputs: AdvantageInputs, *, alpha: float = 1.0) -> AdvantageResult: ...

    compute_advantages("my_method", outcome_rewards=R, group_ids=g, mask=M, token_scores=P, alpha=2.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from prpo.registry import Registry, keyword_options
from prpo.segmentation import response_lengths


# Defaults shared by the methods, the config and the reference (docs/algorithm.md s.4), written once here.
MU0 = 0.5  # fixed_prior location of the PRM score
SIGMA0 = math.sqrt(1 / 24)  # fixed_prior scale, the paper's (~0.2041, so |Z| <= 2.449); docs/algorithm.md s.4
EPS = 1e-6  # added to standard deviations
CORRECT_REWARD = 1.0  # outcome reward R of a correct answer
WRONG_REWARD = -1.0  # outcome reward R of a wrong or missing answer


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

    def rows(self, index: Tensor | slice) -> AdvantageInputs:
        """The inputs of the rows ``index`` picks (a slice views them; a boolean mask copies)."""
        pick = (lambda t: None if t is None else t[index])  # noqa: E731
        return AdvantageInputs(self.outcome_rewards[index], self.group_ids[index], self.mask[index],
                               pick(self.token_scores), pick(self.segment_ids))

    def segments(self, method: str) -> Tensor:
        """The segment ids, or a clear error for a method that needs them."""
        if self.segment_ids is None:
            raise ValueError(f"advantage method {method!r} needs segment_ids")
        return self.segment_ids


@dataclass(frozen=True)
class AdvantageResult:
    """A method's advantages ``A[B, T]`` (0 on padding) and the diagnostics it defines, as scalars.

    The diagnostics are computed once, inside the method, on the rows it ran on (after a filter:
    the kept ones); the trainer logs them as they are.
    """

    advantages: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class AdvantageMethod:
    """A registered method: the function, whether it consumes PRM scores, and the filter a preset runs first.

    ``filter`` names a `prpo.filters` filter the trainer applies before the method (with its default
    options) unless the config sets its own; None for a plain method. ``fixed``: options a preset
    sets (e.g. `prpo_sp_uniform`: `prpo_sp` with ``uniform_group_scale=1``).
    """

    name: str
    fn: Callable[..., AdvantageResult]
    uses_prm: bool
    filter: str | None = None
    fixed: tuple[tuple[str, object], ...] = ()  # a preset's options, set by its name (not by the user)

    def options(self) -> dict[str, object]:
        """Keyword options the method takes, with their defaults (a preset's fixed ones are not among them)."""
        fixed = dict(self.fixed)
        return {name: default for name, default in keyword_options(self.fn).items() if name not in fixed}


ADVANTAGES: Registry[AdvantageMethod] = Registry("advantage method")


def register_advantage(
    name: str, *, uses_prm: bool, filter: str | None = None, fixed: Mapping[str, object] | None = None
) -> Callable[[Callable[..., AdvantageResult]], Callable[..., AdvantageResult]]:
    """Register ``fn(inputs: AdvantageInputs, *, **options) -> AdvantageResult`` under ``name`` (``filter``,
    ``fixed``: a preset's filter and options).

    A method that reports no diagnostics may return the ``A[B, T]`` tensor alone.
    """

    def decorator(fn: Callable[..., AdvantageResult]) -> Callable[..., AdvantageResult]:
        ADVANTAGES.add(AdvantageMethod(name, fn, uses_prm, filter, tuple(sorted((fixed or {}).items()))))
        return fn

    return decorator


def get_method(name: str) -> AdvantageMethod:
    """The registered method ``name``; a clear error listing the known ones otherwise."""
    return ADVANTAGES.lookup(name)


# ----------------------------------------------------------------------------- group statistics


def group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    """Dense group index in ``0..n_groups-1`` for each sample, and ``n_groups``."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    return inverse, int(inverse.max()) + 1 if inverse.numel() else 0


def group_sum(values: Tensor, group_ids: Tensor) -> Tensor:
    """Per-sample sum over its group, ``out_i = sum_{j in g(i)} v_j``, in float64 (exact for float32 values)."""
    index, n_groups = group_index(group_ids)
    totals = torch.zeros(n_groups, dtype=torch.float64, device=values.device).index_add_(0, index, values.double())
    return totals[index]


def group_deviation(
    values: Tensor, group_ids: Tensor, *, unbiased: bool, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Deviation from the group mean and the group std, in float64, over the valid entries of each group.

    ``values`` is ``[B]`` or ``[B, T]`` (then ``mask[B, T]`` picks the entries; the others give 0):
    ``d = v - mean_g`` with ``mean_g = sum v / n_g`` over all valid entries of all rows of group g,
    ``std_g = sqrt(sum d^2 / (n_g - ddof))``, ``ddof = 1`` when ``unbiased`` (Bessel; a group too
    small for it has std 0). A deviation within the rounding error of the mean,
    ``|d| <= n_g * eps_float64 * max_g |v|``, is exactly 0, so a group of equal values has ``d = 0``
    and ``std = 0`` and every method built on it gives exactly 0 there (float32 values are summed
    exactly in float64; the bound covers float64 inputs).
    """
    v = values.double()
    valid = torch.ones_like(v, dtype=torch.bool) if mask is None else mask.bool()
    v = torch.where(valid, v, 0.0)  # padding may hold NaN
    index, n_groups = group_index(group_ids)

    def per_row(x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1).sum(dim=1)

    count = group_sum(per_row(valid.double()), group_ids)
    mean = group_sum(per_row(v), group_ids) / count.clamp(min=1)
    row_max = v.abs().reshape(v.shape[0], -1).amax(dim=1) if v.numel() else v.new_zeros(v.shape[0])
    scale = v.new_zeros(n_groups).scatter_reduce_(0, index, row_max, "amax")[index]
    tail = (1,) * (v.dim() - 1)
    deviation = v - mean.view(-1, *tail)
    tolerance = (count * torch.finfo(torch.float64).eps * scale).view(-1, *tail)
    deviation = torch.where(valid & (deviation.abs() > tolerance), deviation, 0.0)
    dof = count - 1 if unbiased else count
    var = group_sum(per_row(deviation**2), group_ids) / dof.clamp(min=1)
    return deviation, var.sqrt()


def outcome_rewards(
    correct: Tensor,
    lengths: Tensor,
    *,
    correct_reward: float = CORRECT_REWARD,
    wrong_reward: float = WRONG_REWARD,
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


def outcome_location(rewards: Tensor, group_ids: Tensor, *, scale: str = "none", eps: float = EPS) -> Tensor:
    """``beta_i = R_i - mean_g R`` (``scale="none"``), or that over ``std_g + eps`` (``"group"``, sample std).

    Float32; exactly 0 for a group of equal rewards (see ``group_deviation``).
    """
    deviation, std = group_deviation(rewards, group_ids, unbiased=True)
    if scale == "none":
        return deviation.float()
    if scale == "group":
        return (deviation / (std + eps)).float()
    raise ValueError(f"outcome_scale must be 'none' or 'group', got {scale!r}")


def process_advantage(
    token_scores: Tensor,
    mask: Tensor,
    group_ids: Tensor,
    *,
    normalization: str = "fixed_prior",
    mu0: float = MU0,
    sigma0: float = SIGMA0,
    eps: float = EPS,
    shift: Tensor | None = None,
) -> Tensor:
    """Process advantage ``Z[B, T]`` from token scores ``P`` (plus a per-response ``shift``), 0 on padding.

    ``fixed_prior``: ``Z = (P - mu0) / sigma0``. ``group``: ``Z = (P - mean_g) / (std_g + eps)`` with
    the mean and population std over all valid tokens of all responses of the group (in float64;
    a group whose valid scores are all equal gets exactly 0, see ``group_deviation``).
    """
    scores = token_scores.float()
    offset = torch.zeros(scores.shape[0], device=scores.device) if shift is None else shift.float()
    if normalization == "fixed_prior":
        if sigma0 <= 0:
            raise ValueError(f"sigma0 must be > 0, got {sigma0}")
        z = torch.addcmul((offset - mu0 / sigma0)[:, None], scores, scores.new_tensor(1 / sigma0))
    elif normalization == "group":
        deviation, std = group_deviation(token_scores, group_ids, unbiased=False, mask=mask)
        z = (deviation / (std[:, None] + eps) + offset[:, None]).float()
    else:
        raise ValueError(f"normalization must be 'fixed_prior' or 'group', got {normalization!r}")
    return z.masked_fill_(~mask, 0.0)  # not a product: padding may hold NaN


def broadcast(per_response: Tensor, mask: Tensor) -> Tensor:
    """``A[i, t] = a_i`` on valid tokens, 0 on padding."""
    return torch.where(mask, per_response.float()[:, None], 0.0)


def mean_token_score(token_scores: Tensor, mask: Tensor, method: str) -> Tensor:
    """``mean_{t < L_i} P[i, t]`` over each response's own tokens, in float64 (exact for equal scores).

    An empty response is an error.
    """
    lengths = mask.sum(dim=1)
    if (lengths == 0).any():
        row = int((lengths == 0).nonzero()[0])
        raise ValueError(f"advantage method {method!r}: response {row} has no valid tokens")
    return torch.where(mask, token_scores.double(), 0.0).sum(dim=1) / lengths


# ----------------------------------------------------------------------------- methods


def beta_zero_token_share(beta: Tensor, mask: Tensor) -> float:
    """Share of valid tokens whose outcome location is 0, ``sum M[beta = 0] / sum M``: the all-same groups'.

    There PRPO's advantage is the PRM's alone (its blind spot), and GRPO's is 0.
    """
    return ((mask & (beta == 0)[:, None]).sum() / mask.sum().clamp(min=1)).item()


def sign_agreement(z: Tensor, beta: Tensor, mask: Tensor) -> float:
    """Share of the valid tokens with ``beta != 0`` where ``sign Z = sign beta``: how often the PRM agrees with the outcome."""
    signed = mask & (beta != 0)[:, None]
    agree = signed & (torch.sign(z) == torch.sign(beta)[:, None])
    return (agree.sum() / signed.sum().clamp(min=1)).item()


@register_advantage("grpo", uses_prm=False)
def grpo(inputs: AdvantageInputs, *, eps: float = EPS) -> AdvantageResult:
    """GRPO: ``A_i = (R_i - mean_g R) / (std_g R + eps)`` (sample std), broadcast to all tokens.

    Reports ``beta_zero_token_share`` (tokens of all-same groups, whose advantage is 0).
    """
    location = outcome_location(inputs.outcome_rewards, inputs.group_ids, scale="group", eps=eps)
    return AdvantageResult(broadcast(location, inputs.mask),
                           {"beta_zero_token_share": beta_zero_token_share(location, inputs.mask)})


@register_advantage("dr_grpo", uses_prm=False)
def dr_grpo(inputs: AdvantageInputs) -> AdvantageResult:
    """Dr. GRPO: ``A_i = R_i - mean_g R``, broadcast to all tokens. Reports ``beta_zero_token_share``."""
    location = outcome_location(inputs.outcome_rewards, inputs.group_ids)
    return AdvantageResult(broadcast(location, inputs.mask),
                           {"beta_zero_token_share": beta_zero_token_share(location, inputs.mask)})


@register_advantage("prpo", uses_prm=True)
def prpo(
    inputs: AdvantageInputs,
    *,
    normalization: str = "fixed_prior",
    mu0: float = MU0,
    sigma0: float = SIGMA0,
    outcome_scale: str = "none",
    eps: float = EPS,
) -> AdvantageResult:
    """PRPO (Ding et al., arXiv 2601.07182): ``A[i, t] = Z[i, t] + beta_i``; the outcome sets the location,
    the PRM moves credit between segments.

    ``Z``: `process_advantage` (``normalization``, ``mu0``, ``sigma0``, ``eps``); ``beta``:
    `outcome_location` (``outcome_scale``). Reports ``beta_zero_token_share`` and ``sign_agreement``.
    """
    mask, scores = inputs.mask, inputs.scores("prpo")
    beta = outcome_location(inputs.outcome_rewards, inputs.group_ids, scale=outcome_scale, eps=eps)
    z = process_advantage(scores, mask, inputs.group_ids, normalization=normalization, mu0=mu0, sigma0=sigma0, eps=eps)
    advantages = process_advantage(scores, mask, inputs.group_ids, normalization=normalization, mu0=mu0,
                                   sigma0=sigma0, eps=eps, shift=beta)
    return AdvantageResult(advantages, {"beta_zero_token_share": beta_zero_token_share(beta, mask),
                                        "sign_agreement": sign_agreement(z, beta, mask)})


@register_advantage("prpo_sp", uses_prm=True)
def prpo_sp(inputs: AdvantageInputs, *, normalization: str = "fixed_prior", mu0: float = MU0, sigma0: float = SIGMA0,
            outcome_scale: str = "none", eps: float = EPS, uniform_group_scale: float = 0.0) -> AdvantageResult:
    """Sign-preserving PRPO (this project's proposal, docs/algorithm.md s.9; not in the paper):
    ``A[i, t] = beta_i + clip(Z[i, t], -|beta_i|, |beta_i|)``.

    ``Z`` and ``beta`` are PRPO's (same options). The outcome sets every token's sign and the PRM only
    scales its size, between 0 and ``2 |beta_i|``: a PRM that praises a wrong response cannot push it up,
    nor fault a correct one down. In a group whose outcomes are all equal (every ``beta = 0``) the
    advantage is ``uniform_group_scale * Z`` (default 0: no signal there; 1: PRPO's process-only signal,
    for a PRM you trust where every response fails). Reports ``beta_zero_token_share``,
    ``sign_agreement`` and ``clip_share``: the share of tokens with ``beta != 0`` where the clip binds
    (``|Z| > |beta|``), how often the PRM was overruled.
    """
    mask, scores = inputs.mask, inputs.scores("prpo_sp")
    beta = outcome_location(inputs.outcome_rewards, inputs.group_ids, scale=outcome_scale, eps=eps)
    z = process_advantage(scores, mask, inputs.group_ids, normalization=normalization, mu0=mu0, sigma0=sigma0, eps=eps)
    bound = beta.abs()[:, None]
    inside = torch.clamp(z, min=-bound, max=bound)
    signed = mask & (beta != 0)[:, None]
    clipped = signed & (inside != z)  # |Z| > |beta|: the outcome overruled the PRM
    advantages = inside.add_(beta[:, None])
    all_same = group_sum((beta != 0).double(), inputs.group_ids) == 0
    if all_same.any():
        advantages = torch.where(all_same[:, None], uniform_group_scale * z, advantages)
    advantages.masked_fill_(~mask, 0.0)
    return AdvantageResult(advantages, {
        "beta_zero_token_share": beta_zero_token_share(beta, mask),
        "sign_agreement": sign_agreement(z, beta, mask),
        "clip_share": (clipped.sum() / signed.sum().clamp(min=1)).item(),
    })


@register_advantage("process_only", uses_prm=True)
def process_only(inputs: AdvantageInputs, *, normalization: str = "fixed_prior", mu0: float = MU0,
                 sigma0: float = SIGMA0, eps: float = EPS) -> AdvantageResult:
    """Process only: ``A[i, t] = Z[i, t]`` (beta = 0), the setting of Hypothesis 1 (docs/algorithm.md s.6)."""
    return AdvantageResult(process_advantage(
        inputs.scores("process_only"), inputs.mask, inputs.group_ids,
        normalization=normalization, mu0=mu0, sigma0=sigma0, eps=eps,
    ))


@register_advantage("prm_avg", uses_prm=True)
def prm_avg(inputs: AdvantageInputs, *, eps: float = EPS) -> AdvantageResult:
    """PRM-Avg: ``R'_i = R_i + mean_{t < L_i} P[i, t]``, then GRPO on ``R'``."""
    shaped = inputs.outcome_rewards.double() + mean_token_score(inputs.scores("prm_avg"), inputs.mask, "prm_avg")
    return AdvantageResult(broadcast(outcome_location(shaped, inputs.group_ids, scale="group", eps=eps), inputs.mask))


@register_advantage("pure", uses_prm=True)
def pure(
    inputs: AdvantageInputs,
    *,
    tau: float = 0.1,
    outcome_coef: float = 1.0,
    correct_reward: float = CORRECT_REWARD,
    wrong_reward: float = WRONG_REWARD,
    separator_ends: bool = False,
) -> AdvantageResult:
    """PURE min-form credit assignment (Cheng et al., arXiv 2504.15275), as its reference code runs it
    (CJReinforce/PURE, ``experience_maker.py``, ``--reward_baseline token``).

    Response i has steps (segments) j of ``n_ij`` tokens ending at token ``e_ij``, scores ``s_ij``:

    - step reward ``r_ij = 2 s_ij - 1``, min-form weight ``w_ij = softmax_j(-r_ij / tau)``,
      ``x_ij = w_ij r_ij`` at ``e_ij``;
    - process baseline (leave-one-out, per token): ``b_i = sum_{k in g(i), k != i} X_k / sum_{k != i} L_k``
      with ``X_k = sum_j x_kj`` and ``L_k`` the response length; ``b_i n_ij`` is subtracted at ``e_ij``;
    - outcome ``v_i = o_i - 1`` in {-1, 0} (``o_i`` = 1 if correct), read from R as
      ``v_i = (R_i - correct_reward) / (correct_reward - wrong_reward)`` (an overlong penalty scales
      along); ``outcome_coef * (v_i - mean_{k in g(i), k != i} v_k)`` is added at ``L_i - 1``;
    - ``A[i, t] = sum_{t' >= t} reward[i, t']`` (undiscounted return-to-go), 0 on padding.

    Leave-one-out means over an empty set (a group of one) are 0. Options: ``tau`` (0.1) the
    soft-min temperature; ``outcome_coef`` (1.0) the outcome's weight; ``correct_reward`` /
    ``wrong_reward`` (1, -1) the outcome values R is made of; ``separator_ends`` (False): every step
    but the last ends at a separator token (marker segmenter), where the advantage is 0 as the
    reference sets it at "\\n\\n"; entropy segments end at content tokens and nothing is zeroed.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if correct_reward <= wrong_reward:
        raise ValueError(f"correct_reward {correct_reward} must exceed wrong_reward {wrong_reward}")
    mask = inputs.mask
    lengths = response_lengths(mask)
    ids = inputs.segments("pure")
    next_ids = torch.full_like(ids, -1)
    next_ids[:, :-1] = ids[:, 1:]
    step_end = mask & (next_ids != ids)
    step_reward = 2 * inputs.scores("pure").double() - 1
    weights = torch.softmax(torch.where(step_end, -step_reward / tau, float("-inf")), dim=1).nan_to_num(0.0)
    x = torch.where(step_end, weights * step_reward, 0.0)
    safe_ids = torch.where(mask, ids, 0)
    n_steps = int(safe_ids.amax()) + 1 if mask.any() else 1
    step_tokens = torch.zeros(ids.shape[0], n_steps, dtype=torch.float64, device=ids.device)
    step_tokens = step_tokens.scatter_add_(1, safe_ids, mask.double()).gather(1, safe_ids)  # n_ij at each token

    def others(values: Tensor) -> Tensor:
        return group_sum(values, inputs.group_ids) - values

    other_tokens = others(lengths.double())
    baseline = torch.where(other_tokens > 0, others(x.sum(dim=1)) / other_tokens.clamp(min=1), 0.0)
    rewards = x - torch.where(step_end, baseline[:, None] * step_tokens, 0.0)
    outcome = (inputs.outcome_rewards.double() - correct_reward) / (correct_reward - wrong_reward)
    n_others = others(torch.ones_like(outcome))
    outcome = outcome - others(outcome) / n_others.clamp(min=1)
    rows = (lengths > 0).nonzero().flatten()
    rewards[rows, lengths[rows] - 1] += outcome_coef * outcome[rows]
    returns = rewards.flip(1).cumsum(dim=1).flip(1)
    zero = ~mask
    if separator_ends:
        positions = torch.arange(mask.shape[1], device=mask.device)
        zero |= step_end & (positions[None, :] != lengths[:, None] - 1)
    return AdvantageResult(returns.masked_fill(zero, 0.0).float())


# Presets: a method above run on the rollouts PROF's consistency filter keeps (Ye et al., arXiv 2509.03403;
# prpo.filters.consistency, keep G/2 by default). `prof` is the paper's PROF-GRPO; `prpo_prof` is PRPO + PROF.
register_advantage("prof", uses_prm=True, filter="consistency")(grpo)
register_advantage("prpo_prof", uses_prm=True, filter="consistency")(prpo)
# Sign-preserving PRPO with PRPO's process-only signal in all-same groups (docs/algorithm.md s.9, lambda = 1).
register_advantage("prpo_sp_uniform", uses_prm=True, fixed={"uniform_group_scale": 1.0})(prpo_sp)


# ----------------------------------------------------------------------------- entry point


def validate_inputs(inputs: AdvantageInputs) -> None:
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


def run_advantages(method: str, inputs: AdvantageInputs, **options: object) -> AdvantageResult:
    """The registered ``method``'s `AdvantageResult` on ``inputs``: ``A[B, T]`` (float32, 0 on padding), diagnostics."""
    ADVANTAGES.check_options(method, options)
    return _run(ADVANTAGES[method], inputs, options)


def _run(entry: AdvantageMethod, inputs: AdvantageInputs, options: Mapping[str, object]) -> AdvantageResult:
    validate_inputs(inputs)
    result = entry.fn(inputs, **dict(entry.fixed), **options)
    if isinstance(result, Tensor):  # a method with no diagnostics may return its advantages alone
        return AdvantageResult(result.float())
    return AdvantageResult(result.advantages.float(), result.metrics)


def advantages_on_kept(method: str, keep: Tensor, inputs: AdvantageInputs, **options: object) -> AdvantageResult:
    """``method`` run on the kept rows only (its group statistics and diagnostics too); ``A = 0`` on the dropped rows."""
    ADVANTAGES.check_options(method, options)
    return _on_kept(ADVANTAGES[method], keep, inputs, options)


def _on_kept(entry: AdvantageMethod, keep: Tensor, inputs: AdvantageInputs, options: Mapping[str, object]) -> AdvantageResult:
    if keep.all():  # the inputs as they are: no boolean-index copy of every [B, T] tensor
        return _run(entry, inputs, options)
    kept = _run(entry, inputs.rows(keep), options)
    advantages = torch.zeros(inputs.mask.shape, device=inputs.mask.device)
    advantages[keep] = kept.advantages
    return AdvantageResult(advantages, kept.metrics)


class RolloutFilter(Protocol):
    """A rollout filter bound to its options (`prpo.filters.bind_filter`): ``(inputs, correct[B]) -> result``
    with ``result.keep[B]`` and ``result.metrics(correct)``."""

    def __call__(self, inputs: AdvantageInputs, correct: Tensor) -> Any: ...


@dataclass(frozen=True)
class Estimator:
    """The advantage stage of a run, resolved once (`resolve_estimator`): the method's registry entry, its
    options, and the rollout filter that runs before it, if any.

    ``estimator(inputs, correct)``: the filter on the whole batch with the outcomes ``correct[B]``, then
    the method on the kept rows. Returns the method's result, ``keep[B]`` and the filter's metrics (all
    rows kept and no metrics without a filter).
    """

    method: AdvantageMethod
    options: Mapping[str, object]
    rollout_filter: RolloutFilter | None = None

    def __call__(self, inputs: AdvantageInputs, correct: Tensor | None, filter_inputs: AdvantageInputs | None = None,
                 ) -> tuple[AdvantageResult, Tensor, dict[str, float]]:
        """``filter_inputs``: the batch the filter ranks, if not ``inputs`` (the trainer's keeps every sampled token)."""
        keep = torch.ones(inputs.mask.shape[0], dtype=torch.bool, device=inputs.mask.device)
        metrics: dict[str, float] = {}
        if self.rollout_filter is not None:
            if correct is None:
                raise ValueError(f"method {self.method.name!r} filters rollouts: it needs the outcomes correct[B]")
            filtered = self.rollout_filter(inputs if filter_inputs is None else filter_inputs, correct)
            keep, metrics = filtered.keep, filtered.metrics(correct)
        return _on_kept(self.method, keep, inputs, self.options), keep, metrics


def resolve_estimator(method: str, options: Mapping[str, object], rollout_filter: RolloutFilter | None = None) -> Estimator:
    """The `Estimator` of ``method`` with ``options`` (checked now, once) and an optional bound filter."""
    ADVANTAGES.check_options(method, options)
    return Estimator(ADVANTAGES[method], dict(options), rollout_filter)


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
    """Token-level advantages ``A[B, T]`` (float32, 0 on padding) of the registered ``method``; see `run_advantages`."""
    inputs = AdvantageInputs(outcome_rewards, group_ids, mask.bool(), token_scores, segment_ids)
    return run_advantages(method, inputs, **options).advantages
