"""The generated arithmetic task: reproducible, split-disjoint, correct reference solutions, grader."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest

from prpo.prm.arithmetic import ArithmeticPRM
from prpo.tasks import load_task
from prpo.tasks.arithmetic import ONESHOT_PROBLEM, ArithmeticConfig, answer_matches, split_of, draw_chain

_EQUATION = re.compile(r"^(\d+) ([-+*/]) (\d+) = (\d+)$")


def _check_solution(problem: str, solution: str, gold: str) -> list[str]:
    """Every line evaluates, chains on the previous result, uses numbers of the problem; returns the ops."""
    lines = solution.split("\n")
    assert lines[-1] == f"Answer: {gold}"
    given = {int(n) for n in re.findall(r"\d+", problem)}
    ops, previous = [], None
    for line in lines[:-1]:
        match = _EQUATION.match(line)
        assert match, line
        a, op, b, c = int(match[1]), match[2], int(match[3]), int(match[4])
        value = {"+": Fraction(a + b), "-": Fraction(a - b), "*": Fraction(a * b), "/": Fraction(a, b)}[op]
        assert value == c and c > 0, line  # exact, positive integer results
        assert previous is None or a == previous, f"{line} does not continue from {previous}"
        assert (previous is not None or a in given) and (b in given or (b == 2 and op in "*/")), line
        ops.append(op)
        previous = c
    assert previous == int(gold)
    return ops


def test_reference_solutions_evaluate_correctly():
    for split in ("train", "test"):
        task = load_task("arithmetic", split=split, limit=300, ops="+-*/", steps=(2, 6), seed=3)
        for example in task.examples:
            ops = _check_solution(example.problem, example.meta["solution"], example.answer)
            assert 2 <= len(ops) <= 6 and example.meta["steps"] == len(ops)
            assert task.grader(example.meta["solution"], example.answer)


def test_reproducible_and_seed_dependent():
    first = load_task("arithmetic", limit=50, seed=7).examples
    again = load_task("arithmetic", limit=50, seed=7).examples
    other = load_task("arithmetic", limit=50, seed=8).examples
    assert first == again
    assert [e.problem for e in first] != [e.problem for e in other]
    assert len({e.id for e in first}) == 50 and first[0].id == "arithmetic-train-0"


def test_train_and_test_never_share_a_problem():
    train = load_task("arithmetic", split="train", limit=2000, seed=0).examples
    test = [e for seed in (0, 1, 2) for e in load_task("arithmetic", split="test", limit=200, seed=seed).examples]
    train_solutions = {e.meta["solution"] for e in train}
    assert not train_solutions & {e.meta["solution"] for e in test}
    assert not {e.problem for e in train} & {e.problem for e in test}
    assert len({e.problem for e in train}) == len(train)  # no problem twice inside a split
    assert {e.meta["split"] for e in test} == {"test"}


def test_split_share_is_about_twenty_percent():
    import random

    rng, config = random.Random(0), ArithmeticConfig()
    chains = [c for c in (draw_chain(rng, config) for _ in range(5000)) if c is not None]
    share = sum(split_of(c) == "test" for c in chains) / len(chains)
    assert 0.15 < share < 0.25


def test_difficulty_knobs():
    hard = load_task("arithmetic", limit=200, steps=(4, 6), numbers=(10, 50), ops="+-", seed=1)
    for example in hard.examples:
        ops = _check_solution(example.problem, example.meta["solution"], example.answer)
        assert 4 <= len(ops) <= 6 and set(ops) <= {"+", "-"}
        operands = [int(m) for m in re.findall(r"\d+", example.problem)]
        assert all(10 <= n <= 50 for n in operands)
    capped = load_task("arithmetic", limit=200, ops="*", max_factor=5, max_value=100, groups=0.0, seed=1)
    for example in capped.examples:
        ops = _check_solution(example.problem, example.meta["solution"], example.answer)
        assert set(ops) == {"*"} and int(example.answer) <= 100 and not example.meta["grouped"]
    grouped = load_task("arithmetic", limit=100, ops="+*", groups=1.0, seed=1).examples
    assert all(e.meta["grouped"] and " bags with " in e.problem for e in grouped)


def test_patterns_fix_the_operations():
    task = load_task("arithmetic", limit=60, patterns=["+*", "+*", "-"], numbers=(2, 10), max_factor=2, groups=0.0)
    shapes = [e.meta["ops"] for e in task.examples]
    assert set(shapes) == {"+*", "-"} and shapes.count("+*") > shapes.count("-")
    for example in task.examples:
        _check_solution(example.problem, example.meta["solution"], example.answer)
        if example.meta["ops"] == "+*":
            assert example.meta["solution"].split("\n")[1].endswith(f"* 2 = {example.answer}")
            assert "doubles" in example.problem or "2 times as many" in example.problem
    grouped = load_task("arithmetic", limit=20, patterns=["*+"], groups=1.0).examples
    assert all(" bags with " in e.problem and e.meta["ops"] == "*+" for e in grouped)


def test_default_mix_is_half_the_oneshot_shape_on_small_numbers():
    task = load_task("arithmetic", limit=600)
    shapes = [e.meta["ops"] for e in task.examples]
    assert set(shapes) == {"+*", "++", "+-", "*+"}
    assert 0.4 < shapes.count("+*") / len(shapes) < 0.6
    assert any(e.meta["grouped"] for e in task.examples) and not all(e.meta["grouped"] for e in task.examples)
    assert all(int(e.answer) > 0 for e in task.examples)
    assert max(int(n) for e in task.examples for n in re.findall(r"\d+", e.problem)) <= 9
    doubling = [line for e in task.examples if not e.meta["grouped"] for line in e.meta["solution"].split("\n") if "*" in line]
    assert doubling and all(" * 2 = " in line for line in doubling)  # max_factor 2: "doubles", as in the one-shot


def test_reference_solutions_satisfy_the_rule_based_prm():
    prm = ArithmeticPRM()
    task = load_task("arithmetic", limit=200, ops="+-*/", steps=(2, 5), seed=2)
    for example in task.examples:
        lines = example.meta["solution"].split("\n")
        segments = [line + "\n" for line in lines[:-1]] + [lines[-1]]
        assert prm.score([example.problem], [segments]) == [[prm.config.right] * len(segments)]


@pytest.mark.parametrize(
    ("response", "gold", "expected"),
    [
        ("3 + 4 = 7\n7 * 2 = 14\nAnswer: 14", "14", True),
        ("Answer: 14 apples", "14", True),
        ("so the answer is \\boxed{14}", "14", True),
        ("Answer: 14.0", "14", True),
        ("Answer: 1,400", "1400", True),
        ("Answer: 13\nwait, no.\nAnswer: 14", "14", True),
        ("3 + 4 = 7\n7 * 2 = 14\nAnswer: 15", "14", False),
        ("3 + 4 = 7\n7 * 2 = 14", "14", False),  # no final answer line
        ("Answer: fourteen", "14", False),
        ("Answer: 14\nAnswer: 3", "14", False),  # the last answer counts
    ],
)
def test_grader_reads_the_final_answer(response, gold, expected):
    assert answer_matches(response, gold) is expected


def test_oneshot_template(qwen_tokenizer):
    task = load_task("arithmetic", split="test", limit=3)
    example = task.examples[0]
    messages = task.prompt(example)
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"] == ONESHOT_PROBLEM
    assert messages[1]["content"] == "3 + 4 = 7\n7 * 2 = 14\nAnswer: 14"
    assert task.grader(messages[1]["content"], "14")
    assert messages[2]["content"] == example.problem
    rendered = task.prompt(example, qwen_tokenizer)
    assert rendered.endswith(f"<|im_start|>user\n{example.problem}<|im_end|>\n<|im_start|>assistant\n")
    dataset = task.to_dataset()
    assert dataset[0]["prompt"] == messages and dataset[0]["answer"] == example.answer


def test_bad_options_raise_clear_errors():
    with pytest.raises(ValueError, match="takes no data_file"):
        load_task("arithmetic", data_file="x.jsonl")
    with pytest.raises(ValueError, match="split 'validation'"):
        load_task("arithmetic", split="validation")
    with pytest.raises(ValueError, match=r"steps=\(3, 2\): need 1 <= low <= high"):
        load_task("arithmetic", steps=(3, 2))
    with pytest.raises(ValueError, match="option ops: '\\+%' is not a non-empty string"):
        load_task("arithmetic", ops="+%")
    with pytest.raises(ValueError, match="option patterns: '' is not"):
        load_task("arithmetic", patterns=["+*", ""])
    with pytest.raises(ValueError, match="give a list of op strings"):
        load_task("arithmetic", patterns="+*")
    with pytest.raises(ValueError, match="drop steps/ops"):
        load_task("arithmetic", patterns=["+*"], steps=(2, 2))
    with pytest.raises(ValueError, match="give \\[low, high\\]"):
        load_task("arithmetic", numbers=[5])
    with pytest.raises(ValueError, match="found only 0 distinct train problems of 10"):
        load_task("arithmetic", limit=10, steps=(2, 2), numbers=(2, 2), ops="/")  # 2 / 2 = 1, then stuck
