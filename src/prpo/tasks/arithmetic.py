"""Generated multi-step arithmetic word problems with one-equation-per-line reference solutions.

A problem is a chain of integer steps told as a short story about a person and their items:

    Mia has 3 apples. Mia finds 4 more apples. Then the number of apples Mia has doubles.
    How many apples does Mia have now?

and its reference solution writes one equation per step, then the answer line the grader reads
(`Example.meta["solution"]`, for supervised warm starts; a rule-based PRM can judge each line):

    3 + 4 = 7
    7 * 2 = 14
    Answer: 14

`Example.meta["chain"]` holds the `Chain` itself (its `Step`s), for consumers that build on the
steps rather than read the text back. Every number a solution uses is written in the problem as
digits, except the 2 of "doubles" and "half". Results are positive integers (subtraction never
reaches 0, division is exact).
Difficulty knobs (`ArithmeticConfig`): fixed op patterns, or random chains of a number of steps
over allowed operations; range of the numbers, largest multiplier/divisor, largest intermediate
value, share of "a bags of b" openings. The default mix is tuned for SmolLM2-135M-Instruct with
the one-shot template (greedy, 24 problems each: add-then-double on numbers 2-9 scored 7/24, on
2-20 2/24; add-add, add-subtract, double-add on 2-20 0-1/24), so half of it is that shape;
the default test split scored 6/48 (add-then-double 5/27).

Train and test never share arithmetic: a chain belongs to the test split when a hash of its
solution text falls in the lowest `TEST_PERCENT` percent, whatever the seed. Each split is drawn
from its own seeded generator and holds no problem text twice (small knobs give few chains, e.g.
81 add-then-double chains on numbers 2-10, told with different names, items and phrasings).
"""

from __future__ import annotations

import hashlib
import operator
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from prpo.grading import extract_final_answer
from prpo.tasks.base import Example, register_task
from prpo.tasks.templates import Messages, Template, register_template

OPS = "+-*/"
OPERATORS: dict[str, Callable[[int, int], int]] = {  # a chain's values are integers: division is exact
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv,
}
SPLITS = ("train", "test")
DEFAULT_SIZE = {"train": 1000, "test": 200}
DEFAULT_PATTERNS = ("+*", "+*", "+*", "++", "+-", "*+")
TEST_PERCENT = 20
NAMES = ("Tom", "Mia", "Sam", "Lena", "Ben", "Ava", "Leo", "Nora", "Max", "Emma", "Omar", "Zoe")
ITEMS = ("apples", "marbles", "stickers", "coins", "books", "pencils", "cards", "shells", "stamps", "cookies")

_ADD = ("{name} finds {n} more {items}.", "{name} buys {n} more {items}.", "A friend gives {name} {n} more {items}.")
_SUB = ("{name} gives away {n} {items}.", "{name} loses {n} {items}.", "{name} sells {n} {items}.")
_MUL = ("Then {name} has {n} times as many {items} as before.",)
_DOUBLE = ("Then the number of {items} {name} has doubles.",)
_DIV = ("{name} puts the {items} into {n} equal piles and keeps one pile.",)
_HALF = ("{name} gives away half of the {items}.",)

_NUMBER = re.compile(r"\$?\s*(-?\d[\d,]*(?:\.\d+)?)")


