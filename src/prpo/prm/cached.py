"""An LRU cache around any PRM, keyed by (PRM id, problem, segment prefix), with hit-rate metrics.

The score of segment j depends on the problem and on segments 0..j, so the key of that score is
`(prm_id, problem, segments[:j + 1], j is the last segment)`. The last flag is there because a
verifier may judge the end of the text differently when nothing follows (the arithmetic PRM
holds an equation cut at a segment boundary until it sees the next character). A response is
served from the cache when all its keys are there; otherwise the whole response is scored (a
PRM scores a response in one pass) and its keys stored. Identical responses in one batch are
scored once. `hits` and `misses` count segment scores.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prpo.prm.base import ProcessRewardModel, check_inputs, load_prm, register_prm, validate_scores

Key = tuple[str, str, tuple[str, ...], bool]


@register_prm("cached")
class CachedPRM:
    """Wraps `inner` (or the PRM built from `config.prm`) with a thread-safe LRU cache of scores."""

    @dataclass(frozen=True)
    class Config:
        prm: str | Mapping[str, Any] = "arithmetic"
        max_entries: int = 1_000_000

        def __post_init__(self) -> None:
            if self.max_entries < 1:
                raise ValueError(f"max_entries = {self.max_entries} must be positive")

    def __init__(self, config: Config | None = None, inner: ProcessRewardModel | None = None):
        self.config = config or self.Config()
        self.inner = inner if inner is not None else load_prm(self.config.prm)
        self.hits = 0
        self.misses = 0
        self._cache: OrderedDict[Key, float] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def prm_id(self) -> str:
        """The inner PRM's id: a cache does not change scores."""
        return self.inner.prm_id

    @property
    def hit_rate(self) -> float:
        """Fraction of segment scores served from the cache (0.0 before any lookup)."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        with self._lock:
            self._cache.clear()
            self.hits = self.misses = 0

    def score(self, problems: list[str], segments: list[list[str]]) -> list[list[float]]:
        check_inputs(problems, segments)
        prm_id = self.inner.prm_id
        scores: list[list[float]] = [[] for _ in segments]
        todo: dict[tuple[str, tuple[str, ...]], list[int]] = {}
        with self._lock:
            for i, (problem, response) in enumerate(zip(problems, segments)):
                keys = _keys(prm_id, problem, response)
                if all(key in self._cache for key in keys):
                    scores[i] = [self._cache[key] for key in keys]
                    for key in keys:
                        self._cache.move_to_end(key)
                    self.hits += len(keys)
                else:
                    todo.setdefault((problem, tuple(response)), []).append(i)
        if todo:
            unique = list(todo)
            fresh = validate_scores(self.inner.score([p for p, _ in unique], [list(s) for _, s in unique]),
                                    [s for _, s in unique])
            with self._lock:
                for (problem, response), row in zip(unique, fresh):
                    first, *duplicates = todo[(problem, response)]
                    self.misses += len(row)
                    self.hits += len(row) * len(duplicates)
                    for i in (first, *duplicates):
                        scores[i] = list(row)
                    for key, value in zip(_keys(prm_id, problem, response), row):
                        self._cache[key] = value
                        self._cache.move_to_end(key)
                while len(self._cache) > self.config.max_entries:
                    self._cache.popitem(last=False)
        return scores


def _keys(prm_id: str, problem: str, response) -> list[Key]:
    response = tuple(response)
    return [(prm_id, problem, response[: j + 1], j == len(response) - 1) for j in range(len(response))]
