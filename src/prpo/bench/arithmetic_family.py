"""The arithmetic-chain task family of the benchmark (`ARITHMETIC`): problems, warm-start data, step checker.

Problems are the chains of `prpo.tasks.arithmetic` (same train/test split, same line-by-line
solutions the `arithmetic` PRM judges), told tersely so that a character-level policy reads short
prompts::

    problem:   3 + 4 then * 2 then - 5
    solution:  3 + 4 = 7
               7 * 2 = 14
               14 - 5 = 9
               Answer: 9

Warm-start solutions carry realistic step errors of two kinds, and the following steps carry on
consistently from the wrong value, so the final answer is wrong too:

- misconceptions, systematic, at three error sites (``dropped_carry``): the carry out of the ones
  column is dropped in most additions that need one (``47 + 5 = 42``), the borrow in most
  subtractions that need one (``23 - 7 = 26``), and some doublings multiply the tens and ones
  digits separately (``37 * 2 = 64``). Fitted to a rate above one half, the policy's *most likely*
  result of such a step is wrong, so greedy accuracy is about the share of chains with no such
  step, while sampling still finds the right result often enough for RL to learn from. Longer
  chains hold more sites: the difficulty levels;
- slips, random: a result off by one or two, off by ten, or with two digits swapped, rarely.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from prpo.prm.arithmetic import ArithmeticPRM, find_reference
from prpo.prm.arithmetic_text import problem_numbers
from prpo.tasks import Example, Task
from prpo.tasks.arithmetic import OPERATORS, ArithmeticConfig, Step, answer_matches, generate, write_solution
from prpo.bench.family import Level
from prpo.tasks.templates import Template, register_template

TEMPLATE = register_template(
    Template("bench_arithmetic", lambda problem: [{"role": "user", "content": problem}], lambda p: f"{p}\n")
)


def terse_problem(steps: Sequence[Step]) -> str:
    """``3 + 4 then * 2 then - 5``."""
    head = f"{steps[0].before} {steps[0].op} {steps[0].operand}"
    return " then ".join([head] + [f"{s.op} {s.operand}" for s in steps[1:]])


def slip(value: int, rng: random.Random) -> int:
    """A plausible wrong result for ``value``: off by 1 or 2, off by 10, or two digits swapped."""
    kinds = ["small", "ten"] + (["swap"] if value >= 10 and value % 10 != value // 10 % 10 else [])
    kind = rng.choice(kinds)
    if kind == "swap":
        digits = list(str(value))
        digits[-1], digits[-2] = digits[-2], digits[-1]
        return int("".join(digits))
    delta = rng.choice([-2, -1, 1, 2]) if kind == "small" else rng.choice([-10, 10])
    return value + delta if value + delta >= 0 else value + abs(delta)


def dropped_carry(before: int, op: str, operand: int) -> int | None:
    """The result of ``before op operand`` with the carry (or borrow) out of the ones column dropped.

    Tens and ones are worked separately and the ones digit is kept modulo 10: ``47 + 5 -> 42``,
    ``23 - 7 -> 26``, ``37 * 2 -> 64``. None when the step needs no carry (or is a division).
    """
    if op == "/":
        return None
    ones = OPERATORS[op](before % 10, operand % 10)
    if 0 <= ones <= 9:
        return None
    tens = OPERATORS[op](before // 10, operand // 10) if op != "*" else (before // 10) * operand
    return tens * 10 + ones % 10


def with_step_errors(
    steps: Sequence[Step], rng: random.Random, error_rate: float, misconceptions: Mapping[str, float] | None = None,
) -> list[Step]:
    """Re-derive ``steps``, later steps carrying on from each result as written.

    A step whose operator has a rate in ``misconceptions`` (e.g. ``{"+": 0.65}``) and that needs a
    carry drops it with that probability; otherwise its result slips with probability ``error_rate``.
    """
    misconceptions = misconceptions or {}
    out, value = [], steps[0].before
    for step in steps:
        result = OPERATORS[step.op](value, step.operand)
        dropped = dropped_carry(value, step.op, step.operand) if step.op in misconceptions else None
        if dropped is not None and rng.random() < misconceptions[step.op]:
            result = dropped
        elif rng.random() < error_rate:
            result = slip(result, rng)
        out.append(Step(step.op, step.operand, value, result))
        value = result
    return out


def bench_task(split: str, n: int, steps: tuple[int, int], seed: int) -> Task:
    """``n`` terse problems of the arithmetic generator's ``split`` with ``steps`` equations each.

    Operands 2-9, doubling as the only product, every value below 100: easy enough for a small
    character-level model to learn in a short warm start, so that its errors are mostly the slips
    it was shown, which RL can train away.
    """
    config = ArithmeticConfig(steps=steps, numbers=(2, 9), ops="+-*", max_factor=2, max_value=99, groups=0.0, patterns=())
    examples: dict[str, Example] = {}  # the generator may tell one chain twice in different words
    for example in generate(4 * n, split=split, seed=seed, config=config):
        problem = terse_problem(example.meta["chain"].steps)
        examples.setdefault(problem, Example(example.id, problem, example.answer, dict(example.meta)))
    if len(examples) < n:
        raise ValueError(f"only {len(examples)} distinct {split} problems with {steps} steps, {n} asked for")
    return Task(f"bench-{split}-{steps[0]}-{steps[1]}", list(examples.values())[:n], TEMPLATE.name, answer_matches)


@dataclass(frozen=True)
class ArithmeticChains:
    """The arithmetic task family (`prpo.bench.family.TaskFamily`): terse chains, three error sites.

    Levels (fixed before any run; see docs/bench.md): easy 2-3 steps, medium 4-5, hard 6-8. The
    step checker is the `arithmetic` PRM's reference-mode verifier (each equation true and a step of
    the problem's chain, read from the terse text; the answer the chain's last value).
    """

    name: str = "arithmetic"
    levels: tuple[Level, ...] = (Level("easy", (2, 3), 56), Level("medium", (4, 5), 80), Level("hard", (6, 8), 120))
    slip_rate: float = 0.05
    misconceptions: tuple[tuple[str, float], ...] = (("+", 0.65), ("-", 0.65), ("*", 0.35))

    def task(self, split: str, n: int, level: Level, seed: int) -> Task:
        return bench_task(split, n, level.steps, seed)

    def warm_solution(self, example: Example, rng: random.Random) -> str:
        steps = example.meta["chain"].steps
        return write_solution(with_step_errors(steps, rng, self.slip_rate, dict(self.misconceptions)))

    def evidence(self, problem: str, text: str, final: bool) -> tuple[bool, int]:
        reference = find_reference(problem)
        known = problem_numbers(problem) + [Fraction(str(c)) for c in _CHECKER.config.constants]
        return _CHECKER.evidence(text, known + list(reference.given if reference else ()), final, reference)


_CHECKER = ArithmeticPRM(ArithmeticPRM.Config(require_answer=False))  # the bench PRM asks for the answer line
ARITHMETIC = ArithmeticChains()
