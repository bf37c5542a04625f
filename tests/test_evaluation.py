"""pass@k and Wilson intervals against hand values; evaluate() bookkeeping; `prpo eval` end to end."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from prpo.commands.eval import main as eval_main
from prpo.evaluation.evaluate import (
    EvalResult,
    accuracy_interval,
    append_partial,
    evaluate,
    evaluate_model,
    mcnemar_improvement,
    paired_correctness,
    pass_at_k,
    pass_at_k_values,
    read_partial,
)
from prpo.evaluation.generation import Completion
from prpo.tasks import load_task

# ---------------------------------------------------------------------------------------------
# pass@k and intervals


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (1, 1, 1, 1.0),
        (2, 1, 1, 0.5),
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (10, 3, 4, 1 - 35 / 210),  # 1 - C(7,4)/C(10,4)
        (8, 1, 4, 0.5),  # 1 - C(7,4)/C(8,4) = 1 - 35/70
        (4, 0, 2, 0.0),
        (4, 3, 2, 1.0),  # n - c < k: every draw of 2 holds a correct one
        (16, 16, 16, 1.0),
        (1000, 1, 500, 0.5),  # 1 - C(999,500)/C(1000,500) = 1 - 500/1000
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_the_binomial_formula_and_is_c_over_n_at_k1():
    for n in range(1, 21):
        for c in range(n + 1):
            assert pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-12)
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5), (4.0, 2, 1)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises((ValueError, TypeError)):
        pass_at_k(n, c, k)


def test_pass_at_k_values():
    assert pass_at_k_values(1) == [1]
    assert pass_at_k_values(8) == [1, 2, 4, 8]
    assert pass_at_k_values(6) == [1, 2, 4, 6]


def test_wilson_interval_hand_values():
    assert accuracy_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert accuracy_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert accuracy_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    low, high = accuracy_interval(320, 500)
    assert low < 0.64 < high and high - low == pytest.approx(2 * 1.96 * math.sqrt(0.64 * 0.36 / 500), rel=0.02)
    with pytest.raises(ValueError):
        accuracy_interval(1, 0)
    with pytest.raises(ValueError):
        accuracy_interval(11, 10)


# ---------------------------------------------------------------------------------------------
# the exact one-sided McNemar test (sign test on discordant pairs)


@pytest.mark.parametrize(
    ("improved", "worsened", "expected"),
    [
        (0, 0, 1.0),  # no discordant pair: no evidence
        (3, 0, 1 / 8),  # P(X >= 3), X ~ Bin(3, 1/2)
        (5, 1, 7 / 64),  # (C(6,5) + C(6,6)) / 2^6
        (1, 4, 31 / 32),  # 1 - P(X = 0) = 1 - 1/32
        (12, 2, 106 / 16384),  # (C(14,12) + C(14,13) + C(14,14)) / 2^14 = (91 + 14 + 1) / 16384
    ],
)
def test_mcnemar_hand_values(improved, worsened, expected):
    # concordant pairs (right-right, wrong-wrong) must not change anything
    before = [False] * improved + [True] * worsened + [True, True, False]
    after = [True] * improved + [False] * worsened + [True, True, False]
    test = mcnemar_improvement(before, after)
    assert test == {"p_value": pytest.approx(expected, rel=1e-12), "improved": improved, "worsened": worsened}


def test_mcnemar_is_one_sided():
    up = mcnemar_improvement([False] * 4, [True] * 4)["p_value"]
    down = mcnemar_improvement([True] * 4, [False] * 4)["p_value"]
    assert up == 1 / 16 and down == 1.0  # all four worse: P(X >= 0) = 1
    with pytest.raises(ValueError, match="paired"):
        mcnemar_improvement([True], [True, False])


def test_paired_correctness_pairs_by_problem_id():
    before = [{"id": "a", "correct": True}, {"id": "b", "correct": False}]
    after = [{"id": "b", "correct": True}, {"id": "a", "correct": True}]  # other order
    assert paired_correctness(before, after) == ([True, False], [True, True])
    with pytest.raises(ValueError, match="same problems"):
        paired_correctness(before, [{"id": "a", "correct": True}, {"id": "c", "correct": True}])


# ---------------------------------------------------------------------------------------------
# evaluate(): a generator that answers from the answer key, so every number is known


class AnswerKeyGenerator:
    """Answers a prompt by the recipe of its problem: `recipes[problem] = [answer text per sample]`."""

    def __init__(self, tokenizer, recipes: dict[str, list[str]]):
        self.tokenizer, self.recipes = tokenizer, recipes

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, top_p=1.0, samples=1, seed=0):
        out = []
        for prompt in prompts:
            (problem,) = [p for p in self.recipes if p in prompt]
            texts = self.recipes[problem]
            assert len(texts) == samples
            out.append([Completion(t, num_tokens=len(t), finish_reason="length" if t == "..." else "stop") for t in texts])
        return out


@pytest.fixture(scope="module")
def math_task(fixture_data):
    return load_task("math500", data_file=fixture_data / "math500.jsonl")  # 5 problems, 4 subjects


def test_evaluate_pairs_every_response_with_its_own_gold(math_task, qwen_tokenizer):
    examples = math_task.examples
    # problem i: right, wrong, no answer, unparsable ($$), truncated ...; shuffle-proof by content
    plans = ["right", "wrong", "none", "unparsable", "truncated"]
    texts = {
        "right": lambda e: f"So the answer is \\boxed{{{e.answer}}}.",
        "wrong": lambda e: "The answer is \\boxed{-12345}.",
        "none": lambda e: "I am not sure.",
        "unparsable": lambda e: "Thus \\boxed{$$}.",
        "truncated": lambda e: "...",
    }
    recipes = {e.problem: [texts[plan](e)] for e, plan in zip(examples, plans)}
    result = evaluate(AnswerKeyGenerator(qwen_tokenizer, recipes), math_task, model_name="answer-key")
    s = result.summary
    assert [r["correct"] for r in result.records] == [p == "right" for p in plans]
    assert [r["id"] for r in result.records] == [e.id for e in examples]
    assert all(r["gold"] == e.answer and e.problem in r["prompt"] for r, e in zip(result.records, examples))
    assert result.records[0]["extracted_answer"] == examples[0].answer
    assert s["accuracy"] == 1 / 5 and s["correct"] == 1 and s["pass_at_k"] == {1: 1 / 5}
    assert s["accuracy_ci95"] == pytest.approx(list(accuracy_interval(1, 5)))
    assert s["no_final_answer_fraction"] == 2 / 5  # "none" and the truncated "..."
    assert s["unparsable_answers"] == 1
    assert s["truncated_fraction"] == 1 / 5
    assert s["response_tokens"]["max"] == max(len(t[0]) for t in recipes.values())
    subjects = [e.meta["subject"] for e in examples]
    assert sum(g["problems"] for g in s["by_subject"].values()) == 5 and s["by_subject"]["Algebra"]["problems"] == 2
    for subject, group in s["by_subject"].items():
        members = [p for p, sub in zip(plans, subjects) if sub == subject]
        assert group == {"problems": len(members), "accuracy": members.count("right") / len(members)}
    assert set(s["by_level"]) == {str(e.meta["level"]) for e in examples}


def test_evaluate_with_samples_reports_mean_and_unbiased_pass_at_k(math_task, qwen_tokenizer):
    examples = math_task.examples[:3]
    right = lambda e: f"\\boxed{{{e.answer}}}"  # noqa: E731
    wrong = "\\boxed{-1}"
    recipes = {
        examples[0].problem: [right(examples[0])] * 4,
        examples[1].problem: [wrong, right(examples[1]), wrong, wrong],
        examples[2].problem: [wrong] * 4,
    }
    result = evaluate(AnswerKeyGenerator(qwen_tokenizer, recipes), math_task, samples=4, temperature=1.0, limit=3)
    s = result.summary
    assert len(result.records) == 12 and [r["sample"] for r in result.records[:4]] == [0, 1, 2, 3]
    assert s["accuracy"] == s["mean@4"] == 5 / 12
    # per problem c = 4, 1, 0 of n = 4: pass@2 = (1 + (1 - C(3,2)/C(4,2)) + 0) / 3 = (1 + 1/2) / 3
    assert s["pass_at_k"] == pytest.approx({1: 5 / 12, 2: 1.5 / 3, 4: 2 / 3})
    metrics = result.scalar_metrics()
    assert metrics["eval/pass@4"] == pytest.approx(2 / 3) and metrics["eval/accuracy"] == 5 / 12


def test_evaluate_model_restores_training_mode(tiny_causal_lm_dir, qwen_tokenizer, fixture_data):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir)
    model.train()
    task = load_task("gsm8k", data_file=fixture_data / "gsm8k_test.jsonl", limit=3)
    result = evaluate_model(model, qwen_tokenizer, task, max_new_tokens=4, batch_size=2, progress=False)
    assert model.training
    assert isinstance(result, EvalResult) and len(result.records) == 3
    assert all(r["num_tokens"] <= 4 for r in result.records)


# ---------------------------------------------------------------------------------------------
# `prpo eval` end to end on a tiny random model

BENCHMARK_FILES = [
    ("math500", "math500.jsonl"),
    ("gsm8k", "gsm8k_test.jsonl"),
    ("aime24", "aime24.jsonl"),
    ("amc23", "amc23.jsonl"),
    ("arithmetic", None),
]
RECORD_FIELDS = {"id", "sample", "prompt", "response", "extracted_answer", "gold", "correct", "num_tokens", "finish_reason"}


def run_eval(model_dir: Path, out: Path, *args: str) -> int:
    return eval_main([str(model_dir), "--output", str(out), "--max-new-tokens", "6", "--batch-size", "10", "--backend", "hf", "--dtype", "float32", "--device", "cpu", *args])


@pytest.mark.parametrize(("benchmark", "file"), BENCHMARK_FILES)
def test_prpo_eval_end_to_end(benchmark, file, tiny_causal_lm_dir, fixture_data, tmp_path, capsys):
    data = ["--data-file", str(fixture_data / file)] if file else []  # 3 to 5 rows each
    assert run_eval(tiny_causal_lm_dir, tmp_path, "--benchmark", benchmark, "--limit", "3", *data) == 0
    printed = capsys.readouterr().out
    assert f"{benchmark} (3 problems)" in printed and "accuracy" in printed and "no final answer" in printed

    expected = load_task(benchmark, data_file=fixture_data / file if file else None, split=None if file else "test", limit=3)
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [e.id for e in expected.examples]
    assert [r["gold"] for r in records] == [e.answer for e in expected.examples]
    for record, example in zip(records, expected.examples):
        assert RECORD_FIELDS <= set(record)
        assert example.problem in record["prompt"] and record["prompt"].endswith("<|im_start|>assistant\n")
        assert 1 <= record["num_tokens"] <= 6 and record["finish_reason"] in {"stop", "length"}
        assert record["correct"] is False  # a random 2-layer model does not solve math
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["benchmark"] == benchmark and summary["num_problems"] == 3 and summary["samples"] == 1
    assert summary["accuracy"] == 0.0 and summary["pass_at_k"] == {"1": 0.0}
    assert 0.0 <= summary["no_final_answer_fraction"] <= 1.0
    assert summary["response_tokens"]["max"] <= 6 and summary["max_new_tokens"] == 6
    assert ("by_subject" in summary) == (file == "math500.jsonl")


def test_prpo_eval_with_samples(tiny_causal_lm_dir, fixture_data, tmp_path, capsys):
    args = ["--benchmark", "gsm8k", "--data-file", str(fixture_data / "gsm8k_test.jsonl"), "--limit", "3"]
    assert run_eval(tiny_causal_lm_dir, tmp_path, *args, "--samples", "4", "--temperature", "1.0") == 0
    assert "pass@4" in capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["pass_at_k"]) == {"1", "2", "4"} and "mean@4" in summary
    assert len((tmp_path / "records.jsonl").read_text().splitlines()) == 12


def test_prpo_eval_bad_input_gives_clear_errors(tiny_causal_lm_dir, fixture_data, tmp_path, capsys):
    def error(*args: str, model: Path = tiny_causal_lm_dir) -> tuple[int, str]:
        code = run_eval(model, tmp_path / "out", *args)
        return code, capsys.readouterr().err

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, err = error("--benchmark", "math500", "--data-file", str(empty))
    assert code == 1 and f"{empty}: the file has no rows" in err

    duplicate = tmp_path / "dup.jsonl"
    duplicate.write_text('{"id": "a", "problem": "1+1?", "answer": "2"}\n{"id": "a", "problem": "2+2?", "answer": "4"}\n')
    code, err = error("--benchmark", "math500", "--data-file", str(duplicate))
    assert code == 1 and "duplicate id 'a'" in err and "line 2" in err

    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"problem": "1+1?"}\n')
    code, err = error("--benchmark", "amc23", "--data-file", str(missing))
    assert code == 1 and "line 1" in err and "missing field 'answer'" in err

    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_causal_lm_dir / name, no_tokenizer / name)
    code, err = error("--benchmark", "math500", "--data-file", str(fixture_data / "math500.jsonl"), "--limit", "2", model=no_tokenizer)
    assert code == 1 and "has no tokenizer" in err

    code, err = error("--benchmark", "arithmetic", "--samples", "4")
    assert code == 1 and "set a temperature > 0" in err
    assert not (tmp_path / "out").exists()

    assert run_eval(tiny_causal_lm_dir, tmp_path / "out", "--benchmark", "arithmetic", "--limit", "2") == 0
    code, err = error("--benchmark", "arithmetic", "--limit", "2")
    assert code == 2 and "already holds results" in err


def test_interrupted_evaluation_resumes_from_its_partial_file(tmp_path):
    """Completions are saved chunk by chunk; a rerun generates only the problems that are missing."""
    task = load_task("arithmetic", split="test", limit=5)

    class Answering:
        tokenizer = None

        def __init__(self):
            self.asked = []

        def generate(self, prompts, *, max_new_tokens, temperature, top_p, samples, seed):
            self.asked += prompts
            return [[Completion("Answer: 1", 3, "stop")] for _ in prompts]

    partial = tmp_path / "completions.partial.jsonl"
    settings = dict(samples=1, temperature=0.0, top_p=1.0, max_new_tokens=8, seed=0)
    first = Answering()
    evaluate(first, task, chunk=2, partial_file=partial, **settings)
    assert len(first.asked) == 5
    lines = partial.read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["settings"]["max_new_tokens"] == 8
    # Drop the last two problems, as if the run had died after the first chunks.
    partial.write_text("\n".join(lines[:4]) + "\n")
    again = Answering()
    result = evaluate(again, task, chunk=2, partial_file=partial, **settings)
    assert len(again.asked) == 2 and result.summary["num_problems"] == 5
    assert set(read_partial(partial, json.loads(lines[0])["settings"])) == {e.id for e in task.examples}
    with pytest.raises(ValueError, match="other settings"):
        evaluate(Answering(), task, partial_file=partial, **{**settings, "max_new_tokens": 9})
    append_partial(tmp_path / "new.jsonl", {"a": 1}, {})
    assert (tmp_path / "new.jsonl").read_text() == '{"settings": {"a": 1}}\n'
