"""Exact paired tests of the benchmark, computed from the raw run files (no normal approximations).

- `sign_test`: two-sided exact sign test of paired differences (by seed): under no effect each nonzero
  difference is positive with probability 1/2; zeros are dropped.
- `mcnemar`: two-sided exact McNemar test of paired binary outcomes (by seed: ended collapsed or not;
  by problem: right or wrong), a binomial test on the discordant pairs ``b`` (only A) and ``c`` (only B).
- `ended_collapsed`: the benchmark's registered endpoint, judged at a run's final evaluation
  (docs/bench.md), apart from dips on the way (`prpo.bench.summary.collapse_step`).
- `compare`: every test of method A against method B on one level and PRM quality, paired by seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

ENDED_COLLAPSED_ACCURACY = 0.5  # of the level's start (the warm start's greedy accuracy)
ENDED_COLLAPSED_ANSWER_RATE = 0.5


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p of ``k`` successes in ``n`` fair trials: ``min(1, 2 P(X <= min(k, n - k)))``."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


def sign_test(differences: Sequence[float]) -> dict[str, float | int]:
    """Positive, negative and zero paired differences, and the two-sided exact p over the nonzero ones."""
    positive = sum(d > 0 for d in differences)
    negative = sum(d < 0 for d in differences)
    return {"positive": positive, "negative": negative, "zero": len(differences) - positive - negative,
            "p": binomial_two_sided(positive, positive + negative)}


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict[str, float | int]:
    """Paired outcomes ``a[i]``, ``b[i]``: discordant counts (only a, only b) and the two-sided exact p."""
    if len(a) != len(b):
        raise ValueError(f"McNemar pairs: {len(a)} outcomes against {len(b)}")
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    return {"only_a": only_a, "only_b": only_b, "pairs": len(a), "p": binomial_two_sided(only_a, only_a + only_b)}


def ended_collapsed(run: dict) -> bool:
    """At the run's final evaluation: greedy accuracy below half its step-0 accuracy, or answers in fewer
    than half of the responses."""
    start, last = run["eval"][0], run["eval"][-1]
    return (last["heldout/accuracy"] < ENDED_COLLAPSED_ACCURACY * start["heldout/accuracy"]
            or last["heldout/final_answer_rate"] < ENDED_COLLAPSED_ANSWER_RATE)


def final_correct(run: dict) -> list[bool] | None:
    """Per-problem greedy correctness at the final evaluation (None for runs recorded without it)."""
    correct = run["eval"][-1].get("heldout/correct")
    return None if correct is None else [bool(c) for c in correct]


def compare(group_a: list[dict], group_b: list[dict]) -> dict[str, dict]:
    """Method A against method B, runs paired by seed: the sign test of the final greedy accuracy, McNemar of
    "ended collapsed" by seed, and McNemar by problem of the final greedy answers (every seed's problems pooled)."""
    by_seed = {run["seed"]: run for run in group_b}
    pairs = [(run, by_seed[run["seed"]]) for run in group_a if run["seed"] in by_seed]
    out = {
        "seeds": {"n": len(pairs)},
        "final_greedy": sign_test([a["eval"][-1]["heldout/accuracy"] - b["eval"][-1]["heldout/accuracy"] for a, b in pairs]),
        "ended_collapsed": mcnemar([ended_collapsed(a) for a, _ in pairs], [ended_collapsed(b) for _, b in pairs]),
    }
    answers = [(final_correct(a), final_correct(b)) for a, b in pairs]
    if answers and all(x is not None and y is not None and len(x) == len(y) for x, y in answers):
        out["by_problem"] = mcnemar([c for x, _ in answers for c in x], [c for _, y in answers for c in y])
    return out
