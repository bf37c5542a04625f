"""The LRU-cached PRM wrapper: same scores, counted hits, prefix keys, eviction."""

import pytest

from prpo.prm import ArithmeticPRM, CachedPRM, PRMError, load_prm

PROBLEM = "Tom has 3 boxes with 4 apples each. He eats 2 apples. How many apples are left?"
RIGHT = ["3 * 4 = 12\n", "12 - 2 = 10\n", "Answer: 10"]
WRONG = ["3 * 4 = 12\n", "12 - 2 = 11\n", "Answer: 11"]


class CountingPRM(ArithmeticPRM):
    """The arithmetic PRM, recording how many responses each call scored."""

    def __init__(self, scores=None):
        super().__init__()
        self.calls: list[int] = []
        self.fixed = scores

    def score(self, problems, segments):
        self.calls.append(len(segments))
        return self.fixed if self.fixed is not None else super().score(problems, segments)


def test_cache_returns_the_inner_scores_and_counts_hits():
    inner = CountingPRM()
    prm = CachedPRM(CachedPRM.Config(), inner=inner)
    expected = ArithmeticPRM().score([PROBLEM] * 2, [RIGHT, WRONG])
    assert prm.score([PROBLEM] * 2, [RIGHT, WRONG]) == expected
    assert (prm.hits, prm.misses, inner.calls) == (0, 6, [2])
    assert prm.score([PROBLEM] * 2, [WRONG, RIGHT]) == expected[::-1]
    assert (prm.hits, prm.misses, inner.calls) == (6, 6, [2])
    assert prm.hit_rate == 0.5


def test_duplicates_in_one_batch_are_scored_once():
    inner = CountingPRM()
    prm = CachedPRM(CachedPRM.Config(), inner=inner)
    group = [RIGHT, WRONG, RIGHT, RIGHT, WRONG, []]
    scores = prm.score([PROBLEM] * len(group), group)
    assert scores == ArithmeticPRM().score([PROBLEM] * len(group), group)
    assert inner.calls == [2] and (prm.hits, prm.misses) == (9, 6)


def test_keys_are_prefixes_and_problem_and_prm_dependent():
    inner = CountingPRM()
    prm = CachedPRM(CachedPRM.Config(), inner=inner)
    prm.score([PROBLEM], [RIGHT])
    # A response that extends a cached one still needs scoring: its last segment is new.
    prm.score([PROBLEM], [RIGHT + ["Done."]])
    # The same segments under another problem are another key.
    prm.score(["Another problem with 3 and 4 and 2."], [RIGHT])
    assert inner.calls == [1, 1, 1]
    # A strict prefix of a cached response differs in its last segment (nothing follows it).
    prm.score([PROBLEM], [RIGHT[:2]])
    assert inner.calls == [1, 1, 1, 1]
    other = CachedPRM(CachedPRM.Config(), inner=ArithmeticPRM(ArithmeticPRM.Config(right=0.8)))
    assert other.score([PROBLEM], [RIGHT]) == [[0.8, 0.8, 0.8]]


def test_lru_eviction_and_clear():
    inner = CountingPRM()
    prm = CachedPRM(CachedPRM.Config(max_entries=3), inner=inner)
    prm.score([PROBLEM], [RIGHT])
    prm.score([PROBLEM], [RIGHT])  # hit: RIGHT is the most recent
    prm.score([PROBLEM], [WRONG])  # evicts RIGHT
    assert len(prm) == 3
    prm.score([PROBLEM], [RIGHT])
    assert inner.calls == [1, 1, 1]
    prm.clear()
    assert (len(prm), prm.hits, prm.misses, prm.hit_rate) == (0, 0, 0, 0.0)


def test_invalid_inner_scores_are_not_cached():
    prm = CachedPRM(CachedPRM.Config(), inner=CountingPRM(scores=[[0.5, float("nan"), 0.5]]))
    with pytest.raises(PRMError, match="response 0, segment 1 is nan"):
        prm.score([PROBLEM], [RIGHT])
    assert len(prm) == 0


def test_loaded_from_a_config_with_an_inner_spec():
    prm = load_prm({"type": "cached", "prm": {"type": "arithmetic", "wrong": 0.0}, "max_entries": 10})
    assert isinstance(prm.inner, ArithmeticPRM) and prm.config.max_entries == 10
    assert prm.score([PROBLEM], [WRONG]) == [[0.9, 0.0, 0.0]]
    with pytest.raises(PRMError, match="max_entries = 0 must be positive"):
        load_prm({"type": "cached", "max_entries": 0})
    with pytest.raises(PRMError, match="unknown PRM type 'nope'"):
        load_prm({"type": "cached", "prm": "nope"})
