"""The benchmark's exact paired tests (`prpo.bench.stats`), with hand-computed values, and their summary table."""

from __future__ import annotations

import json

import pytest

from prpo.bench.stats import (
    binomial_two_sided,
    compare,
    ended_collapsed,
    established,
    mcnemar,
    sign_test,
)
from prpo.bench.summary import markdown_of_tests, paired_tests, samples_digest


def test_binomial_two_sided_by_hand():
    assert binomial_two_sided(0, 5) == 2 / 32  # 5 seeds, all one way: the smallest p 5 seeds allow
    assert binomial_two_sided(5, 5) == 2 / 32
    assert binomial_two_sided(1, 4) == 2 * (1 + 4) / 16  # 0.625
    assert binomial_two_sided(4, 8) == 1.0  # 2 * (1 + 8 + 28 + 56 + 70) / 256 > 1
    assert binomial_two_sided(0, 0) == 1.0


def test_sign_test_drops_zeros():
    result = sign_test([0.1, 0.2, -0.1, 0.0, 0.3])
    assert result == {"positive": 3, "negative": 1, "zero": 1, "p": 0.625}


def test_mcnemar_counts_the_discordant_pairs():
    result = mcnemar([True, True, False, False, True], [False, True, False, True, False])
    assert result == {"only_a": 2, "only_b": 1, "pairs": 5, "p": 1.0}  # 2 * P(X <= 1 | 3) = 1
    assert mcnemar([True] * 8, [False] * 8)["p"] == 2 / 256
    with pytest.raises(ValueError, match="3 outcomes against 2"):
        mcnemar([True] * 3, [True] * 2)


def run(seed: int, accuracies: list[float], answer_rate: float = 1.0, correct: list[int] | None = None) -> dict:
    rows = [{"step": 10 * i, "heldout/accuracy": a, "heldout/final_answer_rate": 1.0, "heldout/length": 30.0}
            for i, a in enumerate(accuracies)]
    rows[-1]["heldout/final_answer_rate"] = answer_rate
    if correct is not None:
        rows[-1]["heldout/correct"] = correct
    return {"seed": seed, "eval": rows, "train": []}


def test_ended_collapsed_is_judged_at_the_final_evaluation():
    assert ended_collapsed(run(0, [0.4, 0.1, 0.19]))  # below half the start (0.2)
    assert not ended_collapsed(run(0, [0.4, 0.0, 0.2]))  # a dip to 0 on the way, recovered to half the start
    assert ended_collapsed(run(0, [0.4, 0.4, 0.4], answer_rate=0.49))  # answers in fewer than half


def test_compare_pairs_by_seed_and_pools_problems():
    a = [run(0, [0.5, 0.6], correct=[1, 1, 0, 1]), run(1, [0.5, 0.1], correct=[0, 0, 0, 1]), run(2, [0.5, 0.7])]
    b = [run(0, [0.5, 0.5], correct=[1, 0, 0, 0]), run(1, [0.5, 0.5], correct=[1, 0, 1, 1]), run(3, [0.5, 0.9])]
    result = compare(a, b)
    assert result["seeds"] == {"n": 2}  # seeds 0 and 1 in both
    # differences +0.1 and -0.4: mean -0.15, sd 0.25 * sqrt(2), half-width t95(1) * 0.25 = 12.706 * 0.25
    assert result["final_greedy"] == {"positive": 1, "negative": 1, "zero": 0, "p": 1.0, "mean": pytest.approx(-0.15),
                                      "half_width": pytest.approx(3.1765), "established": False}
    assert result["ended_collapsed"] == {"only_a": 1, "only_b": 0, "pairs": 2, "p": 1.0}  # seed 1: 0.1 < 0.25
    # problems right only under A: seed 0 problems 1 and 3; only under B: seed 1 problems 0 and 2
    assert result["by_problem"] == {"only_a": 2, "only_b": 2, "pairs": 8, "p": 1.0}
    assert "by_problem" not in compare([run(0, [0.5, 0.6])], [run(0, [0.5, 0.5])])  # recorded without answers


def test_established_needs_one_sign_in_every_seed_and_an_interval_without_zero():
    # mean 0.18, sd 0.0837, half-width 2.776 * 0.0837 / sqrt(5) = 0.104 < 0.18
    assert established([0.1, 0.2, 0.3, 0.1, 0.2])
    assert established([-0.1, -0.2, -0.3, -0.1, -0.2])
    assert not established([0.1, 0.2, 0.3, 0.1, 0.0])  # a tie: not every seed agrees
    assert not established([0.1, 0.2, 0.3, 0.1, -0.05])
    # all positive, but mean 0.108 with half-width 2.776 * 0.219 / sqrt(5) = 0.272: the interval holds 0
    assert not established([0.01, 0.5, 0.01, 0.01, 0.01])
    assert not established([0.3])  # one seed has no interval
    assert not established([])


