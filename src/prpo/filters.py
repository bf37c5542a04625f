"""Rollout filters: a stage between PRM scoring and the advantages that keeps some rollouts of each group.

A filter maps the batch the advantage method sees (`AdvantageInputs`: rewards ``R[B]``, prompt ids
``group_ids[B]``, the response mask ``M[B, T]`` and, for PRM filters, token scores ``P[B, T]`` and segment
ids ``S[B, T]``) and the outcomes ``correct[B]`` (bool: the grader's verdicts) to ``keep[B]``. The
advantage method then runs on the kept rollouts only (`prpo.advantages.advantages_on_kept`); the
dropped ones get advantage 0 and leave the loss (the trainer masks them). Filters live in a
registry, like the advantage methods:

    @register_filter("my_filter", uses_prm=False)
    def my_filter(inputs: AdvantageInputs, correct: Tensor, *, keep: int | None = None) -> FilterResult: ...

    apply_filter("consistency", AdvantageInputs(R, group_ids, M, P, S), correct, keep=4)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from prpo.advantages import AdvantageInputs, group_index, validate_inputs
from prpo.registry import Registry, keyword_options


@dataclass(frozen=True)
class FilterResult:
    """``keep[B]`` (bool) and per-rollout diagnostics ``scores[name][B]`` the filter ranked by."""

    keep: Tensor
    scores: dict[str, Tensor]

    def metrics(self, correct: Tensor) -> dict[str, float]:
        """Kept fraction, kept correct / wrong counts, and each score's mean over kept and dropped rollouts.

        A mean over an empty set (nothing dropped) is left out rather than logged as NaN.
        """
        correct = correct.bool()
        out = {
            "filter/kept_frac": self.keep.float().mean().item(),
            "filter/kept_correct": float((self.keep & correct).sum()),
            "filter/kept_wrong": float((self.keep & ~correct).sum()),
        }
        for name, values in self.scores.items():
            for label, rows in (("kept", self.keep), ("dropped", ~self.keep)):
                if rows.any():
                    out[f"filter/{name}_{label}"] = values[rows].float().mean().item()
        return out


@dataclass(frozen=True)
class RolloutFilter:
    """A registered filter: the function and whether it consumes PRM scores."""

    name: str
    fn: Callable[..., FilterResult]
    uses_prm: bool

    def options(self) -> dict[str, object]:
        """Keyword options the filter takes, with their defaults."""
        return keyword_options(self.fn)


FILTERS: Registry[RolloutFilter] = Registry("filter")


def register_filter(name: str, *, uses_prm: bool) -> Callable[[Callable[..., FilterResult]], Callable[..., FilterResult]]:
    """Register ``fn(inputs: AdvantageInputs, correct: Tensor, *, **options) -> FilterResult`` under ``name``."""

    def decorator(fn: Callable[..., FilterResult]) -> Callable[..., FilterResult]:
        FILTERS.add(RolloutFilter(name, fn, uses_prm))
        return fn

    return decorator


def get_filter(name: str) -> RolloutFilter:
    """The registered filter ``name``; a clear error listing the known ones otherwise."""
    return FILTERS.lookup(name)


# ----------------------------------------------------------------------------- helpers


def step_scores(token_scores: Tensor, segment_ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per response: ``sum_j s_ij`` over its segments (float64) and the segment count ``J_i``.

    ``s_ij`` is read at the first token of segment j (every token of a segment carries its score).
    """
    starts = mask.clone()
    starts[:, 1:] &= segment_ids[:, 1:] != segment_ids[:, :-1]
    total = torch.where(starts, token_scores.double(), 0.0).sum(dim=1)
    return total, starts.sum(dim=1)


def removal_counts(n_correct: Tensor, n_wrong: Tensor, remove: Tensor) -> tuple[Tensor, Tensor]:
    """PROF's split of ``r`` removals between the correct and the wrong rollouts of each group.

    ``r+ = min(r, round((n+ - n- + r) / 2))`` (half to even), removed from the correct ones but never
    more than ``n+`` nor fewer than 0; the other ``r - r+`` come from the wrong ones (at most ``n-``).
    """
    wanted = torch.minimum(remove, torch.round((n_correct - n_wrong + remove) / 2))  # torch.round: half to even
    from_correct = torch.minimum(wanted.clamp(min=0), n_correct)
    from_wrong = torch.minimum(remove - from_correct, n_wrong)
    return from_correct, from_wrong


