"""Benchmark pieces: problems and step errors, the character tokenizer, and the summary statistics."""

from __future__ import annotations

import json
import math
import random

import pytest

from prpo.bench.data import (
    Step,
    bench_task,
    dropped_carry,
    parse_solution,
    slip,
    terse_problem,
    warm_start_rows,
    with_step_errors,
    write_solution,
)
from prpo.bench.policy import char_tokenizer
from prpo.bench.summary import markdown, mean_ci, paired_difference, summarise, t95, write_summary
from prpo.prm import load_prm


def test_terse_problems_keep_the_generator_split_and_solutions():
    train = bench_task("train", 50, (2, 3), seed=0)
    test = bench_task("test", 50, (2, 3), seed=0)
    assert not {e.meta["solution"] for e in train.examples} & {e.meta["solution"] for e in test.examples}
    example = train.examples[0]
    steps = parse_solution(example.meta["solution"])
    assert write_solution(steps) == example.meta["solution"]
    assert terse_problem(steps).startswith(f"{steps[0].before} {steps[0].op} {steps[0].operand}")
    assert terse_problem(steps).count(" then ") == len(steps) - 1
    assert train.grader(example.meta["solution"], example.answer)


def test_step_errors_slip_and_carry_on_consistently():
    rng = random.Random(0)
    for value in [0, 7, 12, 55, 130]:
        wrong = slip(value, rng)
        assert wrong != value and wrong >= 0
    steps = [Step(3, "+", 4, 7), Step(7, "*", 2, 14), Step(14, "-", 5, 9)]
    assert with_step_errors(steps, rng, 0.0) == steps
    corrupted = with_step_errors(steps, random.Random(3), 1.0)
    assert all(a.after != b.after for a, b in zip(corrupted, steps))
    for before, after in zip(corrupted, corrupted[1:]):
        assert after.before == before.after  # later steps continue from the slipped value


@pytest.mark.parametrize(
    ("before", "op", "operand", "expected"),
    [(47, "+", 5, 42), (9, "+", 8, 7), (95, "+", 7, 92), (23, "-", 7, 26), (40, "-", 3, 47), (37, "*", 2, 64),
     (5, "*", 2, 0), (43, "+", 5, None), (28, "-", 3, None), (34, "*", 2, None), (40, "/", 8, None)],
)
def test_dropped_carry_by_hand(before, op, operand, expected):
    assert dropped_carry(before, op, operand) == expected


def test_misconception_drops_every_carry_of_its_operators_and_later_steps_carry_on():
    steps = [Step(47, "+", 5, 52), Step(52, "+", 9, 61), Step(61, "-", 7, 54), Step(54, "+", 3, 57)]
    wrong = with_step_errors(steps, random.Random(0), error_rate=0.0, misconception_rate=1.0)
    # 47 + 5 carries -> 42; 42 + 9 carries -> 41; the subtraction is not an operator of the
    # misconception (its borrow is kept); 34 + 3 needs no carry.
    assert wrong == [Step(47, "+", 5, 42), Step(42, "+", 9, 41), Step(41, "-", 7, 34), Step(34, "+", 3, 37)]
    assert with_step_errors(steps, random.Random(0), 0.0, misconception_rate=1.0, misconception_ops="+-")[2] == Step(
        41, "-", 7, 44
    )
    rates = [with_step_errors(steps[:1], random.Random(seed), 0.0, 0.65)[0].after == 42 for seed in range(2000)]
    assert 0.6 < sum(rates) / len(rates) < 0.7


def test_warm_start_errors_are_what_the_arithmetic_prm_flags():
    task = bench_task("train", 40, (2, 3), seed=1)
    prm = load_prm("arithmetic")
    rows = warm_start_rows(task, random.Random(0), error_rate=0.3, misconception_rate=0.5)
    flagged = 0
    for example, row in zip(task.examples, rows):
        lines = [line + "\n" for line in row["completion"].split("\n")]
        scores = prm.score([example.problem], [lines])[0]
        clean = row["completion"] == example.meta["solution"]
        assert (min(scores) > 0.5) == clean  # every error is caught, no clean solution is blamed
        flagged += not clean
    assert 5 < flagged < 35


