"""The rule-based arithmetic PRM on hand-written responses.

The first tests are the validity judgement (`mode: validity`, `require_answer: false`): what a PRM
without the reference can check. The reference judgement (the default) follows.
"""

import logging
import random
from fractions import Fraction

import pytest

from prpo.bench.arithmetic_family import terse_problem
from prpo.prm import ArithmeticPRM, PRMError, load_prm
from prpo.prm.arithmetic import (
    REFERENCE_PARSERS,
    Reference,
    ReferenceParserEntry,
    ReferenceStep,
    find_reference,
    register_reference_parser,
)
from prpo.prm.arithmetic_text import find_equations, problem_numbers
from prpo.tasks import load_task
from prpo.tasks.arithmetic import Chain, Step, parse_problem, render_problem

PROBLEM = "Tom has 3 boxes with 4 apples each. He eats 2 apples. How many apples are left?"
R, W, N = 0.9, 0.1, 0.5
VALIDITY = {"type": "arithmetic", "mode": "validity", "require_answer": False}
OLD = {**VALIDITY, "carry_right": True}  # the judgement before the reference mode, exactly


@pytest.fixture
def prm() -> ArithmeticPRM:
    return load_prm(VALIDITY)


def score(prm, segments, problem=PROBLEM):
    return prm.score([problem], [segments])[0]


def test_right_reasoning_scores_right_from_the_first_equation(prm):
    assert score(prm, ["Each box has 4 apples.\n", "3 * 4 = 12\n", "12 - 2 = 10\n", "Answer: 10"]) == [N, R, R, R]


def test_wrong_equation_makes_that_segment_and_all_later_ones_wrong(prm):
    assert score(prm, ["3 * 4 = 12\n", "12 - 2 = 11\n", "So he has 11.\n", "Answer: 11"]) == [R, W, W, W]


def test_operand_not_established_earlier_is_wrong(prm):
    # 13 is neither in the problem nor a result: the step misreads the earlier result 12.
    assert score(prm, ["3 * 4 = 12\n", "13 - 2 = 11\n", "Answer: 11"]) == [R, W, W]
    assert score(load_prm({**VALIDITY, "check_operands": False}), ["3 * 4 = 12\n", "13 - 2 = 11\n"]) == [R, R]


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
    clean = load_prm({**VALIDITY, "right": 0.8, "wrong": 0.2, "no_evidence": 0.6})
    assert score(clean, ["no math. ", "3 * 4 = 12\n", "12 - 2 = 11"]) == [0.6, 0.8, 0.2]

    noisy = load_prm({**VALIDITY, "noise": 0.3, "seed": 7})
    problems = [f"Tom has {k} boxes with 4 apples each." for k in range(200)]
    responses = [[f"{k} * 4 = {4 * k}\n", f"{4 * k} + 1 = {4 * k + 1}"] for k in range(200)]
    first = noisy.score(problems, responses)
    assert first == noisy.score(problems, responses)  # the same input gets the same score
    flipped = sum(s == W for row in first for s in row) / (2 * len(responses))
    assert 0.2 < flipped < 0.4
    other_seed = load_prm({**VALIDITY, "noise": 0.3, "seed": 8}).score(problems, responses)
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


# ---------------------------------------------------------------------------------------------
# the reference judgement (the default)

# The issue-16 problem, in the generator's words: 3 + 8 = 11, 11 * 2 = 22.
MIA = (
    "Mia has 3 stickers. Mia finds 8 more stickers. Then the number of stickers Mia has doubles. "
    "How many stickers does Mia have now?"
)


@pytest.fixture
def ref() -> ArithmeticPRM:
    return load_prm("arithmetic")


def test_default_is_the_reference_judgement_and_mode_is_validated():
    assert load_prm("arithmetic").config.mode == "reference"
    assert load_prm({"type": "arithmetic", "mode": "validity"}).config.mode == "validity"
    with pytest.raises(PRMError, match="field 'mode' = 'strict'"):
        load_prm({"type": "arithmetic", "mode": "strict"})
    with pytest.raises(ValueError, match="mode = 'strict': use 'reference' or 'validity'"):
        ArithmeticPRM.Config(mode="strict")


