"""Benchmark pieces: task families and their PRM, step errors, the character tokenizer, the summary statistics."""

from __future__ import annotations

import gzip
import json
import math
import random
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from prpo.bench.arithmetic_family import (
    ARITHMETIC,
    TEMPLATE,
    ArithmeticChains,
    bench_task,
    dropped_carry,
    slip,
    terse_problem,
    with_step_errors,
)
from prpo.bench.policy import char_tokenizer
from prpo.bench.stats import mean_ci, t95, wilson
from prpo.bench.summary import (
    auc,
    collapse_step,
    final,
    markdown,
    paired_difference,
    summarise,
    write_summary,
)
from prpo.bench.warmstart import warm_start_rows
from prpo.prm import PRMError
from prpo.bench.prm import FamilyPRM
from prpo.tasks import Example, Task
from prpo.tasks.arithmetic import Step, answer_matches, write_solution
from prpo.bench.family import Level, load_family


@dataclass(frozen=True)
class RemainderChains:
    """A second task family (other operations, other wording): ``Start with 17. Take the remainder by 5. Add 8.``

    Solution lines ``17 rem 5 -> 2``; its systematic error: the remainder step writes the quotient
    (``17 rem 5 -> 3``) in 60% of warm-start solutions. Its checker compares each line with the chain.
    """

    name: str = "remainders"
    levels: tuple[Level, ...] = (Level("short", (2, 2), 40), Level("long", (3, 4), 64))

    @staticmethod
    def chain(problem: str) -> list[tuple[int, str, int, int]]:
        """``(before, op, operand, after)`` per step, read from the problem text."""
        value = int(re.match(r"Start with (\d+)\.", problem)[1])
        steps = []
        for op, operand in re.findall(r"(remainder by|Add) (\d+)\.", problem):
            op, operand = ("rem" if op == "remainder by" else "add"), int(operand)
            after = value % operand if op == "rem" else value + operand
            steps.append((value, op, operand, after))
            value = after
        return steps

    def task(self, split: str, n: int, level: Level, seed: int) -> Task:
        rng, examples = random.Random(f"{seed}-{level.name}"), {}
        while len(examples) < n:
            words = [f"Start with {rng.randint(10, 60)}."]
            for i in range(rng.randint(*level.steps)):
                words.append(f"Take the remainder by {rng.randint(3, 9)}." if i % 2 == 0 else f"Add {rng.randint(2, 9)}.")
            problem = " ".join(words)
            if (sum(map(ord, problem)) % 5 == 0) == (split == "test"):
                steps = self.chain(problem)
                solution = "\n".join(f"{a} {op} {b} -> {c}" for a, op, b, c in steps) + f"\nAnswer: {steps[-1][3]}"
                examples.setdefault(problem, Example(f"r{len(examples)}", problem, str(steps[-1][3]), {"solution": solution}))
        return Task(f"remainders-{split}", list(examples.values()), TEMPLATE.name, answer_matches)

    def warm_solution(self, example: Example, rng: random.Random) -> str:
        lines, value = [], None
        for before, op, operand, _ in self.chain(example.problem):
            before = before if value is None else value
            value = (before // operand if rng.random() < 0.6 else before % operand) if op == "rem" else before + operand
            lines.append(f"{before} {op} {operand} -> {value}")
        return "\n".join(lines + [f"Answer: {value}"])

    def evidence(self, problem: str, text: str, final: bool) -> tuple[bool, int]:
        steps, rights = self.chain(problem), 0
        lines = text.split("\n") if final else text.split("\n")[:-1]  # the last line may go on
        for i, line in enumerate(lines):
            if line.startswith("Answer: "):
                return line != f"Answer: {steps[-1][3]}", rights + (line == f"Answer: {steps[-1][3]}")
            if i >= len(steps) or line != "{} {} {} -> {}".format(*steps[i]):
                return True, rights
            rights += 1
        return False, rights


REMAINDERS = RemainderChains()


def test_terse_problems_keep_the_generator_split_and_solutions():
    train = bench_task("train", 50, (2, 3), seed=0)
    test = bench_task("test", 50, (2, 3), seed=0)
    assert not {e.meta["solution"] for e in train.examples} & {e.meta["solution"] for e in test.examples}
    example = train.examples[0]
    steps = example.meta["chain"].steps
    assert write_solution(steps) == example.meta["solution"]
    assert example.problem == terse_problem(steps)
    assert terse_problem(steps).startswith(f"{steps[0].before} {steps[0].op} {steps[0].operand}")
    assert terse_problem(steps).count(" then ") == len(steps) - 1
    assert train.grader(example.meta["solution"], example.answer)


def test_step_errors_slip_and_carry_on_consistently():
    rng = random.Random(0)
    for value in [0, 7, 12, 55, 130]:
        wrong = slip(value, rng)
        assert wrong != value and wrong >= 0
    steps = [Step("+", 4, 3, 7), Step("*", 2, 7, 14), Step("-", 5, 14, 9)]
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
    steps = [Step("+", 5, 47, 52), Step("+", 9, 52, 61), Step("-", 7, 61, 54), Step("+", 3, 54, 57)]
    wrong = with_step_errors(steps, random.Random(0), error_rate=0.0, misconceptions={"+": 1.0})
    # 47 + 5 carries -> 42; 42 + 9 carries -> 41; the subtraction is not an operator of the
    # misconception (its borrow is kept); 34 + 3 needs no carry.
    assert wrong == [Step("+", 5, 47, 42), Step("+", 9, 42, 41), Step("-", 7, 41, 34), Step("+", 3, 34, 37)]
    assert with_step_errors(steps, random.Random(0), 0.0, {"+": 1.0, "-": 1.0})[2] == Step("-", 7, 41, 44)
    rates = [with_step_errors(steps[:1], random.Random(seed), 0.0, {"+": 0.65})[0].after == 42 for seed in range(2000)]
    assert 0.6 < sum(rates) / len(rates) < 0.7


@pytest.mark.parametrize("family", [ArithmeticChains(slip_rate=0.3, misconceptions=(("+", 0.5), ("-", 0.5))), REMAINDERS])
def test_warm_start_errors_are_what_the_clean_prm_flags(family):
    prm = FamilyPRM(family, "clean")
    rows = warm_start_rows(family, 60, seed=1)
    per_level = 60 // len(family.levels)
    problems = [e for level in family.levels for e in family.task("train", per_level, level, 1).examples]
    flagged = 0
    for example, row in zip(problems, rows, strict=True):
        lines = [line + "\n" for line in row["completion"].split("\n")]
        lines[-1] = lines[-1].rstrip("\n")
        scores = prm.score([example.problem], [lines])[0]
        clean = row["completion"] == example.meta["solution"]
        assert (min(scores) > 0.5) == clean  # every error is caught, no clean solution is blamed
        flagged += not clean
    assert 5 < flagged < 55


@pytest.mark.parametrize(
    ("quality", "segments", "expected"),
    [
        # right, right, right answer: every segment completes a right step
        ("clean", ["47 + 5 = 52\n", "52 - 8 = 44\n", "Answer: 44"], [0.9, 0.9, 0.9]),
        # the dropped carry is wrong, and everything after it
        ("clean", ["47 + 5 = 42\n", "42 - 8 = 34\n", "Answer: 34"], [0.1, 0.1, 0.1]),
        # a line that claims nothing: no evidence (0.5) when clean, rated good when biased
        ("clean", ["47 + 5 = 52\n", "ok\n", "52 - 8 = 44\n", "Answer: 44"], [0.9, 0.5, 0.9, 0.9]),
        ("biased", ["47 + 5 = 52\n", "ok\n", "52 - 8 = 44\n", "Answer: 44"], [0.9, 0.9, 0.9, 0.9]),
        # stopping after right lines without an answer: wrong at the end when clean, good when biased
        ("clean", ["47 + 5 = 52\n", "52 - 8 = 44\n"], [0.9, 0.1]),
        ("biased", ["47 + 5 = 52\n", "52 - 8 = 44\n"], [0.9, 0.9]),
        ("biased", ["47 + 5 = 42\n", "42 - 8 = 34\n"], [0.1, 0.1]),  # a wrong step stays wrong
    ],
)
def test_family_prm_by_hand(quality, segments, expected):
    assert FamilyPRM(ARITHMETIC, quality).score(["47 + 5 then - 8"], [segments]) == [expected]


def test_noisy_prm_flips_about_its_share_and_is_deterministic():
    prm, clean = FamilyPRM(REMAINDERS, "noisy", noise=0.3, seed=4), FamilyPRM(REMAINDERS, "clean")
    problems = REMAINDERS.task("train", 300, REMAINDERS.levels[0], 0).examples
    segments = [[line + "\n" for line in e.meta["solution"].split("\n")] for e in problems]
    noisy = prm.score([e.problem for e in problems], segments)
    assert noisy == prm.score([e.problem for e in problems], segments)
    flips = [a != b for r, c in zip(noisy, clean.score([e.problem for e in problems], segments)) for a, b in zip(r, c)]
    assert 0.25 < sum(flips) / len(flips) < 0.35


def test_family_loads_from_a_module_or_a_file():
    assert load_family("prpo.bench.arithmetic_family:ARITHMETIC") is ARITHMETIC
    family = load_family(f"{Path(__file__)}:REMAINDERS")
    assert family.name == "remainders" and [level.name for level in family.levels] == ["short", "long"]
    with pytest.raises(ValueError, match="expected MODULE:NAME"):
        load_family("prpo.bench.arithmetic_family")
    with pytest.raises(ValueError, match="has no attribute 'NOPE'"):
        load_family("prpo.bench.arithmetic_family:NOPE")
    with pytest.raises(ValueError, match="lacks levels, task, warm_solution, evidence"):
        load_family("prpo.bench.arithmetic_family:TEMPLATE")


def test_arithmetic_levels_get_harder_by_error_sites():
    """Greedy decoding of a policy fitted to the misconceptions gets a chain right only when it has no
    carry or borrow: the share of such held-out chains falls with the level (measured starts in docs/bench.md)."""
    shares = []
    for level in ARITHMETIC.levels:
        examples = ARITHMETIC.task("test", 200, level, 0).examples
        free = [all(s.op == "*" or dropped_carry(s.before, s.op, s.operand) is None
                    for s in e.meta["chain"].steps) for e in examples]
        shares.append(sum(free) / len(free))
    assert shares[0] > shares[1] > shares[2] and shares[0] > 0.3 and shares[2] < 0.2


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


def _fake_run(root, level, quality, method, seed, accuracies, answer_rates=None):
    folder = root / "runs" / level / quality / method / f"seed-{seed}"
    folder.mkdir(parents=True)
    answer_rates = answer_rates or [1.0] * len(accuracies)
    with (folder / "eval.jsonl").open("w") as out:
        for step, acc, rate in zip([0, 5, 10], accuracies, answer_rates):
            out.write(json.dumps({"step": step, "heldout/accuracy": acc, "heldout/sampled_accuracy": acc / 4,
                                  "heldout/length": 40.0, "heldout/final_answer_rate": rate}) + "\n")
    with (folder / "metrics.jsonl").open("w") as out:
        for step in range(1, 11):
            length = 40 if rate == 1.0 else 40 - 3.5 * step  # falls to 5 tokens
            row = {"step": step, "step_time": 2.0 if method == "grpo" else 2.2, "accuracy": step / 10,
                   "completions/mean_length": length, "final_answer_rate": length / 40,
                   "frac_groups_same_outcome": 0.5, "beta_zero_token_share": 0.25}
            if method == "prpo_sp":
                row["clip_share"] = 0.1 * (step % 2)  # mean over the 10 steps: 0.05
            out.write(json.dumps(row) + "\n")


def test_summary_table_from_run_files(tmp_path):
    for seed in range(3):
        _fake_run(tmp_path, "easy", "clean", "grpo", seed, [0.4, 0.45, 0.5])
        _fake_run(tmp_path, "easy", "clean", "prpo", seed, [0.4, 0.5 + 0.01 * seed, 0.6])
        # falls 30 points from its best, and stops answering: collapsed, and the monitor sees it
        _fake_run(tmp_path, "easy", "biased", "process_only", seed, [0.4, 0.3, 0.1], [1.0, 0.9, 0.5])
    _fake_run(tmp_path, "easy", "clean", "pure", 0, [0.4])  # stopped before its first evaluation
    _fake_run(tmp_path, "easy", "clean", "prm_avg", 0, [0.4, 0.7])  # cut short after step 5
    _fake_run(tmp_path, "easy", "clean", "prm_avg", 1, [0.4, 0.5, 0.6])
    _fake_run(tmp_path, "hard", "clean", "grpo", 0, [0.1, 0.1, 0.2])
    _fake_run(tmp_path, "hard", "clean", "prpo_sp", 0, [0.1, 0.2, 0.2])
    table = summarise(tmp_path)
    assert "easy/clean/pure" not in table
    assert list(table)[:2] == ["easy/biased/process_only", "easy/clean/grpo"] and list(table)[-1] == "hard/clean/prpo_sp"
    assert table["easy/clean/prm_avg"]["steps"] == [0, 5]
    assert table["easy/clean/prm_avg"]["final_accuracy"][0] == pytest.approx(0.6)  # (0.7 + 0.5) / 2
    assert table["easy/clean/grpo"]["final_accuracy"][0] == pytest.approx(0.5)
    assert table["easy/clean/prpo"]["steps_to_grpo_final"] == 5
    assert table["easy/biased/process_only"]["steps_to_grpo_final"] is None
    # AUC of grpo: (0.425 * 5 + 0.475 * 5) / 10 = 0.45; of prpo seed 0: (0.45 * 5 + 0.55 * 5) / 10 = 0.5
    assert table["easy/clean/grpo"]["auc"][0] == pytest.approx(0.45)
    assert table["easy/clean/prpo"]["vs_grpo_auc"][0] == pytest.approx(0.05 + 0.005 * 1)  # seeds add 0, 0.005, 0.01
    assert table["easy/clean/prpo"]["same_outcome_groups"] == (0.5, 0.0)
    assert table["easy/clean/prpo"]["beta_zero_share"] == (0.25, 0.0)
    process = table["easy/biased/process_only"]
    assert process["collapses"] == 3 and table["easy/clean/prpo"]["collapses"] == 0
    assert process["monitor"] == {"hits": 3, "misses": 0, "false_alarms": 0}
    assert process["fall_from_best"][0] == pytest.approx(0.3)  # 0.4 at step 0, 0.1 at the end
    assert process["vs_grpo"][0] == pytest.approx(-0.4)  # paired with clean GRPO: 0.1 - 0.5
    text = markdown(table)
    assert (
        "| easy | clean | prpo | 3 | 10 | 40.0 ± 0.0 | 60.0 ± 0.0 | 15.0 ± 0.0 | 50.5 ± 1.2 | +10.0 ± 0.0 | +2.5 ± 0.0 "
        "| +5.5 ± 1.2 | 5 | 50.0 ± 0.0 | 25.0 ± 0.0 | — | 100% | 40.0 | 0/3 (0-56%) | 0/3 (0-56%) | 0 / 0 / 0 "
        "| 0.0 ± 0.0 | 2.20 |" in text
    )
    # process-only ends at 0.1 < 0.5 x 0.4: ended collapsed in 3 of 3; its dips are counted apart
    assert "| 3/3 (44-100%) | 3/3 (44-100%) | 3 / 0 / 0 |" in text
    assert "| hard | clean | prpo_sp | 1 | 10 |" in text and "| 50.0 | 25.0 | 5.0 | 100% |" in text  # clip share 5%
    assert "| easy | biased | process_only | 3 | 10 |" in text
    path = write_summary(tmp_path)
    for name in ("bench-easy.png", "bench-hard.png", "bench-prpo-minus-grpo.png"):
        assert (tmp_path / name).stat().st_size > 10_000 and name in path.read_text()


def test_collapse_definition_by_hand():
    def rows(*triples):
        return [{"step": 10 * i, "heldout/accuracy": a, "heldout/final_answer_rate": r, "heldout/length": n}
                for i, (a, r, n) in enumerate(triples)]

    assert collapse_step(rows((0.5, 1.0, 40), (0.7, 1.0, 40), (0.56, 1.0, 40))) is None  # 14 points below best
    assert collapse_step(rows((0.5, 1.0, 40), (0.7, 1.0, 40), (0.55, 1.0, 40))) == 20  # 15 points below best
    assert collapse_step(rows((0.5, 1.0, 40), (0.5, 0.71, 40))) is None  # 29% fewer answers
    assert collapse_step(rows((0.5, 1.0, 40), (0.5, 0.7, 40))) == 10  # 30% fewer answers
    assert collapse_step(rows((0.5, 1.0, 40), (0.5, 1.0, 50), (0.5, 1.0, 35))) == 20  # 35 <= 0.7 * 50
    assert collapse_step(rows((0.0, 0.0, 56), (0.0, 0.0, 56))) is None  # never answered: nothing to fall from


def test_wilson_interval():
    low, high = wilson(0, 5)  # centre 0.1935 / 1.768, half the same: (0, 0.4345)
    assert low == 0.0 and high == pytest.approx(0.4345, abs=1e-3)
    assert wilson(5, 5)[0] == pytest.approx(1 - 0.4345, abs=1e-3) and wilson(5, 5)[1] == 1.0


def test_summary_names_a_bad_line(tmp_path):
    _fake_run(tmp_path, "easy", "clean", "grpo", 0, [0.4, 0.45, 0.5])
    (tmp_path / "runs/easy/clean/grpo/seed-0/eval.jsonl").write_text('{"step": 0}\n{"step": 5}\nnot json\n')
    with pytest.raises(ValueError, match="eval.jsonl line 3: not JSON"):
        summarise(tmp_path)


def test_bench_smoke_end_to_end(tmp_path, capsys):
    """The whole pipeline at the smoke size: warm start, RL runs with a clean and a biased PRM, table, plots."""
    from prpo.commands.bench import main as bench_main
    from prpo.provenance import code_version, read_provenance

    argv = ["--size", "smoke", "--output", str(tmp_path), "--methods", "grpo", "prpo", "--seeds", "1",
            "--rl-steps", "3", "--levels", "easy", "--prm", "clean", "biased"]
    assert bench_main(argv) == 0
    for run in ("easy/clean/grpo", "easy/clean/prpo", "easy/biased/prpo"):
        evals = [json.loads(line) for line in (tmp_path / "runs" / run / "seed-0" / "eval.jsonl").read_text().splitlines()]
        assert [row["step"] for row in evals] == [0, 1, 2, 3]
        assert 0.0 <= evals[-1]["heldout/sampled_accuracy"] <= 1.0
        metrics = [json.loads(line) for line in (tmp_path / "runs" / run / "seed-0" / "metrics.jsonl").read_text().splitlines()]
        assert any("frac_groups_same_outcome" in row for row in metrics)
        assert any("beta_zero_token_share" in row for row in metrics)  # GRPO reports it too (tokens with A = 0)
    # Step 0 is the warm start: evaluated once per level, the same row in every run.
    start = json.loads((tmp_path / "warmstart" / "heldout-step0-easy-4.json").read_text())
    for run in ("easy/clean/grpo", "easy/clean/prpo", "easy/biased/prpo"):
        assert json.loads((tmp_path / "runs" / run / "seed-0" / "eval.jsonl").read_text().splitlines()[0]) == start
    summary = (tmp_path / "summary.md").read_text()
    assert "| easy | clean | prpo | 1 |" in summary and "| easy | biased | prpo | 1 |" in summary
    assert "biased | grpo" not in summary
    assert (tmp_path / "bench-easy.png").exists() and (tmp_path / "bench-prpo-minus-grpo.png").exists()
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["runs"] == 3 and bench["preset"]["rl_steps"] == 3 and bench["levels"] == ["easy"]
    # Provenance, written by the tool: the invocation in bench.json, each run in its provenance.json.
    code = code_version()
    [invocation] = bench["provenance"]
    assert invocation["commit"] == code["commit"] and invocation["started"] <= invocation["finished"]
    for run in ("easy/clean/grpo", "easy/clean/prpo", "easy/biased/prpo"):
        [entry] = read_provenance(tmp_path / "runs" / run / "seed-0")
        assert entry["commit"] == code["commit"] and entry["dirty"] == code["dirty"]
        assert entry["torch_threads"] >= 1 and entry["finished"] >= entry["started"] >= invocation["started"]
    assert (f"code: commit {code['commit'][:12]}" if code["commit"] else "code: no commit recorded") in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--rl-steps must be at least 1"):
        bench_main(["--size", "smoke", "--output", str(tmp_path), "--rl-steps", "0"])
    with pytest.raises(SystemExit, match="family 'arithmetic' has levels easy, medium, hard"):
        bench_main(argv[:-5] + ["--levels", "extreme"])

    # Run again into the same folder: complete runs are kept; a run cut short starts over.
    cut = tmp_path / "runs" / "easy" / "biased" / "prpo" / "seed-0" / "eval.jsonl"
    cut.write_text("\n".join(cut.read_text().splitlines()[:2]) + "\n")
    kept = tmp_path / "runs" / "easy" / "clean" / "grpo" / "seed-0" / "eval.jsonl"
    before = kept.read_text(), kept.stat().st_mtime_ns
    assert bench_main(argv[:-2] + ["biased"]) == 0
    assert (kept.read_text(), kept.stat().st_mtime_ns) == before
    # `--prm biased` alone still runs GRPO (with the clean PRM it never reads: the baseline); it was complete.
    rerun = json.loads((tmp_path / "bench.json").read_text())
    assert rerun["runs"] == 2 and len(rerun["provenance"]) == 2  # every invocation is kept
    assert len(read_provenance(cut.parent)) == 1  # a run started over records its new start only
    assert [json.loads(line)["step"] for line in cut.read_text().splitlines()] == [0, 1, 2, 3]
    with pytest.raises(SystemExit, match="another preset \\(differs in rl_steps\\)"):
        bench_main(argv[:10] + ["4"] + argv[11:])

    # Committed results keep metrics and samples gzip-compressed: the summary rebuilt from them is the same.
    packed = tmp_path.parent / "packed"
    shutil.copytree(tmp_path, packed)
    for path in [*packed.glob("runs/*/*/*/seed-*/metrics.jsonl"), *packed.glob("runs/*/*/*/seed-*/samples.jsonl")]:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes(), mtime=0))
        path.unlink()
    (packed / "summary.json").unlink()
    assert bench_main(["--summary-only", "--output", str(packed)]) == 0
    assert (packed / "summary.json").read_text() == (tmp_path / "summary.json").read_text()
    assert (packed / "samples.md").read_text() == (tmp_path / "samples.md").read_text()