def test_summary_tests_read_the_raw_run_files(tmp_path):
    def write(method: str, seed: int, final: float, correct: list[int]) -> None:
        folder = tmp_path / "runs" / "easy" / "clean" / method / f"seed-{seed}"
        folder.mkdir(parents=True)
        rows = [{"step": 0, "heldout/accuracy": 0.5, "heldout/sampled_accuracy": 0.4, "heldout/length": 30.0,
                 "heldout/final_answer_rate": 1.0},
                {"step": 10, "heldout/accuracy": final, "heldout/sampled_accuracy": 0.4, "heldout/length": 30.0,
                 "heldout/final_answer_rate": 1.0, "heldout/correct": correct}]
        (folder / "eval.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    for seed in range(5):
        write("grpo", seed, 0.5, [1, 0, 1, 0])
        write("prpo", seed, 0.75, [1, 1, 1, 0])
    rows = paired_tests(tmp_path)
    assert [(r["method"], r["baseline"]) for r in rows] == [("prpo", "grpo")]
    assert rows[0]["final_greedy"]["p"] == 2 / 32 and rows[0]["by_problem"] == {"only_a": 5, "only_b": 0, "pairs": 20,
                                                                               "p": 2 / 32}
    assert ("| easy | clean | prpo | grpo | 5 | +25.0 ± 0.0 | 5 / 0 (0.0625) | yes | 0 / 0 (1) | 5 / 0 (0.0625) |"
            in markdown_of_tests(rows))


def test_samples_digest_shows_the_last_step_of_seed_0_and_of_collapsed_runs(tmp_path):
    def write(seed: int, final: float, responses: dict[int, list[str]]) -> None:
        folder = tmp_path / "runs" / "easy" / "biased" / "prpo" / f"seed-{seed}"
        folder.mkdir(parents=True)
        rows = [{"step": step, "heldout/accuracy": accuracy, "heldout/sampled_accuracy": 0.4, "heldout/length": 30.0,
                 "heldout/final_answer_rate": 1.0} for step, accuracy in ((0, 0.6), (10, final))]
        (folder / "eval.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        samples = [{"step": step, "response": text, "correct": text.endswith("4"), "reward": 1.0 if text.endswith("4") else -1.0}
                   for step, texts in responses.items() for text in texts]
        (folder / "samples.jsonl").write_text("".join(json.dumps(row) + "\n" for row in samples))

    write(0, 0.7, {1: ["early"], 10: ["2 + 2 = 4\nAnswer: 4", "2 + 2 = 5\nAnswer: 5"]})
    write(1, 0.7, {10: ["not shown: seed 1 did not collapse"]})
    write(2, 0.2, {10: ["= = = = =", "+ + +", "a", "b", "fifth: beyond the 4 shown"]})  # 0.2 < 0.6 / 2
    text = samples_digest(tmp_path)
    assert "## easy / biased PRM / prpo" in text
    assert "seed 0, step 10: final greedy 70%, answers 100%, not collapsed" in text
    assert "right +1.0  2 + 2 = 4 | Answer: 4" in text and "wrong -1.0  2 + 2 = 5 | Answer: 5" in text
    assert "early" not in text and "seed 1" not in text and "not shown" not in text
    assert "seed 2, step 10: final greedy 20%, answers 100%, ended collapsed" in text
    assert "wrong -1.0  = = = = =" in text and "fifth" not in text
    for path in tmp_path.glob("runs/*/*/*/seed-*/samples.jsonl"):
        path.unlink()
    assert samples_digest(tmp_path) == ""  # evaluations and metrics only: nothing to show, nothing written


def test_learning_rates_are_chosen_by_final_sampled_accuracy_with_ties_to_the_lower(tmp_path, capsys):
    from prpo.bench.summary import choose_learning_rates
    from prpo.commands.bench import main as bench_main

    # sampled accuracy at the end, per rate and method (2 seeds each): grpo best at 1e-4, prpo tied at 1e-4 and 2e-4
    finals = {1e-4: {"grpo": (0.5, 0.6), "prpo": (0.4, 0.4)}, 2e-4: {"grpo": (0.5, 0.5), "prpo": (0.3, 0.5)}}
    folders = []
    for lr, by_method in finals.items():
        folder = tmp_path / f"lr-{lr}"
        folder.mkdir()
        (folder / "bench.json").write_text(json.dumps({"preset": {"learning_rates": {"grpo": lr, "prpo": lr}},
                                                       "levels": ["medium"]}))
        for method, values in by_method.items():
            for seed, value in enumerate(values):
                run = folder / "runs" / "medium" / "clean" / method / f"seed-{seed}"
                run.mkdir(parents=True)
                rows = [{"step": step, "heldout/accuracy": 0.3, "heldout/sampled_accuracy": sampled,
                         "heldout/length": 30.0, "heldout/final_answer_rate": 1.0}
                        for step, sampled in ((0, 0.2), (30, value))]
                (run / "eval.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        folders.append(folder)
    chosen = choose_learning_rates(folders, "medium")
    assert chosen["grpo"] == {"chosen": 1e-4, "sampled": {1e-4: pytest.approx(0.55), 2e-4: pytest.approx(0.5)}}
    assert chosen["prpo"]["chosen"] == 1e-4  # 0.4 and 0.4: the lower rate
    assert bench_main(["--choose-lr", *map(str, folders), "--levels", "medium"]) == 0
    assert "--method-lr grpo=0.0001 prpo=0.0001" in capsys.readouterr().out
