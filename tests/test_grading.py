"""Answer extraction and subprocess-isolated math-verify grading."""

from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from prpo.grading import extract_boxed, extract_final_answer, grading_stats, is_correct, is_correct_many


def _delta(before: dict[str, int]) -> dict[str, int]:
    after = grading_stats()
    return {key: after[key] - before[key] for key in after}


# ---------------------------------------------------------------------------------------------
# extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so $\boxed{5}$.", "5"),
        (r"\boxed{1} then \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\boxed{a_{b_{c_{d}}}}", r"a_{b_{c_{d}}}"),
        (r"\fbox{7}", "7"),
        (r"The answer is \boxed 42$ ok", "42"),
        (r"\boxed {3}", "3"),
        ("no box here", None),
        (r"\boxed{2} and then \boxed{\frac{1}{", None),  # the last box is truncated
        (r"\boxed{}", None),
        (r"\boxedx{3}", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3 + 4 = 7\n7 * 2 = 14\nAnswer: 14", "14"),
        ("Answer: 3\nwait\nAnswer: 14.", "14"),
        ("So the answer is 12.", "12"),
        ("The final answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
        ("**Answer:** 9", "9"),
        ("Answer: 1\nso \\boxed{2}", "2"),  # a box wins over an answer line
        ("Answer:", None),
        ("I am not sure.", None),
    ],
)
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


# ---------------------------------------------------------------------------------------------
# grading


def test_fixture_answers_verify_against_themselves_and_not_each_other(fixture_data):
    # Every format's golds: MATH (tuple, \\text{}, fractions), GSM8K (the number after ####), AIME, AMC.
    golds = [json.loads(line)["answer"] for line in (fixture_data / "math500.jsonl").read_text().splitlines()]
    golds += [json.loads(line)["answer"].split("####")[-1].strip().replace(",", "")
              for line in (fixture_data / "gsm8k_test.jsonl").read_text().splitlines()]
    golds += [row["final_answer"] for row in json.loads((fixture_data / "math_train_answers.json").read_text())
              if row["final_answer"]]
    assert len(golds) == 13 and golds[8] == "2125"
    before = grading_stats()
    assert is_correct_many([f"The answer is $\\boxed{{{gold}}}$." for gold in golds], golds) == [True] * 13
    shifted = golds[1:] + golds[:1]  # each response against the next problem's gold
    assert is_correct_many([f"\\boxed{{{gold}}}" for gold in golds], shifted) == [False] * 13
    assert _delta(before)["graded"] == 26 and _delta(before)["correct"] == 13


def test_math500_answers_verify_against_themselves(shared_data):
    golds = [json.loads(line)["answer"] for line in (shared_data / "math500.jsonl").read_text().splitlines()]
    assert len(golds) == 500
    before = grading_stats()
    results = is_correct_many([f"The answer is $\\boxed{{{gold}}}$." for gold in golds], golds)
    failures = [gold for gold, ok in zip(golds, results) if not ok]
    assert failures == []
    assert _delta(before)["graded"] == 500 and _delta(before)["correct"] == 500


def test_gsm8k_answers_verify_against_themselves(shared_data):
    rows = [json.loads(line) for line in (shared_data / "gsm8k_test.jsonl").read_text().splitlines()]
    golds = [row["answer"].split("####")[-1].strip().replace(",", "") for row in rows]
    results = is_correct_many([f"\\boxed{{{gold}}}" for gold in golds], golds)
    assert [gold for gold, ok in zip(golds, results) if not ok] == []
    wrong = is_correct_many([f"\\boxed{{{int(gold) + 1}}}" for gold in golds[:50]], golds[:50])
    assert not any(wrong)


@pytest.mark.parametrize(
    ("response", "gold"),
    [
        (r"\boxed{\frac12}", "0.5"),
        (r"\boxed{0.5}", r"\frac{1}{2}"),
        (r"\boxed{\dfrac{3}{4}}", "3/4"),
        (r"\boxed{(1, 2)}", "(1,2)"),
        (r"\boxed{1,000}", "1000"),
        (r"\boxed{025}", "25"),
        (r"\boxed{4.0}", "4"),
        (r"\boxed{x^2+1}", "1+x^2"),
        (r"\boxed{\text{Evelyn}}", r"\text{Evelyn}"),
        ("3 + 4 = 7\n7 * 2 = 14\nAnswer: 14", "14"),
        (r"so $\boxed{2\sqrt{2}}$", r"$\sqrt{8}$"),
    ],
)
def test_equivalent_forms_verify(response, gold):
    assert is_correct(response, gold)


