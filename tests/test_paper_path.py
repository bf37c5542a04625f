"""The paper config end to end, one real step on the CPU with tiny random stand-ins of its models (slow).

Policy: a tiny Qwen2ForCausalLM (for Qwen2.5-Math-1.5B); PRM: the `step_tag` PRM on a tiny 2-label
Qwen2ForTokenClassification with `<extra_0>` added to the real Qwen tokenizer (for
Qwen2.5-Math-PRM-7B); MATH rows from tests/fixtures; everything else from
configs/paper-qwen2.5-math-1.5b.yaml (chat template, \\boxed grading, entropy segments k = 5,
m = 10, fixed prior, the overlong penalty), with a smaller batch and response length, and an
overlong length that the 40-token responses exceed by more than half.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from prpo.commands import train as train_command
from prpo.grading import is_correct

PAPER = Path(__file__).resolve().parents[1] / "configs" / "paper-qwen2.5-math-1.5b.yaml"
MAX_LEN, OVERLONG = 40, 64  # the penalty applies at L > 32


@pytest.mark.slow
def test_paper_config_one_step_on_tiny_stand_ins(tiny_causal_lm_dir, tiny_step_tag_prm_dir, fixture_data, tmp_path, capsys):
    out = tmp_path / "run"
    code = train_command.main([
        str(PAPER),
        "--model.model_name_or_path", str(tiny_causal_lm_dir), "--model.dtype", "float32",
        "--prm.model", str(tiny_step_tag_prm_dir), "--prm.device", "cpu",
        "--task.data_file", str(fixture_data / "math500.jsonl"), "--task.limit", "2",
        "--eval_task.options.data_dir", str(fixture_data), "--eval_before_after", "false",
        "--prompts_per_step", "1", "--num_generations", "4", "--per_device_train_batch_size", "4",
        "--max_completion_length", str(MAX_LEN), "--overlong_len", str(OVERLONG),
        "--max_steps", "1", "--report_to", "none", "--output_dir", str(out),
    ])
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["method"], config["segmenter"], config["k"], config["min_gap"]) == ("prpo", "entropy", 5, 10)
    assert config["prm"]["type"] == "step_tag" and config["normalization"] == "fixed_prior"

    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step = next(row for row in metrics if "prm/score_mean" in row)
    for key in ("reward", "accuracy", "advantages/mean", "segments/per_response", "prm/score_mean", "sign_agreement"):
        assert isinstance(step[key], float) and math.isfinite(step[key]), key
    assert 0 <= step["prm/score_mean"] <= 1 and step["segments/per_response"] >= 1

    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4  # 1 prompt x 4 rollouts per step
    problems = {json.loads(line)["problem"] for line in (fixture_data / "math500.jsonl").read_text().splitlines()}
    for row in samples:
        assert row["problem"] in problems and row["problem"] in row["prompt"]
        assert row["prompt"].endswith("<|im_start|>assistant\n")  # Qwen's chat template with the boxed instruction
        assert row["correct"] == is_correct(row["response"], row["answer"])
        penalty = row["length"] / OVERLONG if row["length"] > OVERLONG / 2 else 0.0
        assert row["reward"] == pytest.approx((1.0 if row["correct"] else -1.0) - penalty)
        segments = row["segments"]
        assert 1 <= len(segments) <= 6 and sum(s["tokens"] for s in segments) == row["length"]
        assert all(s["tokens"] >= 10 for s in segments) or len(segments) == 1  # m = 10
        assert all(isinstance(s["prm_score"], float) and 0 <= s["prm_score"] <= 1 for s in segments)
    assert any(row["length"] > OVERLONG / 2 for row in samples)  # the penalty was applied at least once
    assert any(len(row["segments"]) > 1 for row in samples)
    assert (out / "final" / "config.json").is_file()