def test_char_tokenizer_round_trips():
    tokenizer = char_tokenizer()
    text = "13 - 8 then * 2\n13 - 8 = 5\nAnswer: 10"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text) and tokenizer.decode(ids) == text
    assert tokenizer("5</s>")["input_ids"][-1] == tokenizer.eos_token_id


def test_t_interval():
    assert t95(4) == pytest.approx(2.776)
    assert t95(100) == 1.96
    mean, half = mean_ci([0.2, 0.4, 0.6])
    assert mean == pytest.approx(0.4) and half == pytest.approx(4.303 * 0.2 / math.sqrt(3))
    assert math.isnan(mean_ci([0.5])[1])


def _fake_run(root, setting, method, seed, accuracies, lengths):
    folder = root / "runs" / setting / method / f"seed-{seed}"
    folder.mkdir(parents=True)
    with (folder / "eval.jsonl").open("w") as out:
        for step, acc in zip([0, 5, 10], accuracies):
            out.write(json.dumps({"step": step, "heldout/accuracy": acc, "heldout_long/accuracy": acc / 2,
                                  "heldout/sampled_accuracy": acc / 4, "heldout/length": 40.0,
                                  "heldout/final_answer_rate": 1.0}) + "\n")
    with (folder / "metrics.jsonl").open("w") as out:
        for step, length in enumerate(lengths, 1):
            out.write(json.dumps({"step": step, "step_time": 2.0 if method == "grpo" else 2.2, "accuracy": step / 10,
                                  "completions/mean_length": length, "final_answer_rate": length / 40}) + "\n")


def test_summary_table_from_run_files(tmp_path):
    for seed in range(3):
        _fake_run(tmp_path, "clean", "grpo", seed, [0.4, 0.45, 0.5], [40] * 10)
        _fake_run(tmp_path, "clean", "prpo", seed, [0.4, 0.5 + 0.01 * seed, 0.6], [40] * 10)
        _fake_run(tmp_path, "clean", "process_only", seed, [0.4, 0.3, 0.1], [40, 40, 40, 30, 20, 10, 8, 6, 5, 4])
    _fake_run(tmp_path, "clean", "pure", 0, [0.4], [40])  # stopped before its first evaluation
    _fake_run(tmp_path, "clean", "prm_avg", 0, [0.4, 0.7], [40] * 5)  # cut short after step 5
    _fake_run(tmp_path, "clean", "prm_avg", 1, [0.4, 0.5, 0.6], [40] * 10)
    table = summarise(tmp_path)
    assert "clean/pure" not in table
    assert table["clean/prm_avg"]["steps"] == [0, 5] and table["clean/prm_avg"]["final_accuracy"][0] == pytest.approx(0.6)
    assert table["clean/grpo"]["final_accuracy"][0] == pytest.approx(0.5)
    assert table["clean/prpo"]["steps_to_grpo_final"] == 5
    assert table["clean/process_only"]["steps_to_grpo_final"] is None
    assert table["clean/process_only"]["collapsed_seeds"] == 3 and table["clean/prpo"]["collapsed_seeds"] == 0
    assert table["clean/process_only"]["fall_from_best"][0] == pytest.approx(0.3)  # 0.4 at step 0, 0.1 at the end
    assert table["clean/prpo"]["fall_from_best"] == (0.0, 0.0)
    text = markdown(table)
    assert (
        "| clean | prpo | 3 | 10 | 40.0 ± 0.0 | 60.0 ± 0.0 | 10.0 ± 0.0 | 15.0 ± 0.0 | 20.0 ± 0.0 | 90.0 ± 0.0 | 30.0 ± 0.0 "
        "| +10.0 ± 0.0 | +2.5 ± 0.0 | 5 |" in text
    )
    assert "| clean | grpo | 3 | 10 |" in text and "| +0.0 ± 0.0 | +0.0 ± 0.0 | 10 |" in text
    assert "PRPO/GRPO step-time ratio (clean runs): 1.10" in text
    path = write_summary(tmp_path)
    assert (tmp_path / "bench-clean.png").stat().st_size > 10_000 and "bench-clean.png" in path.read_text()