@dataclass(frozen=True)
class ArithmeticConfig:
    """Difficulty knobs. Ranges are inclusive `(low, high)`.

    `patterns`: op sequences such as `"+*"` (the one-shot example's shape: add, then multiply);
    each problem follows one of them (repeat one to weight it). With no patterns, each problem
    draws `steps` operations from `ops` instead.
    """

    steps: tuple[int, int] = (2, 3)
    numbers: tuple[int, int] = (2, 9)
    ops: str = "+-*"
    max_factor: int = 2
    max_value: int = 1000
    groups: float = 0.25
    patterns: tuple[str, ...] = DEFAULT_PATTERNS

    def __post_init__(self) -> None:
        for name in ("steps", "numbers"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ValueError(f"arithmetic option {name}={getattr(self, name)}: need 1 <= low <= high")
        for name, value in [("ops", self.ops)] + [("patterns", p) for p in self.patterns]:
            if not value or any(op not in OPS for op in value):
                raise ValueError(f"arithmetic option {name}: {value!r} is not a non-empty string of {OPS!r}")
        if self.max_factor < 2:
            raise ValueError(f"arithmetic option max_factor={self.max_factor}: must be at least 2")
        if self.max_value < self.numbers[1]:
            raise ValueError(f"arithmetic option max_value={self.max_value}: below the largest number {self.numbers[1]}")
        if not 0.0 <= self.groups <= 1.0:
            raise ValueError(f"arithmetic option groups={self.groups}: must be in [0, 1]")


@dataclass(frozen=True)
class Step:
    """`before op operand = after`."""

    op: str
    operand: int
    before: int
    after: int

    @classmethod
    def taken(cls, op: str, operand: int, before: int) -> Step:
        """The step `before op operand` with its true result."""
        return cls(op, operand, before, OPERATORS[op](before, operand))

    @property
    def equation(self) -> str:
        return f"{self.before} {self.op} {self.operand} = {self.after}"


def write_solution(steps: Sequence[Step]) -> str:
    """One equation per step, each with its stated result, then the answer line (the last result)."""
    return "\n".join([step.equation for step in steps] + [f"Answer: {steps[-1].after}"])


@dataclass(frozen=True)
class Chain:
    """A problem's arithmetic; `grouped`: the first step is told as "`before` bags of `operand`"."""

    start: int
    steps: tuple[Step, ...]
    grouped: bool

    @property
    def answer(self) -> int:
        return self.steps[-1].after

    @property
    def solution(self) -> str:
        return write_solution(self.steps)


def _operands(op: str, value: int, config: ArithmeticConfig) -> list[int]:
    """Operands that keep the step an exact non-negative integer within `max_value`."""
    low, high = config.numbers
    if op == "+":
        candidates = range(low, high + 1)
    elif op == "-":
        candidates = range(low, min(high, value - 1) + 1)  # results stay positive
    elif op == "*":
        candidates = range(2, config.max_factor + 1)
    else:
        candidates = [k for k in range(2, config.max_factor + 1) if value >= k and value % k == 0]
    return [n for n in candidates if OPERATORS[op](value, n) <= config.max_value]


def draw_chain(rng: random.Random, config: ArithmeticConfig) -> Chain | None:
    """A random chain, or None when the draw runs into a value no allowed operation can continue."""
    low, high = config.numbers
    if config.patterns:
        plan = [op for op in rng.choice(config.patterns)]
    else:
        plan = [config.ops] * rng.randint(*config.steps)  # each step: any allowed op
    value = start = rng.randint(low, high)
    grouped = "*" in plan[0] and rng.random() < config.groups
    steps: list[Step] = []
    for i, allowed in enumerate(plan):
        if i == 0 and grouped:  # "`start` bags with `operand` items in each bag"
            choices = [("*", [n for n in range(low, high + 1) if value * n <= config.max_value])]
        else:
            choices = [(op, _operands(op, value, config)) for op in allowed]
        choices = [(op, operands) for op, operands in choices if operands]
        if not choices:
            return None
        op, operands = rng.choice(choices)
        operand = rng.choice(operands)
        steps.append(Step.taken(op, operand, value))
        value = steps[-1].after
    return Chain(start, tuple(steps), grouped)


def render_problem(chain: Chain, name: str, items: str, rng: random.Random) -> str:
    """The chain as a story about `name` and their `items`."""
    steps = list(chain.steps)
    if chain.grouped:
        first = steps.pop(0)
        sentences = [f"{name} has {first.before} bags with {first.operand} {items} in each bag."]
    else:
        sentences = [f"{name} has {chain.start} {items}."]
    for step in steps:
        if step.op == "+":
            phrases = _ADD
        elif step.op == "-":
            phrases = _SUB
        elif step.op == "*":
            phrases = _DOUBLE + _MUL if step.operand == 2 else _MUL
        else:
            phrases = _HALF + _DIV if step.operand == 2 else _DIV
        sentences.append(rng.choice(phrases).format(name=name, items=items, n=step.operand))
    sentences.append(f"How many {items} does {name} have now?")
    return " ".join(sentences)


_PHRASES = (  # op, operand implied by the words (None: written as {n}), phrases
    ("+", None, _ADD), ("-", None, _SUB), ("*", None, _MUL), ("*", 2, _DOUBLE), ("/", None, _DIV), ("/", 2, _HALF)
)
_OPENING = re.compile(r"\w+ has (?P<start>\d+) \w+\.")
_GROUPED = re.compile(r"\w+ has (?P<start>\d+) bags with (?P<n>\d+) \w+ in each bag\.")
_QUESTION = re.compile(r"How many \w+ does \w+ have now\?")


def _phrase_pattern(template: str) -> re.Pattern[str]:
    """A phrase of `render_problem` as a regex: `{n}` captures the operand, `{name}` / `{items}` match a word."""
    fields = {"{n}": r"(?P<n>\d+)", "{name}": r"\w+", "{items}": r"\w+"}
    return re.compile("".join(fields.get(part, re.escape(part)) for part in re.split(r"(\{\w+\})", template)))


_STEP_PATTERNS = [(op, implied, _phrase_pattern(t)) for op, implied, templates in _PHRASES for t in templates]


def parse_problem(problem: str) -> Chain | None:
    """The chain told by a problem of `render_problem` (the inverse of it), or None for other text."""
    sentences = re.split(r"(?<=[.?])\s+", problem.strip())
    if len(sentences) < 2 or not _QUESTION.fullmatch(sentences[-1]):
        return None
    steps: list[Step] = []
    if grouped := _GROUPED.fullmatch(sentences[0]):
        start, operand = int(grouped["start"]), int(grouped["n"])
        steps.append(Step.taken("*", operand, start))
    elif opening := _OPENING.fullmatch(sentences[0]):
        start = int(opening["start"])
    else:
        return None
    value = steps[-1].after if steps else start
    for sentence in sentences[1:-1]:
        for op, implied, pattern in _STEP_PATTERNS:
            if match := pattern.fullmatch(sentence):
                operand = implied or int(match["n"])
                break
        else:
            return None
        if op == "/" and value % operand:
            return None
        steps.append(Step.taken(op, operand, value))
        value = steps[-1].after
    return Chain(start, tuple(steps), bool(grouped)) if steps else None


def split_of(chain: Chain) -> str:
    """`test` for TEST_PERCENT percent of all chains (by a hash of the solution), else `train`."""
    digest = hashlib.blake2b(chain.solution.encode(), digest_size=8).digest()
    return "test" if int.from_bytes(digest, "big") % 100 < TEST_PERCENT else "train"


def generate(n: int, *, split: str = "train", seed: int = 0, config: ArithmeticConfig | None = None) -> list[Example]:
    """`n` distinct problems of `split`, reproducible from `seed`."""
    if split not in SPLITS:
        raise ValueError(f"arithmetic split {split!r}: use one of {SPLITS}")
    if n < 1:
        raise ValueError(f"arithmetic: number of problems must be positive, got {n}")
    config = config or ArithmeticConfig()
    rng = random.Random(f"prpo-arithmetic/{split}/{seed}")
    examples: list[Example] = []
    seen: set[str] = set()
    draws = 0
    while len(examples) < n:
        draws += 1
        if draws > 200 * n + 10_000:
            raise ValueError(
                f"arithmetic: found only {len(examples)} distinct {split} problems of {n} in {draws - 1} draws "
                f"with {config}; widen steps/numbers/ops or ask for fewer"
            )
        chain = draw_chain(rng, config)
        if chain is None or split_of(chain) != split:
            continue
        problem = render_problem(chain, rng.choice(NAMES), rng.choice(ITEMS), rng)
        if problem in seen:
            continue
        seen.add(problem)
        meta = {"solution": chain.solution, "steps": len(chain.steps), "ops": "".join(s.op for s in chain.steps),
                "grouped": chain.grouped, "split": split, "seed": seed, "chain": chain}
        examples.append(Example(f"arithmetic-{split}-{len(examples)}", problem, str(chain.answer), meta))
    return examples


def answer_matches(response: str, gold: str) -> bool:
    """Exact numeric match of the response's final answer (`Answer: N` or `\\boxed{N}`) with `gold`.

    The answer must start with a number (`14`, `14 apples`, `$1,400`, `14.0`).
    """
    answer = final_number(response)
    return answer is not None and answer == Fraction(gold)


def final_number(response: str) -> Fraction | None:
    """The number the response's final answer starts with, or None when it has no such answer."""
    answer = extract_final_answer(response)
    match = _NUMBER.match(answer) if answer is not None else None
    return None if match is None else Fraction(match.group(1).replace(",", ""))


# ---------------------------------------------------------------------------------------------
# the one-shot prompt: a worked example in the chat, then the problem

ONESHOT_CHAIN = Chain(3, (Step("+", 4, 3, 7), Step("*", 2, 7, 14)), grouped=False)
ONESHOT_PROBLEM = (
    "Tom has 3 apples. Tom finds 4 more apples. Then the number of apples Tom has doubles. "
    "How many apples does Tom have now?"
)


def _oneshot_messages(problem: str) -> Messages:
    return [
        {"role": "user", "content": ONESHOT_PROBLEM},
        {"role": "assistant", "content": ONESHOT_CHAIN.solution},
        {"role": "user", "content": problem},
    ]


def _oneshot_text(problem: str) -> str:
    return f"Problem: {ONESHOT_PROBLEM}\nSolution:\n{ONESHOT_CHAIN.solution}\n\nProblem: {problem}\nSolution:\n"


register_template(Template("arithmetic_oneshot", _oneshot_messages, _oneshot_text))

# The quickstart's prompt: a one-line system message of our own (the task's instruction) instead of
# the chat template's default one ("You are a helpful AI assistant named SmolLM, ..."), then the one-shot.
COMPACT_SYSTEM = "Solve with one equation per line, then write Answer: N."


def _compact_messages(problem: str) -> Messages:
    return [{"role": "system", "content": COMPACT_SYSTEM}, *_oneshot_messages(problem)]


def _compact_text(problem: str) -> str:
    return f"{COMPACT_SYSTEM}\n\n{_oneshot_text(problem)}"


register_template(Template("arithmetic_compact", _compact_messages, _compact_text))


@register_task("arithmetic", template="arithmetic_oneshot", grader=answer_matches)
def load_arithmetic(
    *,
    data_file: None = None,
    dataset_id: None = None,
    split: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    steps: Sequence[int] | None = None,
    numbers: Sequence[int] = ArithmeticConfig.numbers,
    ops: str | None = None,
    max_factor: int = ArithmeticConfig.max_factor,
    max_value: int = ArithmeticConfig.max_value,
    groups: float = ArithmeticConfig.groups,
    patterns: Sequence[str] | None = None,
) -> list[Example]:
    """`limit` generated problems (default 1000 train / 200 test) of split `train` (default) or `test`.

    Knobs as in `ArithmeticConfig`. Give `patterns` for fixed shapes, or `steps` / `ops` for
    random chains (not both); neither gives the default pattern mix.
    """
    if data_file is not None or dataset_id is not None:
        raise ValueError("the arithmetic task is generated: it takes no data_file or dataset_id")
    random_chains = steps is not None or ops is not None
    if patterns and random_chains:
        raise ValueError("arithmetic options: patterns fix each problem's operations; drop steps/ops")
    if isinstance(patterns, str):
        raise ValueError(f"arithmetic option patterns={patterns!r}: give a list of op strings, e.g. ['+*', '++']")
    split = split or "train"
    if split not in SPLITS:
        raise ValueError(f"arithmetic split {split!r}: use one of {SPLITS}")
    steps = ArithmeticConfig.steps if steps is None else steps
    for name, pair in (("steps", steps), ("numbers", numbers)):
        if len(pair) != 2:
            raise ValueError(f"arithmetic option {name}={pair!r}: give [low, high]")
    patterns = () if random_chains else DEFAULT_PATTERNS if patterns is None else patterns
    config = ArithmeticConfig(
        tuple(steps), tuple(numbers), ops or ArithmeticConfig.ops, max_factor, max_value, groups, tuple(patterns)
    )
    return generate(limit or DEFAULT_SIZE[split], split=split, seed=seed, config=config)