def test_bench_runs_a_plugged_in_family(tmp_path):
    """`--family path.py:NAME`: the second family's problems, warm start and checker drive the same pipeline."""
    from prpo.commands.bench import main as bench_main

    argv = ["--size", "smoke", "--output", str(tmp_path), "--family", f"{Path(__file__)}:REMAINDERS",
            "--methods", "prpo", "--seeds", "1", "--rl-steps", "1"]
    assert bench_main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["long", "short"]
    sample = json.loads((tmp_path / "runs/long/clean/prpo/seed-0/samples.jsonl").read_text().splitlines()[0])
    assert sample["problem"].startswith("Start with ")
    with pytest.raises(SystemExit, match="differs in family"):
        bench_main(argv[:5] + ["prpo.bench.arithmetic_family:ARITHMETIC"] + argv[6:])


def test_matrix_runs_the_prm_blind_baseline_once_with_the_clean_prm(tmp_path):
    """`--prm noisy biased` (the Hypothesis-1 command): GRPO runs once per seed, clean; seeds come first."""
    from prpo.bench.runner import SIZES, matrix

    specs = matrix(SIZES["smoke"], "prpo.bench.arithmetic_family:ARITHMETIC", ["hard"], ["noisy", "biased"],
                   ["grpo", "prpo", "process_only"], [0, 1], tmp_path)
    runs = [(spec.seed, spec.quality, spec.method) for spec in specs]
    per_seed = [("noisy", "prpo"), ("noisy", "process_only"), ("clean", "grpo"), ("biased", "prpo"),
                ("biased", "process_only")]
    assert sorted(runs) == sorted((seed, *run) for seed in (0, 1) for run in per_seed)
    assert [seed for seed, _, _ in runs] == [0] * 5 + [1] * 5
    grpo = next(spec for spec in specs if spec.method == "grpo" and spec.seed == 0)
    assert grpo.output_dir == str(tmp_path / "runs" / "hard" / "clean" / "grpo" / "seed-0")