def lowest_in_block(values: Tensor, block: Tensor, quota: Tensor) -> Tensor:
    """``True`` for the ``quota[b]`` lowest ``values`` of each block ``b``; ties: the earlier row first."""
    order = torch.sort(values, stable=True).indices
    order = order[torch.sort(block[order], stable=True).indices]
    counts = torch.bincount(block, minlength=quota.numel())
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(block)
    rank[order] = torch.arange(block.numel(), device=block.device) - starts[block[order]]
    return rank < quota[block]


# ----------------------------------------------------------------------------- filters


@register_filter("consistency", uses_prm=True)
def consistency(
    inputs: AdvantageInputs,
    correct: Tensor,
    *,
    keep: int | None = None,
    step_penalty: float = 0.0,
    min_steps: int = 2,
    max_steps: int = 30,
) -> FilterResult:
    """PROF's process consistency filter (Ye et al., arXiv 2509.03403), docs/algorithm.md section 8.

    Consistency of response i with step scores ``s_i1..s_iJ`` and outcome ``o_i`` (1 correct, 0 wrong):
    ``c_i = mean_j (2 s_ij - 1) (2 o_i - 1)``, minus ``step_penalty`` when ``J < min_steps`` or
    ``J > max_steps``. Each group of G rollouts drops ``r = G - keep``: with ``n+`` correct and ``n-``
    wrong, ``r+ = min(r, round((n+ - n- + r) / 2))`` (half to even) correct ones are dropped, lowest
    ``c`` first and at most ``n+`` (none when ``r+ <= 0``), the rest from the wrong ones, lowest ``c``
    first. Ties in ``c``: the earlier rollout of the group goes first (a stable sort, as the authors').

    Options: ``keep`` rollouts per group (default ``max(1, G // 2)``: 4 of 8 as in the paper; a group
    of ``keep`` or fewer is kept whole); ``step_penalty`` (default 0: off), ``min_steps`` (2) and
    ``max_steps`` (30) of the step-count penalty. Diagnostics: ``consistency`` ``c_i`` and
    ``process_score`` ``mean_j s_ij``.
    """
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"filter 'consistency': keep must be an integer >= 1, got {keep!r}")
    if inputs.token_scores is None or inputs.segment_ids is None:
        raise ValueError("filter 'consistency' needs token_scores and segment_ids (a PRM score per segment)")
    total, steps = step_scores(inputs.token_scores, inputs.segment_ids, inputs.mask)
    if (steps == 0).any():
        raise ValueError(f"filter 'consistency': response {int((steps == 0).nonzero()[0])} has no valid tokens")
    process = total / steps
    sign = torch.where(correct, 1.0, -1.0).double()
    score = (2 * process - 1) * sign
    score = score - step_penalty * ((steps < min_steps) | (steps > max_steps)).double()

    index, n_groups = group_index(inputs.group_ids)
    size = torch.bincount(index, minlength=n_groups)
    n_correct = torch.bincount(index, weights=correct.double(), minlength=n_groups)
    kept = (size // 2).clamp(min=1) if keep is None else torch.full_like(size, keep).clamp(max=size)
    from_correct, from_wrong = removal_counts(n_correct, size.double() - n_correct, (size - kept).double())
    quota = torch.stack([from_wrong, from_correct], dim=1).flatten().long()  # block 2g: wrong, 2g + 1: correct
    dropped = lowest_in_block(score, 2 * index + correct.long(), quota)
    return FilterResult(~dropped, {"consistency": score.float(), "process_score": process.float()})


# ----------------------------------------------------------------------------- entry point


def apply_filter(name: str, inputs: AdvantageInputs, correct: Tensor, **options: object) -> FilterResult:
    """``keep[B]`` of the registered filter ``name`` and its diagnostics, given the outcomes ``correct[B]`` (bool)."""
    return bind_filter(name, options)(inputs, correct)


def bind_filter(name: str, options: dict[str, object]) -> Callable[[AdvantageInputs, Tensor], FilterResult]:
    """The registered filter ``name`` with its ``options`` checked once: ``(inputs, correct) -> FilterResult``."""
    FILTERS.check_options(name, options)
    fn = FILTERS[name].fn

    def run(inputs: AdvantageInputs, correct: Tensor) -> FilterResult:
        validate_inputs(inputs)
        if correct.dtype != torch.bool or correct.shape != inputs.outcome_rewards.shape:
            raise ValueError(f"filter {name!r} takes the outcomes as a bool tensor of shape "
                             f"{tuple(inputs.outcome_rewards.shape)}, got {correct.dtype} {tuple(correct.shape)}")
        return fn(inputs, correct, **options)

    return run