def test_paired_difference_pairs_runs_by_seed():
    def runs(finals):
        return [{"seed": seed, "eval": [{"step": 0, "acc": 0.0}, {"step": 10, "acc": acc}]} for seed, acc in finals]

    grpo = runs([(0, 0.3), (1, 0.5), (2, 0.7)])
    # Each seed beats its own GRPO run by exactly 10 points; unpaired, the spread would be wide.
    assert paired_difference(runs([(2, 0.8), (0, 0.4), (1, 0.6)]), grpo, "acc") == pytest.approx((0.1, 0.0))
    mean, half = paired_difference(runs([(0, 0.5), (1, 0.5), (5, 0.9)]), grpo, "acc")  # seed 5 has no pair
    assert mean == pytest.approx(0.1) and half == pytest.approx(12.706 * math.sqrt(0.02) / math.sqrt(2))
    assert all(math.isnan(v) for v in paired_difference(runs([(9, 0.5)]), grpo, "acc"))


def test_summary_names_a_bad_line(tmp_path):
    _fake_run(tmp_path, "clean", "grpo", 0, [0.4, 0.45, 0.5], [40] * 3)
    (tmp_path / "runs/clean/grpo/seed-0/eval.jsonl").write_text('{"step": 0}\n{"step": 5}\nnot json\n')
    with pytest.raises(ValueError, match="eval.jsonl line 3: not JSON"):
        summarise(tmp_path)


def test_bench_smoke_end_to_end(tmp_path):
    """The whole pipeline at the smoke size: warm start, RL runs with a clean and a noisy PRM, table, plots."""
    from prpo.commands.bench import main as bench_main

    argv = ["--size", "smoke", "--output", str(tmp_path), "--methods", "grpo", "prpo", "--seeds", "1", "--rl-steps", "3"]
    assert bench_main(argv) == 0
    for run in ("clean/grpo", "clean/prpo", "noisy/prpo"):
        evals = [json.loads(line) for line in (tmp_path / "runs" / run / "seed-0" / "eval.jsonl").read_text().splitlines()]
        assert [row["step"] for row in evals] == [0, 1, 2, 3]
        assert 0.0 <= evals[-1]["heldout_long/accuracy"] <= 1.0
        assert (tmp_path / "runs" / run / "seed-0" / "metrics.jsonl").exists()
    summary = (tmp_path / "summary.md").read_text()
    assert "| clean | prpo | 1 |" in summary and "| noisy | prpo | 1 |" in summary and "noisy | grpo" not in summary
    assert (tmp_path / "bench-clean.png").exists() and (tmp_path / "bench-noisy.png").exists()
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["runs"] == 3 and bench["preset"]["rl_steps"] == 3
    with pytest.raises(SystemExit, match="--rl-steps must be at least 1"):
        bench_main(["--size", "smoke", "--output", str(tmp_path), "--rl-steps", "0"])

    # Run again into the same folder: complete runs are kept; a run cut short starts over.
    cut = tmp_path / "runs" / "noisy" / "prpo" / "seed-0" / "eval.jsonl"
    cut.write_text("\n".join(cut.read_text().splitlines()[:2]) + "\n")
    kept = tmp_path / "runs" / "clean" / "grpo" / "seed-0" / "eval.jsonl"
    before = kept.read_text(), kept.stat().st_mtime_ns
    assert bench_main(argv + ["--settings", "noisy"]) == 0
    assert (kept.read_text(), kept.stat().st_mtime_ns) == before
    assert json.loads((tmp_path / "bench.json").read_text())["runs"] == 1  # the noisy PRM: prpo only
    assert [json.loads(line)["step"] for line in cut.read_text().splitlines()] == [0, 1, 2, 3]
    with pytest.raises(SystemExit, match="another preset \\(differs in rl_steps\\)"):
        bench_main(argv[:-1] + ["4"])


def test_saved_policy_tokenizer_loads_as_saved(tmp_path):
    from prpo.bench.policy import SIZES, build_policy, load_char_tokenizer

    tokenizer = char_tokenizer()
    build_policy(SIZES["smoke"], tokenizer, seed=0).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    text = "19 + 8 then - 3\n"
    assert load_char_tokenizer(tmp_path)(text)["input_ids"] == tokenizer(text)["input_ids"]
