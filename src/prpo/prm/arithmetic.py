"""A rule-based PRM for arithmetic reasoning: checks each step against the problem's reference chain.

Two judgements (`mode`):

- `reference` (default): the verifier recovers the problem's reference solution, a chain of steps
  each computing a value from earlier ones, by reading the problem text with the registered
  reference parsers (`REFERENCE_PARSERS`: the word problems of `prpo.tasks.arithmetic` and the
  bench's terse `3 + 4 then * 2`; a family plugs in its own with `register_reference_parser`).
  Values established so far start as the numbers of the problem, the constants and the chain's
  given numbers. In the order they are written:
  - an equation `e_1 = e_2 (= ...)` (an operator on some side) must be true; each number it uses
    must be established (or a claim, below); each operation in it must compute the result of a
    reference step whose inputs are all established (any order the chain allows, commutativity
    and `11 + 11` for `11 * 2` included). Then its results are established (right); otherwise
    it is wrong: a true equation off the chain (`3 * 8 = 24` when the chain is `3 + 8`, `11 * 2`)
    is wrong, since it is no step of this problem's solution;
  - a number claimed outside an equation, in digits or words (`now has 12 stickers`, `twelve`),
    is nothing new when established, right when it is the result of a reference step whose inputs
    are established (a step done in the head), no evidence but established when it is a later
    value of the chain, and wrong otherwise. List markers (`1.`, `Step 2`) are no claims; a step
    done again claims nothing new either;
  - a final answer (`Answer: N`, `\\boxed{N}`, `#### N`) is right when it is the gold (the
    chain's last value; the same answer again is nothing new), else wrong;
  - a finished response (its last segment) without a final answer the grader can read as a
    number, or whose final answer is not the gold, ends on a wrong segment.
  A problem no parser reads is judged in `validity` mode, said once in the log.
- `validity`: what a PRM without the reference can do. An equation must be true and use numbers
  that are known (the problem's, the constants, earlier results: `check_operands`); a final
  answer after an equation must be a known number (`check_answer`), one without an equation
  before it is no evidence; a finished response without a final answer ends on a wrong segment
  (`require_answer`).

Numbers, equations, claims and answers are read from the text by `prpo.prm.arithmetic_text`
(integers, decimals, `1,000`, `$3`, `20%`, exact rational arithmetic). An equation, claim or answer that
touches the end of a non-final prefix may still go on in the next segment (`7 * 2 = 1` | `4`), so
it is judged only once the text after it is seen.

Score of segment j, from the evidence in the prefix up to j: `wrong` if any evidence is wrong (an
error makes the rest of the response wrong); else `right` if segment j completes right evidence;
else `no_evidence`: text that claims nothing new is not paid like a verified step
(`carry_right: true` restores the old rule, where such a segment keeps `right` after one right
step). With the defaults 0.9 / 0.1 / 0.5 the fixed-prior process advantage
`Z = (s - 0.5) / 0.204` (PRPO, arXiv 2601.07182) is +1.96 / -1.96 / 0: text without evidence is
neither pushed up nor down. The old judgement is `{type: arithmetic, mode: validity,
require_answer: false, carry_right: true}`.
Optional `noise` flips right <-> wrong with that probability, drawn from a hash of
(seed, problem, prefix) so the same input always gets the same score, like a learned PRM that errs.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from prpo.prm.arithmetic_text import (
    ANSWER,
    EXACT_OPERATORS,
    Claim,
    Equation,
    Number,
    find_claims,
    find_equations,
    parse_number,
    problem_numbers,
)
from prpo.prm.base import NO_EVIDENCE, RIGHT, WRONG, check_inputs, config_id, register_prm
from prpo.registry import Registry
from prpo.tasks.arithmetic import Chain, final_number, parse_problem

LOG = logging.getLogger(__name__)
_TERSE = re.compile(r"(\d+) ([-+*/]) (\d+)((?: then [-+*/] \d+)*)")

# ---------------------------------------------------------------------------------------------
# reference solutions


@dataclass(frozen=True)
class ReferenceStep:
    """One step of a reference solution: `result` computed from `inputs` (`(3, 8) -> 11` for `3 + 8`)."""

    inputs: tuple[Fraction, ...]
    result: Fraction


@dataclass(frozen=True)
class Reference:
    """A problem's reference solution: the numbers it is given, its steps and the gold answer."""

    given: tuple[Fraction, ...]
    steps: tuple[ReferenceStep, ...]
    answer: Fraction

    @classmethod
    def from_chain(cls, chain: Chain) -> Reference:
        """The reference of a `prpo.tasks.arithmetic` chain (`start op operand = after`, one per step)."""
        steps = tuple(ReferenceStep((Fraction(s.before), Fraction(s.operand)), Fraction(s.after)) for s in chain.steps)
        given = (Fraction(chain.start), *(Fraction(s.operand) for s in chain.steps))
        return cls(given, steps, Fraction(chain.answer))


ReferenceParser = Callable[[str], Reference | None]


@dataclass(frozen=True)
class ReferenceParserEntry:
    """A registered reference parser: `fn(problem) -> Reference | None`."""

    name: str
    fn: ReferenceParser


