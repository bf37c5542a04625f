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

Numbers: integers, decimals, `1,000`, `$3`, `20%`, exact rational arithmetic; a bare number
written with d >= 1 decimals may round the value to d decimals. An equation, claim or answer that
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

from prpo.prm.base import check_inputs, config_id, register_prm
from prpo.tasks.arithmetic import Chain, final_number, parse_problem

LOG = logging.getLogger(__name__)

_TOKEN = re.compile(
    r"""
    (?P<num>\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?|\$?\.\d+%?)
  | (?P<op>\\times|\\cdot|\\div|[-+*/×÷·−])
  | (?P<lp>\()
  | (?P<rp>\))
  | (?P<eq>=)
  | (?P<space>[ \t]+)
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_OPS = {"\\times": "*", "\\cdot": "*", "\\div": "/", "×": "*", "·": "*", "÷": "/", "−": "-"}
_NUMBER = r"-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\$?\.\d+"
_ANSWER = re.compile(
    rf"(?:answer(?:\s+is)?\s*[:=]?\s*|\\boxed\{{\s*|####\s*)(?P<num>{_NUMBER})(?P<close>\s*\}})?",
    re.IGNORECASE,
)
_ENUMERATOR = re.compile(r"^[ \t]*(?P<a>\d+)[.):](?=\s)|\bstep[ \t]*(?P<b>\d+)", re.IGNORECASE | re.MULTILINE)
_CARDINALS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
}
_WORDS = _CARDINALS | {
    "hundred": 100, "thousand": 1000, "million": 1_000_000, "dozen": 12, "twice": 2, "double": 2, "triple": 3,
    "half": 2, "quarter": 4,
}
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)?", re.IGNORECASE)
_TERSE = re.compile(r"(\d+) ([-+*/]) (\d+)((?: then [-+*/] \d+)*)")
_APPLY: dict[str, Callable[[Fraction, Fraction], Fraction]] = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b,
}


@dataclass(frozen=True)
class Number:
    """A number as written: its value and how many decimals it was written with."""

    value: Fraction
    decimals: int

    def matches(self, value: Fraction) -> bool:
        """Equal, or equal after rounding `value` to the written decimals (when there are some)."""
        if self.value == value:
            return True
        return self.decimals > 0 and abs(self.value - value) <= Fraction(1, 2 * 10**self.decimals)


def parse_number(text: str) -> Number:
    """`"$1,234.50"` -> 1234.5 with 2 decimals; `"20%"` -> 0.2 (its decimals count the written digits)."""
    digits = text.replace("$", "").replace(",", "").rstrip("%")
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    value = Fraction(digits)
    return Number(value / 100 if text.endswith("%") else value, decimals)


@dataclass(frozen=True)
class Equation:
    """`sides[k]` evaluated; `operands` are the numbers inside the sides that hold an operator,
    `results` the value of each operation in them, in evaluation order (None: division by zero)."""

    sides: tuple[Fraction | None, ...]
    written: tuple[Number | None, ...]
    operands: tuple[Number, ...]
    results: tuple[Fraction | None, ...]
    end: int

    def is_right(self) -> bool:
        """Every side equals the first computed side (a bare number may be rounded as written)."""
        if any(value is None for value in self.sides):  # division by zero
            return False
        reference = next(v for v, w in zip(self.sides, self.written) if w is None)
        for value, written in zip(self.sides, self.written):
            if written is not None and not written.matches(reference):
                return False
            if written is None and value != reference:
                return False
        return True


@dataclass(frozen=True)
class Claim:
    """A number stated outside any equation and answer, ending at offset `end` of the text."""

    number: Number
    end: int


class _Parser:
    """Recursive descent over one side's tokens: expr := term (+|- term)*, term := unary (*|/ unary)*."""

    def __init__(self, tokens: list[tuple[str, str]]):
        self.tokens, self.pos = tokens, 0
        self.operands: list[Number] = []
        self.results: list[Fraction | None] = []

    def parse(self) -> Fraction | None:
        value = self.expr()
        if self.pos != len(self.tokens):
            raise ValueError("trailing tokens")
        return value

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise ValueError("unexpected end")
        self.pos += 1
        return token

    def expr(self) -> Fraction | None:
        value = self.term()
        while (token := self.peek()) in (("op", "+"), ("op", "-")):
            self.take()
            value = self.apply(token[1], value, self.term())
        return value

    def term(self) -> Fraction | None:
        value = self.unary()
        while (token := self.peek()) in (("op", "*"), ("op", "/")):
            self.take()
            value = self.apply(token[1], value, self.unary())
        return value

    def apply(self, op: str, lhs: Fraction | None, rhs: Fraction | None) -> Fraction | None:
        value = None if lhs is None or rhs is None or (op == "/" and rhs == 0) else _APPLY[op](lhs, rhs)
        self.results.append(value)
        return value

    def unary(self) -> Fraction | None:
        kind, text = self.take()
        if (kind, text) == ("op", "-"):
            value = self.unary()
            return None if value is None else -value
        if kind == "lp":
            value = self.expr()
            if self.take()[0] != "rp":
                raise ValueError("unclosed parenthesis")
            return value
        if kind == "num":
            number = parse_number(text)
            self.operands.append(number)
            return number.value
        raise ValueError(f"unexpected {text!r}")


_Token = tuple[str, str, int, int]  # kind, text, start, end


def _runs(text: str) -> list[list[_Token]]:
    """Maximal runs of arithmetic tokens (spaces dropped); a run ends where its last token (or space) ends."""
    runs: list[list[_Token]] = []
    current: list[_Token] = []
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind == "other":
            if current:
                runs.append(current)
            current = []
            continue
        current.append((kind, _OPS.get(match.group(), match.group()), match.start(), match.end()))
    if current:
        runs.append(current)
    return runs


def _equation(run: list[_Token]) -> Equation | None:
    """The run as an equation with an operator on some side, or None when it is not one."""
    sides: list[list[tuple[str, str]]] = [[]]
    for kind, token, _, _ in run:
        if kind == "eq":
            sides.append([])
        elif kind != "space":
            sides[-1].append((kind, token))
    if len(sides) < 2 or any(not side for side in sides):
        return None
    values, written, operands, results = [], [], [], []
    try:
        for side in sides:
            parser = _Parser(side)
            values.append(parser.parse())
            written.append(parse_number(side[0][1]) if len(side) == 1 else None)
            if parser.results:
                operands.extend(parser.operands)
                results.extend(parser.results)
    except ValueError:
        return None
    if not results:
        return None
    return Equation(tuple(values), tuple(written), tuple(operands), tuple(results), run[-1][3])


def find_equations(text: str) -> list[Equation]:
    """Every equation of `text` that has an operator on some side, in order of appearance."""
    return [eq for run in _runs(text) if (eq := _equation(run)) is not None]


def find_claims(text: str) -> list[Claim]:
    """Numbers stated outside equations and answers: digits (not list markers) and number words."""
    skip = [m.span() for m in _ANSWER.finditer(text)]
    markers = {m.start("a") if m.group("a") else m.start("b") for m in _ENUMERATOR.finditer(text)}
    claims = []
    for run in _runs(text):
        if _equation(run) is not None:
            continue
        for kind, token, start, end in run:
            if kind == "num" and start not in markers and not any(a <= start < b for a, b in skip):
                claims.append(Claim(parse_number(token), end))
    for match in _WORD.finditer(text):
        parts = match.group().lower().split("-")
        if all(part in _CARDINALS for part in parts):
            claims.append(Claim(Number(Fraction(sum(_CARDINALS[part] for part in parts)), 0), match.end()))
    return claims


def problem_numbers(problem: str) -> list[Fraction]:
    """Numbers of the problem text: digits (`20%` gives 20 and 0.2) and number words (`twenty-five`, `half`)."""
    values = []
    for run in _runs(problem):
        for kind, text, _, _ in run:
            if kind == "num":
                values.append(parse_number(text.rstrip("%")).value)
                if text.endswith("%"):
                    values.append(parse_number(text).value)
    for word in _WORD.findall(problem.lower()):
        parts = word.split("-")
        if all(part in _WORDS for part in parts):
            values.append(Fraction(sum(_WORDS[part] for part in parts)))
            if parts == ["half"]:
                values.append(Fraction(1, 2))
            if parts == ["quarter"]:
                values.append(Fraction(1, 4))
    return values


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
REFERENCE_PARSERS: dict[str, ReferenceParser] = {}


def register_reference_parser(name: str) -> Callable[[ReferenceParser], ReferenceParser]:
    """Decorator: `fn(problem) -> Reference | None` is tried, in registration order, on every problem.

    How a task family with a reference solution plugs into the `arithmetic` PRM's reference mode:
    return None for text of another family. The module that registers must be imported before
    scoring (a `prpo serve-prm` process imports only the built-in parsers).
    """

    def decorate(fn: ReferenceParser) -> ReferenceParser:
        if name in REFERENCE_PARSERS:
            raise ValueError(f"a reference parser named {name!r} is already registered")
        REFERENCE_PARSERS[name] = fn
        return fn

    return decorate


@register_reference_parser("story")
def _story_reference(problem: str) -> Reference | None:
    """The word problems of `prpo.tasks.arithmetic` (`Mia has 3 stickers. Mia finds 8 more stickers. ...`)."""
    chain = parse_problem(problem)
    return None if chain is None else Reference.from_chain(chain)


@register_reference_parser("terse")
def _terse_reference(problem: str) -> Reference | None:
    """The bench's terse problems (`prpo.bench.data.terse_problem`): `3 + 4 then * 2 then - 5`."""
    match = _TERSE.fullmatch(problem.strip())
    if match is None:
        return None
    value, given, steps = Fraction(match[1]), [Fraction(match[1])], []
    for op, operand in [(match[2], match[3])] + re.findall(r" then ([-+*/]) (\d+)", match[4]):
        operand = Fraction(operand)
        if op == "/" and operand == 0:
            return None
        given.append(operand)
        steps.append(ReferenceStep((value, operand), _APPLY[op](value, operand)))
        value = steps[-1].result
    return Reference(tuple(given), tuple(steps), value)


def find_reference(problem: str) -> Reference | None:
    """The reference of `problem` from the first registered parser that reads it, else None."""
    for parser in REFERENCE_PARSERS.values():
        if (reference := parser(problem)) is not None:
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
        right: float = 0.9
        wrong: float = 0.1
        no_evidence: float = 0.5
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
            items += [(m.end(), m) for m in _ANSWER.finditer(text)]
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
