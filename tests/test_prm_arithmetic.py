"""The rule-based arithmetic PRM on hand-written responses."""

from fractions import Fraction

import pytest

from prpo.prm import ArithmeticPRM, PRMError, load_prm
from prpo.prm.arithmetic import find_equations, problem_numbers

PROBLEM = "Tom has 3 boxes with 4 apples each. He eats 2 apples. How many apples are left?"
R, W, N = 0.9, 0.1, 0.5


@pytest.fixture
def prm() -> ArithmeticPRM:
    return ArithmeticPRM()


def score(prm, segments, problem=PROBLEM):
    return prm.score([problem], [segments])[0]


def test_right_reasoning_scores_right_from_the_first_equation(prm):
    assert score(prm, ["Each box has 4 apples.\n", "3 * 4 = 12\n", "12 - 2 = 10\n", "Answer: 10"]) == [N, R, R, R]


def test_wrong_equation_makes_that_segment_and_all_later_ones_wrong(prm):
    assert score(prm, ["3 * 4 = 12\n", "12 - 2 = 11\n", "So he has 11.\n", "Answer: 11"]) == [R, W, W, W]


def test_operand_not_established_earlier_is_wrong(prm):
    # 13 is neither in the problem nor a result: the step misreads the earlier result 12.
    assert score(prm, ["3 * 4 = 12\n", "13 - 2 = 11\n", "Answer: 11"]) == [R, W, W]
    assert score(ArithmeticPRM(ArithmeticPRM.Config(check_operands=False)), ["3 * 4 = 12\n", "13 - 2 = 11\n"]) == [R, R]


def test_answer_must_match_an_established_number(prm):
    assert score(prm, ["3 * 4 = 12\n12 - 2 = 10\n", "Answer: 9"]) == [R, W]
    assert score(prm, ["3 * 4 = 12\n12 - 2 = 10\n", "so the answer is \\boxed{10}."]) == [R, R]


def test_partial_equation_at_a_segment_cut_is_judged_once_complete(prm):
    # Qwen writes digits one token at a time, so entropy spikes often cut inside a number.
    assert score(prm, ["3 * 4 = 1", "2\n12 - 2 = 10\n"]) == [N, R]
    assert score(prm, ["3 * 4 = 12\n12 - 2 = 1", "1\nAnswer: 11"]) == [R, W]
    assert score(prm, ["3 * 4 = 12\n12 - ", "2 = 10"]) == [R, R]
    # The cut right after a complete equation: the next character is unknown until segment 2.
    assert score(prm, ["3 * 4 = 12", "\n12 - 2 = 10"]) == [N, R]
    # The last segment is final: its trailing equation is judged.
    assert score(prm, ["3 * 4 = 12\n", "12 - 2 = 11"]) == [R, W]


def test_no_equations_is_no_evidence(prm):
    assert score(prm, ["He has some apples left. ", "The answer is 10"]) == [N, N]
    assert score(prm, []) == []
    assert score(prm, [""]) == [N]


def test_equation_values_decimals_money_percent_and_parentheses():
    (money, rounded, parens, percent, chain, by_zero) = find_equations(
        "$1,200.50 + $3 = $1,203.50; 10 / 3 = 3.33; (2 + 3) * 4 = 20; 20% * 50 = 10; 2 + 2 = 4 = 5; 5 / 0 = 1"
    )
    assert money.is_right() and rounded.is_right() and parens.is_right() and percent.is_right()
    assert [op.value for op in parens.operands] == [2, 3, 4]
    assert not chain.is_right() and not by_zero.is_right()
    # Rounding is accepted only to the written decimals; an integer result must be exact.
    (loose, exact_int) = find_equations("10 / 3 = 3.3\n10 / 3 = 3\n")
    assert loose.is_right() and not exact_int.is_right()
    assert find_equations("x = 5 and 7 = 7 and step 3: done") == []
    assert [eq.is_right() for eq in find_equations("2 × 3 = 6, 8 ÷ 2 = 4, 3 \\times 3 = 9, -3 + 5 = 2")] == [True] * 4


def test_problem_numbers_include_words_and_percent():
    values = problem_numbers("Twenty-five kids, a dozen eggs, 20% off and half of $1,000.")
    assert {Fraction(25), Fraction(12), Fraction(20), Fraction(1, 5), Fraction(1, 2), Fraction(1000)} <= set(values)


def test_number_word_operand_is_known(prm):
    assert score(prm, ["12 * 2 = 24\n"], problem="A dozen eggs cost twice as much.") == [R]


def test_scores_follow_config_and_noise_is_deterministic():
    clean = ArithmeticPRM(ArithmeticPRM.Config(right=0.8, wrong=0.2, no_evidence=0.6))
    assert score(clean, ["no math. ", "3 * 4 = 12\n", "12 - 2 = 11"]) == [0.6, 0.8, 0.2]

    noisy = ArithmeticPRM(ArithmeticPRM.Config(noise=0.3, seed=7))
    problems = [f"Tom has {k} boxes with 4 apples each." for k in range(200)]
    responses = [[f"{k} * 4 = {4 * k}\n", f"{4 * k} + 1 = {4 * k + 1}"] for k in range(200)]
    first = noisy.score(problems, responses)
    assert first == noisy.score(problems, responses)  # the same input gets the same score
    flipped = sum(s == W for row in first for s in row) / (2 * len(responses))
    assert 0.2 < flipped < 0.4
    other_seed = ArithmeticPRM(ArithmeticPRM.Config(noise=0.3, seed=8)).score(problems, responses)
    assert other_seed != first
    assert all(s == N for s in noisy.score(["p"], [["no evidence here"]])[0])


def test_config_is_validated_through_load_prm():
    assert load_prm({"type": "arithmetic", "right": 0.8, "constants": [1, 7]}).config.constants == (1, 7)
    with pytest.raises(PRMError, match="unknown field 'rigth'"):
        load_prm({"type": "arithmetic", "rigth": 0.8})
    with pytest.raises(PRMError, match="right = 1.5 must be in"):
        load_prm({"type": "arithmetic", "right": 1.5})
    with pytest.raises(PRMError, match="field 'noise' = 'high'"):
        load_prm({"type": "arithmetic", "noise": "high"})
