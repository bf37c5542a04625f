"""Reading arithmetic out of text, for the `arithmetic` PRM: numbers, equations, claims and answers.

- `find_equations(text)`: every run of arithmetic tokens with `=` and an operator on some side
  (`3 + 4 = 7`, `2 * (3 + 4) = 14 = 7 * 2`, `\\times`, `÷`), each side evaluated with exact rational
  arithmetic, with the numbers it uses and the result of each operation in evaluation order;
- `find_claims(text)`: numbers stated outside equations and final answers, in digits or words
  (`now has 12 stickers`, `twelve`); list markers (`1.`, `Step 2`) are no claims;
- `ANSWER`: a final answer (`Answer: N`, `\\boxed{N}`, `#### N`);
- `problem_numbers(problem)`: the numbers of a problem text, digits and number words.

Numbers: integers, decimals, `1,000`, `$3`, `20%`, exact rational arithmetic; a bare number
written with d >= 1 decimals may round the value to d decimals (`Number.matches`).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from prpo.tasks.arithmetic import OPERATORS

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
ANSWER = re.compile(
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
# The chains' operators on exact rationals: a written division need not come out whole (`7 / 2 = 3.5`).
EXACT_OPERATORS: dict[str, Callable[[Fraction, Fraction], Fraction]] = {**OPERATORS, "/": operator.truediv}


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
        value = None if lhs is None or rhs is None or (op == "/" and rhs == 0) else EXACT_OPERATORS[op](lhs, rhs)
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
    skip = [m.span() for m in ANSWER.finditer(text)]
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
