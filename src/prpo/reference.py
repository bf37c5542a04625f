"""Straightforward per-row implementations of ALGORITHM.md sections 2 and 4, in plain Python.

They follow the text line by line, with no vectorisation, and exist to check the fast
implementations in ``prpo.segmentation`` and ``prpo.advantages`` (tests, benchmarks).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence


def entropy_segments_row(entropy: Sequence[float], length: int, k: int = 5, min_gap: int = 10) -> list[int]:
    """Segment ids of one response of ``length`` valid tokens (ALGORITHM.md s.2, steps 1-4)."""
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


def prpo_advantages_rows(
    rewards: Sequence[float],
    groups: Sequence[int],
    segment_scores: Sequence[Sequence[float]],
    segment_ids: Sequence[Sequence[int]],
    mu0: float = 0.5,
    sigma0: float = math.sqrt(1 / 24),
) -> list[list[float]]:
    """PRPO with the fixed prior: ``A[i, t] = (s[i, S[i, t]] - mu0) / sigma0 + R_i - mean_g R``, per row."""
    members: dict[int, list[float]] = defaultdict(list)
    for reward, group in zip(rewards, groups):
        members[group].append(reward)
    out = []
    for reward, group, scores, ids in zip(rewards, groups, segment_scores, segment_ids):
        beta = reward - sum(members[group]) / len(members[group])
        out.append([(scores[s] - mu0) / sigma0 + beta for s in ids])
    return out