REFERENCE_PARSERS: Registry[ReferenceParserEntry] = Registry("reference parser")


def register_reference_parser(name: str) -> Callable[[ReferenceParser], ReferenceParser]:
    """Decorator: `fn(problem) -> Reference | None` is tried, in registration order, on every problem.

    How a task family with a reference solution plugs into the `arithmetic` PRM's reference mode:
    return None for text of another family. The module that registers must be imported before
    scoring (a `prpo serve-prm` process imports only the built-in parsers). A second parser of
    the same name is an error.
    """

    def decorate(fn: ReferenceParser) -> ReferenceParser:
        REFERENCE_PARSERS.add(ReferenceParserEntry(name, fn))
        return fn

    return decorate


@register_reference_parser("story")
def _story_reference(problem: str) -> Reference | None:
    """The word problems of `prpo.tasks.arithmetic` (`Mia has 3 stickers. Mia finds 8 more stickers. ...`)."""
    chain = parse_problem(problem)
    return None if chain is None else Reference.from_chain(chain)


@register_reference_parser("terse")
def _terse_reference(problem: str) -> Reference | None:
    """The bench's terse problems (`prpo.bench.arithmetic_family.terse_problem`): `3 + 4 then * 2 then - 5`."""
    match = _TERSE.fullmatch(problem.strip())
    if match is None:
        return None
    value, given, steps = Fraction(match[1]), [Fraction(match[1])], []
    for op, operand in [(match[2], match[3])] + re.findall(r" then ([-+*/]) (\d+)", match[4]):
        operand = Fraction(operand)
        if op == "/" and operand == 0:
            return None
        given.append(operand)
        steps.append(ReferenceStep((value, operand), EXACT_OPERATORS[op](value, operand)))
        value = steps[-1].result
    return Reference(tuple(given), tuple(steps), value)


def find_reference(problem: str) -> Reference | None:
    """The reference of `problem` from the first registered parser that reads it, else None."""
    for parser in REFERENCE_PARSERS.values():
        if (reference := parser.fn(problem)) is not None:
            return reference
    return None


# ---------------------------------------------------------------------------------------------
# the PRM