@pytest.mark.parametrize(
    ("response", "gold"),
    [
        (r"\boxed{\frac{1}{3}}", r"\frac{1}{2}"),
        (r"\boxed{(2, 1)}", "(1,2)"),
        (r"\boxed{15}", "14"),
        (r"\boxed{x^2-1}", "x^2+1"),
        ("the answer is 14 apples but I stopped", "15"),
    ],
)
def test_wrong_answers_do_not_verify(response, gold):
    assert not is_correct(response, gold)


def test_response_without_answer_is_counted_unparsed():
    before = grading_stats()
    assert is_correct_many(["I think it is big.", r"\boxed{3"], ["3", "3"]) == [False, False]
    assert _delta(before)["unparsed"] == 2


@pytest.mark.parametrize(
    "answer",
    [
        "\\frac{1}{" * 1000 + "2" + "}" * 1000,  # 10,000 chars; sympy needs many seconds
        "9^{9^{9^{9^{9}}}}" + " " * 9983,  # a C-level power that never returns nor sees signals
    ],
    ids=["nested-frac", "power-tower"],
)
def test_adversarial_latex_times_out_and_is_counted(answer):
    assert len(answer) >= 10_000
    is_correct(r"\boxed{1}", "1")  # a warm grading process, so the hang guard below measures grading
    before = grading_stats()
    start = time.monotonic()
    result = is_correct(f"\\boxed{{{answer}}}", "2", timeout=1.0)
    elapsed = time.monotonic() - start
    assert result is False
    assert _delta(before)["timeouts"] == 1
    assert elapsed < 3 * 1.0  # hang guard: the job is killed at its timeout
    assert is_correct(r"\boxed{2}", "2")  # the pool recovers


def test_batch_keeps_other_results_around_a_timeout():
    tower = r"\boxed{9^{9^{9^{9^{9}}}}}"
    responses = [r"\boxed{1}", tower, r"\boxed{3}", r"\boxed{5}", tower, r"\boxed{6}"]
    golds = ["1", "2", "3", "4", "2", "6"]
    before = grading_stats()
    assert is_correct_many(responses, golds, timeout=1.0) == [True, False, True, False, False, True]
    assert _delta(before)["timeouts"] == 2


def test_usable_from_threads():
    pairs = [(f"\\boxed{{{i}/2}}", f"{i / 2}") for i in range(24)] + [(r"\boxed{7}", "8")] * 8
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda pair: is_correct(*pair), pairs))
    assert results == [True] * 24 + [False] * 8


def _grade_in_child(pair: tuple[str, str]) -> bool:
    return is_correct(*pair)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_usable_from_worker_processes(method):
    is_correct(r"\boxed{1}", "1")  # the parent holds live grading processes before forking
    pairs = [(r"\boxed{\frac{6}{4}}", "1.5"), (r"\boxed{2}", "3")]
    with multiprocessing.get_context(method).Pool(2) as pool:  # daemonic workers
        assert pool.map(_grade_in_child, pairs) == [True, False]
    assert is_correct(r"\boxed{1}", "1")  # the parent's pool is untouched


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="2 responses but 1 gold"):
        is_correct_many(["a", "b"], ["1"])
    with pytest.raises(TypeError, match="item 0"):
        is_correct_many([r"\boxed{4}"], [4.0])
    with pytest.raises(ValueError, match="timeout"):
        is_correct(r"\boxed{4}", "4", timeout=0)


def test_unreadable_gold_answers_are_counted_as_errors():
    """A gold answer math-verify cannot read is a data problem: graded False and counted in `errors`."""
    before = grading_stats()
    assert is_correct_many([r"\boxed{1}", r"\boxed{1}", r"\boxed{1}"], ["", "}{", "1"]) == [False, False, True]
    assert _delta(before) == {"graded": 3, "correct": 1, "unparsed": 0, "timeouts": 0, "errors": 2}
