"""Exact paired tests of the benchmark, computed from the raw run files (no normal approximations).

- `sign_test`: two-sided exact sign test of paired differences (by seed): under no effect each nonzero
  difference is positive with probability 1/2; zeros are dropped.
- `mcnemar`: two-sided exact McNemar test of paired binary outcomes (by seed: ended collapsed or not;
  by problem: right or wrong), a binomial test on the discordant pairs ``b`` (only A) and ``c`` (only B).
- `ended_collapsed`: the benchmark's registered endpoint, judged at a run's final evaluation
  (docs/bench.md), apart from dips on the way (`prpo.bench.summary.collapse_step`).
- `mean_ci`, `wilson`: 95% intervals of a mean over seeds (Student t) and of a count (Wilson score).
- `compare`: every test of method A against method B on one level and PRM quality, paired by seed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from prpo.evaluation.evaluate import accuracy_interval

ENDED_COLLAPSED_ACCURACY = 0.5  # of the level's start (the warm start's greedy accuracy)
ENDED_COLLAPSED_ANSWER_RATE = 0.5

# Two-sided 95% quantiles of Student's t by degrees of freedom (normal beyond the table).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t95(df: int) -> float:
    """Student-t 97.5% quantile for ``df`` degrees of freedom (the nearest tabulated df at or below)."""
    if df < 1:
        return math.nan
    return _T95[max(d for d in _T95 if d <= df)] if df <= 30 else 1.96


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% t-interval over seeds: ``t95(n - 1) * sd / sqrt(n)`` (NaN for one seed)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def wilson(hits: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``hits / n``, as (low, high); NaN for n = 0."""
    return (math.nan, math.nan) if n == 0 else accuracy_interval(hits, n)


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


def established(differences: Sequence[float]) -> bool:
    """The registered verdict on a paired difference (docs/bench.md): every seed's difference has one
    sign (none zero) and the 95% t-interval of their mean excludes 0."""
    mean, half = mean_ci(differences) if len(differences) > 1 else (math.nan, math.nan)
    one_sign = all(d > 0 for d in differences) or all(d < 0 for d in differences)
    return bool(differences) and one_sign and abs(mean) > half


def compare(group_a: list[dict], group_b: list[dict]) -> dict[str, dict]:
    """Method A against method B, runs paired by seed: the final greedy difference A - B (mean, 95%
    t-interval, sign test, `established`), McNemar of "ended collapsed" by seed, and McNemar by problem of
    the final greedy answers (every seed's problems pooled)."""
    by_seed = {run["seed"]: run for run in group_b}
    pairs = [(run, by_seed[run["seed"]]) for run in group_a if run["seed"] in by_seed]
    differences = [a["eval"][-1]["heldout/accuracy"] - b["eval"][-1]["heldout/accuracy"] for a, b in pairs]
    mean, half = mean_ci(differences) if differences else (math.nan, math.nan)
    out = {
        "seeds": {"n": len(pairs)},
        "final_greedy": {**sign_test(differences), "mean": mean, "half_width": half,
                         "established": established(differences)},
        "ended_collapsed": mcnemar([ended_collapsed(a) for a, _ in pairs], [ended_collapsed(b) for _, b in pairs]),
    }
    answers = [(final_correct(a), final_correct(b)) for a, b in pairs]
    if answers and all(x is not None and y is not None and len(x) == len(y) for x, y in answers):
        out["by_problem"] = mcnemar([c for x, _ in answers for c in x], [c for _, y in answers for c in y])
    return out