def test_default_methods_are_the_advantage_registry_in_its_order():
    from prpo.advantages import ADVANTAGES
    from prpo.bench.runner import METHODS

    assert METHODS == tuple(ADVANTAGES)
    assert METHODS == ("grpo", "dr_grpo", "prpo", "prpo_sp", "process_only", "prm_avg", "pure", "prof", "prpo_prof",
                       "prpo_sp_uniform")


@pytest.mark.parametrize("family", ["prpo.bench.arithmetic_family:ARITHMETIC", f"{Path(__file__)}:REMAINDERS"])
def test_the_recorded_prm_spec_loads_as_the_prm_of_the_run(tmp_path, family):
    """A run records its PRM as a `load_prm` spec (type bench_family) and loads it from that record."""
    from prpo.bench.runner import SIZES, matrix, prm_spec_of
    from prpo.prm import load_prm

    spec = matrix(SIZES["smoke"], family, [load_family(family).levels[0].name], ["noisy"], ["prpo"], [3], tmp_path)[0]
    recorded = json.loads(json.dumps(prm_spec_of(spec)))  # as written to the run's config
    assert recorded["type"] == "bench_family" and recorded["seed"] == 3
    prm = load_prm(recorded)
    assert isinstance(prm, FamilyPRM) and prm.family is load_family(family)
    used = FamilyPRM(load_family(family), "noisy", noise=SIZES["smoke"].noise, seed=3)
    assert prm.prm_id == used.prm_id
    examples = prm.family.task("train", 20, prm.family.levels[0], 0).examples
    segments = [[line + "\n" for line in e.meta["solution"].split("\n")] for e in examples]
    problems = [e.problem for e in examples]
    assert prm.score(problems, segments) == used.score(problems, segments)
    with pytest.raises(PRMError, match="PRM quality 'perfect'"):
        load_prm({**recorded, "quality": "perfect"})


