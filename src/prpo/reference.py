"""Straightforward per-row implementations of docs/algorithm.md sections 2, 4, 8 and 9, in plain Python.

They follow the text line by line, with no vectorisation, and exist to check the fast
implementations in ``prpo.segmentation``, ``prpo.advantages`` and ``prpo.filters`` (tests, benchmarks).
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from collections.abc import Sequence

from prpo.advantages import CORRECT_REWARD, MU0, SIGMA0, WRONG_REWARD
from prpo.segmentation import K, MIN_GAP


def entropy_segments_row(entropy: Sequence[float], length: int, k: int = K, min_gap: int = MIN_GAP) -> list[int]:
    """Segment ids of one response of ``length`` valid tokens (docs/algorithm.md s.2, steps 1-4)."""
    candidates = list(range(min_gap, length - min_gap + 1))
    accepted: list[int] = []
    for t in sorted(candidates, key=lambda t: (-entropy[t], t)):
        if len(accepted) == k:
            break
        if all(abs(t - b) >= min_gap for b in accepted):
            accepted.append(t)
    ids, segment = [], 0
    starts = set(accepted)
    for t in range(length):
        if t in starts:
            segment += 1
        ids.append(segment)
    return ids


def deviation_from_mean(value: float, group: Sequence[float]) -> float:
    """``value - mean(group)``, exactly 0 when within the mean's rounding error (``n * eps * max |v|``)."""
    deviation = value - math.fsum(group) / len(group)
    return 0.0 if abs(deviation) <= len(group) * sys.float_info.epsilon * max(map(abs, group)) else deviation


def outcome_locations(rewards: Sequence[float], groups: Sequence[int]) -> list[float]:
    """``beta_i = R_i - mean_g R`` of every row, with `deviation_from_mean`'s exact zeros."""
    members: dict[int, list[float]] = defaultdict(list)
    for reward, group in zip(rewards, groups):
        members[group].append(reward)
    return [deviation_from_mean(reward, members[group]) for reward, group in zip(rewards, groups)]


def prpo_advantages_rows(
    rewards: Sequence[float],
    groups: Sequence[int],
    segment_scores: Sequence[Sequence[float]],
    segment_ids: Sequence[Sequence[int]],
    mu0: float = MU0,
    sigma0: float = SIGMA0,
) -> list[list[float]]:
    """PRPO with the fixed prior: ``A[i, t] = (s[i, S[i, t]] - mu0) / sigma0 + R_i - mean_g R``, per row."""
    betas = outcome_locations(rewards, groups)
    return [[(scores[s] - mu0) / sigma0 + beta for s in ids] for beta, scores, ids in zip(betas, segment_scores, segment_ids)]


def prpo_sp_advantages_rows(rewards: Sequence[float], groups: Sequence[int], segment_scores: Sequence[Sequence[float]],
                            segment_ids: Sequence[Sequence[int]], mu0: float = MU0, sigma0: float = SIGMA0,
                            uniform_group_scale: float = 0.0) -> list[list[float]]:
    """Sign-preserving PRPO (docs/algorithm.md s.9), per row: ``A = beta + min(max(Z, -|beta|), |beta|)`` with PRPO's
    fixed-prior Z and beta; in a group where every beta is 0, ``A = uniform_group_scale * Z``."""
    betas = outcome_locations(rewards, groups)
    silent = {g for g in groups if all(b == 0 for b, h in zip(betas, groups) if h == g)}
    out = []
    for beta, group, scores, ids in zip(betas, groups, segment_scores, segment_ids):
        z = [(scores[s] - mu0) / sigma0 for s in ids]
        if group in silent:
            out.append([uniform_group_scale * v for v in z])
        else:
            out.append([beta + min(max(v, -abs(beta)), abs(beta)) for v in z])
    return out


def pure_advantages_rows(
    rewards: Sequence[float],
    groups: Sequence[int],
    segment_scores: Sequence[Sequence[float]],
    segment_ids: Sequence[Sequence[int]],
    tau: float = 0.1,
    outcome_coef: float = 1.0,
    correct_reward: float = CORRECT_REWARD,
    wrong_reward: float = WRONG_REWARD,
    separator_ends: bool = False,
) -> list[list[float]]:
    """PURE (arXiv 2504.15275) with the token baseline, per row: docs/algorithm.md s.4 line by line.

    ``x_j = softmax_j(-r / tau)_j r_j`` with ``r_j = 2 s_j - 1`` at the last token of step j, minus
    ``b_i n_j`` (``b_i`` = the other group members' summed x over their summed lengths); the outcome
    ``v_i = (R_i - correct) / (correct - wrong)`` minus the others' mean v, times ``outcome_coef``, at
    the last token; advantage = return-to-go, 0 at separator step ends when ``separator_ends``.
    """
    rows = []
    for scores, ids in zip(segment_scores, segment_ids):
        r = [2 * s - 1 for s in scores]
        top = max(-v / tau for v in r)
        e = [math.exp(-v / tau - top) for v in r]
        rows.append({"x": [ej / sum(e) * v for ej, v in zip(e, r)], "n": [ids.count(j) for j in range(len(scores))],
                     "ends": [max(t for t, s in enumerate(ids) if s == j) for j in range(len(scores))]})
    v = [(reward - correct_reward) / (correct_reward - wrong_reward) for reward in rewards]
    out = []
    for i, (row, ids) in enumerate(zip(rows, segment_ids)):
        mates = [k for k, g in enumerate(groups) if g == groups[i] and k != i]
        other_tokens = sum(len(segment_ids[k]) for k in mates)
        b = sum(sum(rows[k]["x"]) for k in mates) / other_tokens if other_tokens else 0.0
        step = [0.0] * len(ids)
        for x, n, end in zip(row["x"], row["n"], row["ends"]):
            step[end] += x - b * n
        if ids:
            step[-1] += outcome_coef * (v[i] - (sum(v[k] for k in mates) / len(mates) if mates else 0.0))
        advantages = [sum(step[t:]) for t in range(len(ids))]
        if separator_ends:
            for end in row["ends"][:-1]:
                advantages[end] = 0.0
        out.append(advantages)
    return out


def consistency_filter_rows(
    correct: Sequence[bool],
    groups: Sequence[int],
    segment_scores: Sequence[Sequence[float]],
    keep: int,
    step_penalty: float = 0.0,
    min_steps: int = 2,
    max_steps: int = 30,
) -> list[bool]:
    """PROF's consistency filter (docs/algorithm.md s.8), group by group: which rollouts are kept."""
    consistency = []
    for ok, scores in zip(correct, segment_scores):
        c = sum((2 * s - 1) * (1 if ok else -1) for s in scores) / len(scores)
        if len(scores) < min_steps or len(scores) > max_steps:
            c -= step_penalty
        consistency.append(c)
    members: dict[int, list[int]] = defaultdict(list)
    for row, group in enumerate(groups):
        members[group].append(row)
    kept = [True] * len(groups)
    for rows in members.values():
        remove = max(len(rows) - keep, 0)  # a group of keep or fewer rollouts is kept whole
        right = [i for i in rows if correct[i]]
        wrong = [i for i in rows if not correct[i]]
        wanted = min(remove, round((len(right) - len(wrong) + remove) / 2))  # Python's round: half to even
        from_right = min(wanted, len(right)) if wanted > 0 else 0
        from_wrong = min(remove - from_right, len(wrong))
        for members_of, count in ((right, from_right), (wrong, from_wrong)):
            for i in sorted(members_of, key=lambda i: consistency[i])[:count]:  # stable: earlier row first on ties
                kept[i] = False
    return kept