@register_prm("arithmetic")
class ArithmeticPRM:
    """Rule-based verifier of arithmetic reasoning; the embedded PRM of the offline tasks.

    `load_prm("arithmetic")` judges against the reference chain; `{type: arithmetic, mode: validity}`
    checks only that the arithmetic is true and uses known numbers.
    """

    @dataclass(frozen=True)
    class Config:
        mode: Literal["reference", "validity"] = "reference"  # see the module docstring
        right: float = RIGHT
        wrong: float = WRONG
        no_evidence: float = NO_EVIDENCE
        check_operands: bool = True  # validity mode: an equation's operands must be known
        check_answer: bool = True  # validity mode: a final answer must be a known number
        require_answer: bool = True  # a finished response without a final answer ends on `wrong`
        carry_right: bool = False  # a segment without evidence of its own keeps `right` (the old rule)
        constants: tuple[float, ...] = (1, 2, 100)
        noise: float = 0.0
        seed: int = 0

        def __post_init__(self) -> None:
            if self.mode not in ("reference", "validity"):
                raise ValueError(f"mode = {self.mode!r}: use 'reference' or 'validity'")
            for name in ("right", "wrong", "no_evidence", "noise"):
                if not 0.0 <= getattr(self, name) <= 1.0:
                    raise ValueError(f"{name} = {getattr(self, name)} must be in [0, 1]")

    def __init__(self, config: Config | None = None):
        self.config = config or self.Config()
        self._constants = [Fraction(str(c)) for c in self.config.constants]
        self._warned = False

    @property
    def prm_id(self) -> str:
        return config_id("arithmetic", self.config)

    def score(self, problems: list[str], segments: list[list[str]]) -> list[list[float]]:
        check_inputs(problems, segments)
        references: dict[str, Reference | None] = {}
        if self.config.mode == "reference":
            for problem in problems:
                if problem not in references:
                    references[problem] = find_reference(problem)
                    if references[problem] is None:
                        self._warn_unread(problem)
        return [
            self.score_response(problem, response, references.get(problem))
            for problem, response in zip(problems, segments)
        ]

    def score_response(self, problem: str, segments: list[str], reference: Reference | None = None) -> list[float]:
        """One score per segment: the verdict on the text up to and including it (by validity without a reference)."""
        known = problem_numbers(problem) + self._constants
        scores, prefix, rights = [], "", 0
        for j, segment in enumerate(segments):
            prefix += segment
            error, now = self.evidence(prefix, known, final=j == len(segments) - 1, reference=reference)
            verdict = False if error else True if now > rights or (self.config.carry_right and now) else None
            scores.append(self._noisy(verdict, problem, prefix))
            rights = now
        return scores

    def judge(self, text: str, known: list[Fraction], final: bool, reference: Reference | None = None) -> bool | None:
        """The verdict on the prefix `text`: False (an error), True (right evidence, no error) or None (no evidence).

        `known`: the problem's numbers and the constants; `reference`: judge against it (else by validity),
        e.g. `find_reference(problem)`.
        """
        error, rights = self.evidence(text, known, final, reference)
        return False if error else True if rights else None

    def evidence(
        self, text: str, known: list[Fraction], final: bool, reference: Reference | None = None
    ) -> tuple[bool, int]:
        """(whether `text` holds an error, how many pieces of right evidence it holds)."""
        cfg = self.config
        known = list(known) + list(reference.given if reference is not None else ())
        progress = _Progress(reference, known) if reference is not None else None
        items: list[tuple[int, Equation | Claim | re.Match[str]]] = [(eq.end, eq) for eq in find_equations(text)]
        if reference is not None:
            items += [(claim.end, claim) for claim in find_claims(text)]
        if reference is not None or cfg.check_answer:
            items += [(m.end(), m) for m in ANSWER.finditer(text)]
        rights = 0
        for end, item in sorted(items, key=lambda pair: pair[0]):
            if end == len(text) and not final:
                continue  # may go on in the next segment
            if isinstance(item, re.Match):
                verdict = self._answer(item, known, progress, rights > 0)
            elif progress is None:
                verdict = self._valid(item, known)
            elif isinstance(item, Claim):
                verdict = progress.claim(item.number)
            else:
                verdict = progress.equation(item)
            if verdict is False:
                return True, rights
            rights += verdict is True
        if final:
            answer = final_number(text)
            if answer is None and cfg.require_answer:
                return True, rights  # finished without an answer
            if answer is not None and reference is not None and answer != reference.answer:
                return True, rights
        return False, rights

    def _valid(self, equation: Equation, known: list[Fraction]) -> bool:
        """Validity: the equation is true and every operand is known; its values become known."""
        if not equation.is_right():
            return False
        if self.config.check_operands and not all(any(op.matches(v) for v in known) for op in equation.operands):
            return False
        known.extend(v for v in equation.sides if v is not None)
        return True

    @staticmethod
    def _answer(match: re.Match[str], known: list[Fraction], progress: _Progress | None, evidence: bool) -> bool | None:
        if match.group(0).lstrip().startswith("\\boxed") and match.group("close") is None:
            return None  # `\boxed{14` without its brace is not an answer yet
        answer = parse_number(match.group("num"))
        if progress is not None:
            return progress.answer(answer)
        if not evidence:
            return None  # an answer with no equation before it is mental arithmetic: no evidence
        return any(answer.matches(v) for v in known)

    def _warn_unread(self, problem: str) -> None:
        if not self._warned:
            LOG.warning(
                "arithmetic PRM: no reference parser (%s) reads problem %r; such problems are judged by "
                "validity only (logged once)", ", ".join(REFERENCE_PARSERS), problem[:120]
            )
            self._warned = True

    def _noisy(self, verdict: bool | None, problem: str, prefix: str) -> float:
        cfg = self.config
        if verdict is None:
            return cfg.no_evidence
        if cfg.noise > 0.0:
            digest = hashlib.blake2b(f"{cfg.seed}\0{problem}\0{prefix}".encode(), digest_size=8).digest()
            if int.from_bytes(digest, "big") / 2**64 < cfg.noise:
                verdict = not verdict
        return cfg.right if verdict else cfg.wrong


class _Progress:
    """What a response has established against a reference: values known so far and steps done."""

    def __init__(self, reference: Reference, known: Iterable[Fraction]):
        self.reference, self.known, self.done, self.answered = reference, list(known), set(), False

    def answer(self, number: Number) -> bool | None:
        """A final answer: right if it is the gold (no evidence when given again), else wrong."""
        if not number.matches(self.reference.answer):
            return False
        verdict = None if self.answered else True
        self.answered = True
        return verdict

    def _step(self, value: Fraction) -> int | None:
        """A step that gives `value` from known inputs (one not done yet first), or None."""
        known = set(self.known)
        fits = [k for k, step in enumerate(self.reference.steps) if step.result == value and set(step.inputs) <= known]
        return next((k for k in fits if k not in self.done), fits[0] if fits else None)

    def claim(self, number: Number) -> bool | None:
        """A stated number: no evidence if known; right (a step done in the head) if a step gives it
        from known values; no evidence but known if it is a later value of the chain; else wrong."""
        if any(number.matches(v) for v in self.known):
            return None
        value = next((step.result for step in self.reference.steps if number.matches(step.result)), None)
        if value is None:
            return False
        k = self._step(value)
        self.known.append(value)
        if k is None:
            return None
        self.done.add(k)
        return True

    def equation(self, equation: Equation) -> bool | None:
        """A true equation whose numbers are known or claimable and whose every operation is a reference
        step from known values: right, or no evidence when all its steps were done already; else wrong."""
        if not equation.is_right():
            return False
        claims = [self.claim(op) for op in equation.operands]
        if False in claims:
            return False
        new = True in claims
        for result in equation.results:
            k = None if result is None else self._step(result)
            if k is None:
                return False
            new = new or k not in self.done
            self.done.add(k)
            self.known.append(result)
        return True if new else None  # a step done again claims nothing new