def test_saved_policy_tokenizer_loads_as_saved(tmp_path):
    from prpo.bench.policy import SIZES, build_policy, load_char_tokenizer

    tokenizer = char_tokenizer()
    build_policy(SIZES["smoke"], tokenizer, seed=0).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    text = "19 + 8 then - 3\n"
    assert load_char_tokenizer(tmp_path)(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_unknown_method_is_a_clear_usage_error(tmp_path):
    from prpo.commands.bench import main as bench_main

    with pytest.raises(SystemExit, match="--methods: unknown advantage method 'nosuch'; known: dr_grpo, grpo"):
        bench_main(["--size", "smoke", "--output", str(tmp_path), "--methods", "grpo", "nosuch"])
    assert not (tmp_path / "runs").exists()


def test_validation_problems_come_from_the_train_split_and_are_kept_out_of_training():
    from prpo.bench.runner import DEFAULT_FAMILY, SIZES, RunSpec, heldout_and_train

    family = load_family(DEFAULT_FAMILY)
    level = family.levels[0]
    spec = RunSpec(DEFAULT_FAMILY, level.name, "clean", "grpo", 0, "unused", "unused", SIZES["cpu"], "validation")
    heldout, train = heldout_and_train(family, level, spec)
    test, plain_train = heldout_and_train(family, level, replace(spec, eval_split="test"))
    validation = {e.problem for e in heldout.examples}
    assert len(validation) == SIZES["cpu"].eval_problems and len(train.examples) == len(plain_train.examples)
    assert not validation & {e.problem for e in train.examples}  # never trained on
    assert not validation & {e.problem for e in test.examples}  # the test split is never seen when choosing
    assert all(e.id.startswith("arithmetic-train") or "train" in e.id for e in heldout.examples)
    # with the test split, the draws are the ones every earlier run made
    assert [e.problem for e in test.examples] == [e.problem for e in family.task("test", len(test), level, 0).examples]
    assert [e.problem for e in plain_train.examples] == [
        e.problem for e in family.task("train", len(plain_train), level, 1000).examples]


def test_the_cpu_preset_runs_each_method_at_its_chosen_rate():
    from prpo.bench.runner import METHODS, SIZES, effective_learning_rates, matrix

    cpu = SIZES["cpu"]
    assert effective_learning_rates(cpu, ["grpo", "prpo_sp"]) == {"grpo": 1e-4, "prpo_sp": 5e-5}
    assert effective_learning_rates(cpu, ["grpo", "prpo_sp"], {"grpo": 2e-4}) == {"grpo": 2e-4, "prpo_sp": 5e-5}
    assert effective_learning_rates(SIZES["smoke"], ["grpo"]) == {}  # the smoke preset: one rate for all
    assert set(dict(cpu.method_learning_rates)) == set(METHODS)  # a new method is tuned before it joins the matrix
    rates = effective_learning_rates(cpu, ["grpo", "process_only"])
    specs = matrix(cpu, "prpo.bench.arithmetic_family:ARITHMETIC", ["easy"], ["clean"], ["grpo", "process_only"], [0],
                   Path("unused"), learning_rates=rates)
    assert [(spec.method, spec.size.learning_rate) for spec in specs] == [("grpo", 1e-4), ("process_only", 5e-5)]


def test_bench_with_validation_problems_and_tuned_learning_rates(tmp_path):
    from prpo.commands.bench import main as bench_main

    argv = ["--size", "smoke", "--output", str(tmp_path), "--methods", "grpo", "prpo", "--seeds", "1", "--rl-steps",
            "2", "--levels", "easy", "--eval-split", "validation", "--learning-rate", "2e-3", "--method-lr", "grpo=5e-4"]
    assert bench_main(argv) == 0
    preset = json.loads((tmp_path / "bench.json").read_text())["preset"]
    assert preset["eval_split"] == "validation" and preset["learning_rates"] == {"grpo": 5e-4, "prpo": 2e-3}
    assert (tmp_path / "warmstart" / "heldout-step0-easy-4-validation.json").exists()
    for method, lr in (("grpo", 5e-4), ("prpo", 2e-3)):
        run = tmp_path / "runs" / "easy" / "clean" / method / "seed-0"
        rates = [row["learning_rate"] for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                 if "learning_rate" in row]
        assert rates == pytest.approx([0.0, lr / 5])  # the preset's 5 warm-up steps, at the method's own rate
        evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
        assert len(evals[-1]["heldout/correct"]) == 4  # per-problem answers, for McNemar by problem
    assert "| easy | clean | prpo | grpo | 1 |" in (tmp_path / "summary.md").read_text()
    with pytest.raises(SystemExit, match="--method-lr 'grpo:1e-4': expected METHOD=LR"):
        bench_main(argv[:-1] + ["grpo:1e-4"])
    with pytest.raises(SystemExit, match="learning rate pure=0.001: needs a method of this run"):
        bench_main(argv[:-1] + ["pure=1e-3"])