@pytest.mark.parametrize(
    "options",
    [
        {},  # the default mix, 25% "bags" openings
        {"ops": "+-*/", "steps": (2, 5), "max_factor": 4, "seed": 2},  # every phrase, halves and piles
        {"patterns": ["+*"], "numbers": [2, 12], "max_factor": 3, "groups": 0.0},  # the quickstart's task
        {"split": "test", "groups": 1.0},
    ],
)
def test_generated_problems_give_back_their_chain_and_its_solution_scores_right(ref, options):
    for example in load_task("arithmetic", limit=60, **options).examples:
        chain = parse_problem(example.problem)
        assert chain is not None and chain.solution == example.meta["solution"], example.problem
        lines = example.meta["solution"].split("\n")
        segments = [line + "\n" for line in lines[:-1]] + [lines[-1]]
        assert ref.score([example.problem], [segments]) == [[R] * len(segments)]
        # the bench's terse telling of the same chain has the same reference
        terse = terse_problem(example.meta["chain"].steps)
        assert find_reference(terse) == find_reference(example.problem)


def test_story_parser_reads_every_phrase_and_nothing_else():
    chain = Chain(5, (Step("*", 3, 5, 15), Step("-", 4, 15, 11), Step("+", 1, 11, 12), Step("/", 2, 12, 6)), True)
    problem = render_problem(chain, "Zoe", "shells", random.Random(0))
    assert parse_problem(problem) == chain
    assert parse_problem(problem.replace("How many", "How much")) is None
    assert parse_problem("Zoe has 5 shells. How many shells does Zoe have now?") is None  # no step
    assert parse_problem(PROBLEM) is None and find_reference(PROBLEM) is None
    assert find_reference("3 + 4 then * 2 then - 5") == Reference(
        tuple(map(Fraction, (3, 4, 2, 5))),
        (ReferenceStep((3, 4), 7), ReferenceStep((7, 2), 14), ReferenceStep((14, 5), 9)),
        Fraction(9),
    )


def test_issue_16_samples_are_wrong_where_the_old_judgement_paid_them(ref):
    # 3 * 8 = 24 is true, but 24 is no value of the chain 3 + 8 = 11, 11 * 2 = 22.
    first = ["Mia has 3 * 8 = 24 stickers. ", "Mia has doubles ", "3 * 2 = 6 stickers now."]
    # 8 + 3 = 11 is the first step; "doubled" claims no number; "12 stickers" is no value of the chain.
    second = ["8 + 3 = 11\n", "Mia has doubled the number of stickers, ", "Mia now has 12 stickers."]
    assert score(ref, first, MIA) == [W, W, W]
    assert score(ref, second, MIA) == [R, N, W]
    assert score(load_prm(OLD), first, MIA) == [R, R, R]
    assert score(load_prm(OLD), second, MIA) == [R, R, R]


@pytest.mark.parametrize(
    "segments",
    [
        ["3 + 8 = 11\n", "11 * 2 = 22\n", "Answer: 22"],
        ["8 + 3 = 11\n", "2 * 11 = 22\n", "Answer: 22"],  # both steps commuted
        ["8 + 3 = 11\n", "11 + 11 = 22\n", "Answer: 22"],  # doubling as a sum
        ["1. 3 + 8 = 11\n", "2. (3 + 8) * 2 = 22\n", "Step 3: \\boxed{22}"],  # list markers claim nothing
        ["Mia has 3 stickers and finds 8, so 11.\n", "11 * 2 = 22\n", "Answer: 22"],  # a step in the head
    ],
)
def test_the_chain_in_any_order_it_allows_is_right(ref, segments):
    assert score(ref, segments, MIA) == [R, R, R]


