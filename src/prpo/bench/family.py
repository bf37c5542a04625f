"""Task families: the plug-in point of `prpo bench --family MODULE:NAME`, and the PRM built on a family's checker.

A family is any object with these members (see `TaskFamily`; `prpo.bench.data.ARITHMETIC` is one):

- ``name``: a short name for the results;
- ``levels``: difficulty levels, easiest first (`Level`: a name, the steps per problem, the token budget);
- ``task(split, n, level, seed)``: a `prpo.tasks.Task` of ``n`` distinct problems of ``split``
  (``"train"`` or ``"test"``, never sharing a problem), each ``Example.meta["solution"]`` the reference
  solution, one step per line, ending with an ``Answer: X`` line;
- ``warm_solution(example, rng)``: a solution of ``example`` carrying the family's systematic errors,
  for the supervised warm start (later lines carry on from a wrong value, so its answer is wrong too);
- ``evidence(problem, text, final)``: the step checker the benchmark PRM uses on a response prefix
  ``text``: ``(wrong, right)``, whether some step so far is wrong, and how many steps so far are
  checkably right. ``final``: ``text`` is the whole response (a step touching the end of a non-final
  prefix may still go on). A missing answer line is the PRM's business, not the checker's.

A researcher's own structured task is one ``.py`` file holding such an object:
``prpo bench --family path/to/my_family.py:FAMILY``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from prpo.grading import extract_final_answer
from prpo.prm.base import check_inputs
from prpo.tasks import Example, Task

QUALITIES = ("clean", "noisy", "biased")


@dataclass(frozen=True)
class Level:
    """One difficulty level: problems of ``steps`` (low, high) steps, responses of at most ``max_completion_length`` tokens."""

    name: str
    steps: tuple[int, int]
    max_completion_length: int


@runtime_checkable
class TaskFamily(Protocol):
    """Problems with reference step solutions, warm-start solutions with systematic errors, and a step checker."""

    name: str
    levels: Sequence[Level]

    def task(self, split: str, n: int, level: Level, seed: int) -> Task: ...

    def warm_solution(self, example: Example, rng: random.Random) -> str: ...

    def evidence(self, problem: str, text: str, final: bool) -> tuple[bool, int]: ...


def load_family(spec: str) -> TaskFamily:
    """The family named by ``MODULE:NAME`` (an importable module) or ``path/to/file.py:NAME``."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--family {spec!r}: expected MODULE:NAME or path/to/file.py:NAME")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise ValueError(f"--family {spec!r}: no file {path}")
        name = f"prpo_bench_family_{hashlib.blake2b(str(path.resolve()).encode(), digest_size=6).hexdigest()}"
        module = sys.modules.get(name)
        if module is None:
            loader = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(loader)
            sys.modules[name] = module
            loader.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    family = getattr(module, attr, None)
    if family is None:
        raise ValueError(f"--family {spec!r}: {module_name} has no attribute {attr!r}")
    missing = [m for m in ("name", "levels", "task", "warm_solution", "evidence") if not hasattr(family, m)]
    if missing:
        raise ValueError(f"--family {spec!r}: {attr} lacks {', '.join(missing)} (see prpo.bench.family.TaskFamily)")
    if not family.levels:
        raise ValueError(f"--family {spec!r}: {attr}.levels is empty; give at least one Level")
    return family


def level_named(family: TaskFamily, name: str) -> Level:
    """The family's level called ``name``; the error lists the known ones."""
    for level in family.levels:
        if level.name == name:
            return level
    raise ValueError(f"family {family.name!r} has no level {name!r}; levels: {', '.join(l.name for l in family.levels)}")


class FamilyPRM:
    """The benchmark PRM: a family's step checker, as a clean, noisy or biased process reward model.

    Verdict of segment j from the family's checker on the prefix up to it (`TaskFamily.evidence`):
    wrong if some step so far is wrong, right if segment j completes a right step, else no evidence
    (text that claims nothing new is not paid like a verified step). Then by ``quality``:

    - ``clean``: that verdict; a whole response that ends without an answer line is wrong;
    - ``noisy``: the clean verdict, right <-> wrong flipped with probability ``noise``, drawn from a
      hash of (seed, problem, prefix) so one input always gets one score, like a learned PRM that errs;
    - ``biased``: systematic errors of the kind real PRMs make: a prefix that claims nothing
      checkable (a line with no step in it, ``Ans9 = 10``) is rated right, and a response that stops
      without an answer is rated on its lines alone (correct lines, then nothing, rate as good).

    Scores: ``right`` / ``wrong`` / ``no_evidence`` (0.9 / 0.1 / 0.5; with the fixed prior
    ``Z = (s - 0.5) / 0.204`` these give +1.96 / -1.96 / 0).
    """

    def __init__(self, family: TaskFamily, quality: str = "clean", noise: float = 0.15, seed: int = 0,
                 right: float = 0.9, wrong: float = 0.1, no_evidence: float = 0.5):
        if quality not in QUALITIES:
            raise ValueError(f"PRM quality {quality!r}: choose one of {', '.join(QUALITIES)}")
        self.family, self.quality, self.noise, self.seed = family, quality, noise, seed
        self.right, self.wrong, self.no_evidence = right, wrong, no_evidence

    @property
    def prm_id(self) -> str:
        noise = self.noise if self.quality == "noisy" else 0.0
        return f"bench_family(family={self.family.name!r}, quality={self.quality!r}, noise={noise!r}, seed={self.seed!r})"

    def score(self, problems: list[str], segments: list[list[str]]) -> list[list[float]]:
        check_inputs(problems, segments)
        return [self.score_response(problem, response) for problem, response in zip(problems, segments)]

    def score_response(self, problem: str, segments: list[str]) -> list[float]:
        """One score per segment: the verdict on the text up to and including it."""
        scores, prefix, rights = [], "", 0
        for j, segment in enumerate(segments):
            prefix += segment
            final = j == len(segments) - 1
            wrong, now = self.family.evidence(problem, prefix, final)
            verdict = False if wrong else True if now > rights else None
            rights = now
            if self.quality == "biased":
                scores.append(self.wrong if verdict is False else self.right)
                continue
            if final and extract_final_answer(prefix) is None:
                verdict = False  # stopped without an answer
            scores.append(self._score(verdict, problem, prefix))
        return scores

    def _score(self, verdict: bool | None, problem: str, prefix: str) -> float:
        if verdict is None:
            return self.no_evidence
        if self.quality == "noisy":
            digest = hashlib.blake2b(f"{self.seed}\0{problem}\0{prefix}".encode(), digest_size=8).digest()
            if int.from_bytes(digest, "big") / 2**64 < self.noise:
                verdict = not verdict
        return self.right if verdict else self.wrong
