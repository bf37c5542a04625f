"""The benchmark PRM on a task family's step checker: the PRM type ``bench_family``.

``load_prm({"type": "bench_family", "family": "MODULE:NAME", "quality": "noisy"})`` loads the family
(`prpo.bench.family.load_family`) and judges each segment with its ``evidence`` checker; what a bench
run records as its PRM, registered whenever `prpo.prm` is imported.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from prpo.grading import extract_final_answer
from prpo.prm.base import NO_EVIDENCE, PRM_REGISTRY, RIGHT, WRONG, PRMType, check_inputs
from prpo.bench.family import TaskFamily, load_family

NOISE = 0.15  # the noisy PRM's flip probability, the bench presets' default

QUALITIES = ("clean", "noisy", "biased")


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

    @dataclass(frozen=True)
    class Config:
        """The PRM type ``bench_family`` (what a bench run records): the family by its ``--family`` spec."""

        family: str  # MODULE:NAME or path/to/file.py:NAME (`load_family`)
        quality: str = "clean"
        noise: float = NOISE
        seed: int = 0
        right: float = RIGHT
        wrong: float = WRONG
        no_evidence: float = NO_EVIDENCE

        def __post_init__(self) -> None:
            _check_quality(self.quality)

    def __init__(self, family: TaskFamily, quality: str = "clean", noise: float = NOISE, seed: int = 0,
                 right: float = RIGHT, wrong: float = WRONG, no_evidence: float = NO_EVIDENCE):
        _check_quality(quality)
        self.family, self.quality, self.noise, self.seed = family, quality, noise, seed
        self.right, self.wrong, self.no_evidence = right, wrong, no_evidence

    @classmethod
    def from_config(cls, config: Config) -> FamilyPRM:
        """``load_prm({"type": "bench_family", "family": ..., ...})``."""
        return cls(load_family(config.family), config.quality, config.noise, config.seed,
                   config.right, config.wrong, config.no_evidence)

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


def _check_quality(quality: str) -> None:
    if quality not in QUALITIES:
        raise ValueError(f"PRM quality {quality!r}: choose one of {', '.join(QUALITIES)}")


PRM_REGISTRY.add(PRMType("bench_family", FamilyPRM.from_config, FamilyPRM.Config))