def test_steps_of_a_plugged_in_family_may_come_in_any_order_their_inputs_allow(monkeypatch):
    # (3 * 4) + (5 * 6): the two products are independent, the sum needs both.
    steps = (ReferenceStep((3, 4), 12), ReferenceStep((5, 6), 30), ReferenceStep((12, 30), 42))
    reference = Reference(tuple(map(Fraction, (3, 4, 5, 6))), steps, Fraction(42))
    parser = ReferenceParserEntry("products", lambda p: reference if p.startswith("Products:") else None)
    monkeypatch.setitem(REFERENCE_PARSERS, "products", parser)
    prm, problem = load_prm("arithmetic"), "Products: 3 x 4 plus 5 x 6"
    assert score(prm, ["5 * 6 = 30\n", "4 * 3 = 12\n", "12 + 30 = 42\n", "Answer: 42"], problem) == [R, R, R, R]
    assert score(prm, ["3 * 5 = 15\n", "Answer: 42"], problem) == [W, W]
    with pytest.raises(ValueError, match="reference parser 'story' is already registered"):
        register_reference_parser("story")(lambda p: None)
    assert REFERENCE_PARSERS.lookup("story").name == "story"
    with pytest.raises(ValueError, match="unknown reference parser 'nope'; known: products, story, terse"):
        REFERENCE_PARSERS.lookup("nope")


def test_a_detour_to_the_right_value_is_wrong_from_its_first_step_off_the_chain(ref):
    # 3 * 2 + 8 * 2 = 22 is true, but 6 is no value of the chain: a checker without a solver of its
    # own cannot tell this detour from "3 * 8 = 24", so it is wrong, and the error is kept to the
    # end like any other. The outcome reward still pays the right answer (R = +1).
    assert score(ref, ["3 * 2 = 6\n", "8 * 2 = 16\n", "6 + 16 = 22\n", "Answer: 22"], MIA) == [W, W, W, W]


def test_a_true_equation_off_the_chain_is_wrong(ref):
    # 11 - 3 = 8 is true and its numbers are known, but 8 is no result of a step.
    assert score(ref, ["3 + 8 = 11\n", "11 - 3 = 8\n", "11 * 2 = 22\nAnswer: 22"], MIA) == [R, W, W]
    # 13 is neither known nor a value of the chain: the operand is misread.
    assert score(ref, ["3 + 8 = 11\n", "13 * 2 = 26\n"], MIA) == [R, W]


def test_numbers_claimed_in_words_are_claims(ref):
    assert score(ref, ["3 + 8 = 11\n", "Mia now has twelve stickers.\n", "Answer: 22"], MIA) == [R, W, W]
    assert score(ref, ["3 + 8 = 11\n", "Mia now has twenty-two stickers.\n", "Answer: 22"], MIA) == [R, R, R]
    # Restating a known number claims nothing new; the gold before its step: no evidence (known from then on).
    jump = ["Mia has 3 stickers.\n", "Mia ends with 22.\n", "3 + 8 = 11\n", "11 * 2 = 22\n", "Answer: 22"]
    assert score(ref, jump, MIA) == [N, N, R, R, R]
    # A number cut by a segment boundary is judged once complete: "1" | "1 stickers" is 11.
    assert score(ref, ["Mia now has 1", "1 stickers.\n", "Answer: 22"], MIA) == [N, R, R]


def test_final_answer_is_judged_against_the_gold(ref):
    assert score(ref, ["3 + 8 = 11\n", "11 * 2 = 22\n", "Answer: 23"], MIA) == [R, R, W]
    assert score(ref, ["Answer: 22"], MIA) == [R]  # an answer without equations: the gold is checkable
    assert score(ref, ["Answer: 21"], MIA) == [W]
    assert score(ref, ["Answer: 22\n", "Answer: 22\n", "\\boxed{22}"], MIA) == [R, N, N]  # said again: nothing new
    assert score(ref, ["3 + 8 = 11\n", "11 * 2 = 22\n", "Answer: Mia has 22"], MIA) == [R, R, W]  # no number
    # without the reference an answer with no equation before it is no evidence
    assert score(load_prm({"type": "arithmetic", "mode": "validity"}), ["Answer: 22"], MIA) == [N]


