"""A rule-based PRM for arithmetic reasoning: checks every equation and the numbers it uses.

For each prefix of a response (segments 0..j) the verifier reads the text written so far and
collects evidence in order:
- an equation `e_1 = e_2 (= ...)` where some side has an operator (+ - * / x and parentheses;
  integers, decimals, `1,000`, `$3`, `20%`) is right when every side has the same value
  (exact rational arithmetic; a bare number written with d >= 1 decimals may round the value to
  d decimals), else wrong;
- each operand of such an equation must be known: a number of the problem text (digits or number
  words), a configured constant, or a value established by an earlier equation; an unknown
  operand is wrong evidence (`check_operands`);
- a final answer (`Answer: N`, `\\boxed{N}`, `#### N`) after at least one equation must be a
  known number (`check_answer`); without an equation before it, it is no evidence.
An equation or answer that touches the end of a non-final prefix may still go on in the next
segment (`7 * 2 = 1` | `4`), so it is judged only once the text after it is seen.

Score of segment j: `wrong` if any evidence up to j is wrong (an error makes the rest of the
response wrong), else `right` if some evidence is right, else `no_evidence`. With the defaults
0.9 / 0.1 / 0.5 the fixed-prior process advantage `Z = (s - 0.5) / 0.204` is +1.96 / -1.96 / 0.
Optional `noise` flips right <-> wrong with that probability, drawn from a hash of
(seed, problem, prefix) so the same input always gets the same score, like a learned PRM that errs.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from fractions import Fraction

from prpo.prm.base import check_inputs, config_id, register_prm

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
_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100,
    "thousand": 1000, "million": 1_000_000, "dozen": 12, "twice": 2, "double": 2, "triple": 3,
    "half": 2, "quarter": 4,
}
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)?")


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
    """`sides[k]` evaluated; `operands` are the numbers inside the sides that hold an operator."""

    sides: tuple[Fraction | None, ...]
    written: tuple[Number | None, ...]
    operands: tuple[Number, ...]
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


class _Parser:
    """Recursive descent over one side's tokens: expr := term (+|- term)*, term := unary (*|/ unary)*."""

    def __init__(self, tokens: list[tuple[str, str]]):
        self.tokens, self.pos, self.operands, self.binary_ops = tokens, 0, [], 0

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
            self.binary_ops += 1
            rhs = self.term()
            value = None if value is None or rhs is None else value + rhs if token[1] == "+" else value - rhs
        return value

    def term(self) -> Fraction | None:
        value = self.unary()
        while (token := self.peek()) in (("op", "*"), ("op", "/")):
            self.take()
            self.binary_ops += 1
            rhs = self.unary()
            if value is None or rhs is None or (token[1] == "/" and rhs == 0):
                value = None
            else:
                value = value * rhs if token[1] == "*" else value / rhs
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


def _runs(text: str) -> list[tuple[list[tuple[str, str]], int]]:
    """Maximal runs of arithmetic tokens (spaces dropped) with the offset where each run ends."""
    runs, current, end = [], [], 0
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind == "other":
            if current:
                runs.append((current, end))
            current = []
            continue
        end = match.end()
        if kind != "space":
            current.append((kind, _OPS.get(match.group(), match.group())))
    if current:
        runs.append((current, end))
    return runs


def find_equations(text: str) -> list[Equation]:
    """Every equation of `text` that has an operator on some side, in order of appearance."""
    equations = []
    for tokens, end in _runs(text):
        sides: list[list[tuple[str, str]]] = [[]]
        for token in tokens:
            if token[0] == "eq":
                sides.append([])
            else:
                sides[-1].append(token)
        if len(sides) < 2 or any(not side for side in sides):
            continue
        values, written, operands, has_op = [], [], [], False
        try:
            for side in sides:
                parser = _Parser(side)
                values.append(parser.parse())
                written.append(parse_number(side[0][1]) if len(side) == 1 else None)
                if parser.binary_ops:
                    operands.extend(parser.operands)
                    has_op = True
        except ValueError:
            continue
        if not has_op:
            continue
        equations.append(Equation(tuple(values), tuple(written), tuple(operands), end))
    return equations


def problem_numbers(problem: str) -> list[Fraction]:
    """Numbers of the problem text: digits (`20%` gives 20 and 0.2) and number words (`twenty-five`, `half`)."""
    values = []
    for tokens, _ in _runs(problem):
        for kind, text in tokens:
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


@register_prm("arithmetic")
class ArithmeticPRM:
    """Rule-based verifier of arithmetic reasoning; the embedded PRM of the offline tasks."""

    @dataclass(frozen=True)
    class Config:
        right: float = 0.9
        wrong: float = 0.1
        no_evidence: float = 0.5
        check_operands: bool = True
        check_answer: bool = True
        constants: tuple[float, ...] = (1, 2, 100)
        noise: float = 0.0
        seed: int = 0

        def __post_init__(self) -> None:
            for name in ("right", "wrong", "no_evidence", "noise"):
                if not 0.0 <= getattr(self, name) <= 1.0:
                    raise ValueError(f"{name} = {getattr(self, name)} must be in [0, 1]")

    def __init__(self, config: Config | None = None):
        self.config = config or self.Config()
        self._constants = [Fraction(str(c)) for c in self.config.constants]

    @property
    def prm_id(self) -> str:
        return config_id("arithmetic", self.config)

    def score(self, problems: list[str], segments: list[list[str]]) -> list[list[float]]:
        check_inputs(problems, segments)
        return [self.score_response(problem, response) for problem, response in zip(problems, segments)]

    def score_response(self, problem: str, segments: list[str]) -> list[float]:
        """One score per segment: the verdict on the text up to and including it."""
        known = problem_numbers(problem) + self._constants
        scores, prefix = [], ""
        for j, segment in enumerate(segments):
            prefix += segment
            verdict = self.judge(prefix, known, final=j == len(segments) - 1)
            scores.append(self._noisy(verdict, problem, prefix))
        return scores

    def judge(self, text: str, known: list[Fraction], final: bool) -> bool | None:
        """True (right evidence, no error), False (an error) or None (no evidence) for `text`."""
        known = list(known)
        evidence = False
        items = [(eq.end, eq) for eq in find_equations(text)] + [
            (m.end(), m) for m in _ANSWER.finditer(text) if self.config.check_answer
        ]
        for end, item in sorted(items, key=lambda pair: pair[0]):
            if end == len(text) and not final:
                continue  # may go on in the next segment
            if isinstance(item, Equation):
                if not item.is_right():
                    return False
                if self.config.check_operands and not all(
                    any(op.matches(v) for v in known) for op in item.operands
                ):
                    return False
                known.extend(v for v in item.sides if v is not None)
            else:
                if not evidence:
                    continue  # an answer with no equation before it is mental arithmetic: no evidence
                if item.group(0).lstrip().startswith("\\boxed") and item.group("close") is None:
                    continue  # `\boxed{14` without its brace is not an answer yet
                answer = parse_number(item.group("num"))
                if not any(answer.matches(v) for v in known):
                    return False
            evidence = True
        return True if evidence else None

    def _noisy(self, verdict: bool | None, problem: str, prefix: str) -> float:
        cfg = self.config
        if verdict is None:
            return cfg.no_evidence
        if cfg.noise > 0.0:
            digest = hashlib.blake2b(f"{cfg.seed}\0{problem}\0{prefix}".encode(), digest_size=8).digest()
            if int.from_bytes(digest, "big") / 2**64 < cfg.noise:
                verdict = not verdict
        return cfg.right if verdict else cfg.wrong