def test_a_finished_response_without_a_final_answer_ends_wrong(ref):
    assert score(ref, ["3 + 8 = 11\n", "11 * 2 = 22\n"], MIA) == [R, W]
    assert score(ref, ["Mia is happy."], MIA) == [W]
    assert score(ref, [], MIA) == []
    assert score(load_prm({"type": "arithmetic", "mode": "validity"}), ["3 * 4 = 12\n", "12 - 2 = 10\n"]) == [R, W]
    assert score(load_prm({"type": "arithmetic", "require_answer": False}), ["3 + 8 = 11\n", "11 * 2 = 22\n"], MIA) == [
        R, R
    ]


BODIES = [
    [],
    ["3 + 8 = 11\n", "11 * 2 = 22\n"],
    ["3 + 8 = 11\n", "Mia has doubled the number of stickers.\n"],
    ["3 * 8 = 24\n"],
    ["Mia has lots of stickers.\n"],
]


@pytest.mark.parametrize("spec", [{"type": "arithmetic"}, {"type": "arithmetic", "mode": "validity"}])
def test_issue_11_no_answer_never_ends_above_a_wrong_answer(spec):
    prm = load_prm(spec)
    for body in BODIES:
        for problem, wrong in [(MIA, "Answer: 23"), (PROBLEM, "Answer: 99")]:
            no_answer = score(prm, body + ["So that is it."], problem)
            wrong_answer = score(prm, body + [wrong], problem)
            assert no_answer[-1] == W and no_answer[-1] <= wrong_answer[-1], (body, problem)


@pytest.mark.parametrize("spec", [{"type": "arithmetic"}, {"type": "arithmetic", "mode": "validity"}])
def test_issue_11_text_that_claims_nothing_scores_below_a_verified_step(spec):
    prm = load_prm(spec)
    filler = ["3 + 8 = 11\n", "Mia has doubled the stickers.\n", "She is happy.\n", "11 * 2 = 22\n", "Answer: 22"]
    scores = score(prm, filler, MIA)
    assert scores == [R, N, N, R, R] and N < R
    # A step done again claims nothing new either (reference mode); the old rule kept R after one right step.
    assert score(load_prm("arithmetic"), ["3 + 8 = 11\n", "8 + 3 = 11\n", "Answer: 22"], MIA)[1] == N
    assert score(load_prm(OLD), filler, MIA) == [R, R, R, R, R]


def test_an_unreadable_problem_falls_back_to_validity_with_one_log_line(ref, caplog):
    responses = [["3 * 4 = 12\n", "Nice.\n", "12 - 2 = 10\n", "Answer: 10"], ["3 * 4 = 13\n", "Answer: 13"]]
    other = "Ann has 7 pens and buys 5 more. How many pens?"
    with caplog.at_level(logging.WARNING, logger="prpo.prm.arithmetic"):
        first = ref.score([PROBLEM, PROBLEM], responses)
        ref.score([other], [["7 + 5 = 12\n", "Answer: 12"]])
    assert first == load_prm({"type": "arithmetic", "mode": "validity"}).score([PROBLEM, PROBLEM], responses)
    assert first == [[R, N, R, R], [W, W]]
    assert len(caplog.records) == 1 and "judged by validity only" in caplog.records[0].message
    assert PROBLEM[:40] in caplog.records[0].message


def test_a_right_solution_cut_anywhere_has_no_wrong_segment_and_ends_right(ref):
    # Entropy segments cut inside numbers and words; a number, equation or answer touching a cut is
    # judged once the next segment shows how it goes on, so no cut can make a right step wrong.
    text = "Mia has 3 + 8 = 11 stickers.\nThen twice that: 2 * 11 = 22\nAnswer: 22"
    for i in range(1, len(text)):
        for j in range(i + 1, min(i + 4, len(text))):  # short middle segments: two cuts in one number
            scores = score(ref, [text[:i], text[i:j], text[j:]], MIA)
            assert W not in scores and scores[-1] == R, (text[:i], text[i:j])
