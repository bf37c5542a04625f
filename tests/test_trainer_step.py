"""One hand-built PRPO step through `PRPOTrainer.rollout_advantages`: advantages and metrics computed by hand.

8 responses to 2 prompts, written as steps separated by "\\n\\n" (each step is 3 tokens in Qwen's
vocabulary), graded by their boxed answer and scored by a PRM that reads the first word of a step.
`tests/test_trainer_distributed.py` runs the same step in one and two processes.
Also here: the fixed segmenter, where the entropy comes from (generation hook, TRL's old-policy
pass, or an extra forward pass), and the outcome reward (overlong penalty, verdict count).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from datasets import Dataset
from test_trainer import policy_dir, policy_entropy  # noqa: F401  (policy_dir: a fixture)

from prpo.training import trl_surface
from prpo.training.config import PRPOConfig
from prpo.grading import extract_final_answer
from prpo.training.rewards import OutcomeReward
from prpo.training.trainer import PRPOTrainer, Rollout

PROBLEMS = {"q0": ("What is 3 + 4?", "7"), "q1": ("What is 12 + 5?", "17")}
OK, NO, SO = "ok ok\n\n", "no no\n\n", "so so\n\n"  # 3 tokens each: 'ok', ' ok', '\n\n'
EOS = "<|im_end|>"
# (prompt id, steps, ends with EOS). Tokens: a step 3, \boxed{7} and \boxed{8} 5, \boxed{17} 6, 'hmm' 2, EOS 1.
STEP = [
    ("q0", [OK, OK, r"\boxed{7}"], False),  # 11 tokens, correct
    ("q1", [NO, r"\boxed{17}"], False),  # 9, correct
    ("q0", [NO, r"\boxed{8}"], False),  # 8, wrong
    ("q1", [OK, r"\boxed{17}"], True),  # 10, correct
    ("q0", [OK, "hmm"], False),  # 5, wrong, no final answer
    ("q1", [OK, OK, r"\boxed{17}"], False),  # 12, correct
    ("q0", [NO, NO, r"\boxed{8}"], True),  # 12, wrong
    ("q1", [SO, r"\boxed{17}"], False),  # 9, correct
]
LENGTHS = [11, 9, 8, 10, 5, 12, 12, 9]


def word_score(text: str) -> float:
    """The test PRM: 0.9 for a step starting 'ok', 0.1 for 'no', 0.7 otherwise."""
    return 0.9 if text.startswith("ok") else 0.1 if text.startswith("no") else 0.7


class WordPRM:
    prm_id = "word"

    def score(self, problems: list[str], segments: list[list[str]]) -> list[list[float]]:
        return [[word_score(text) for text in row] for row in segments]


def answer_grader(responses: list[str], golds: list[str]) -> list[bool]:
    return [extract_final_answer(r) == g for r, g in zip(responses, golds)]


# Hand-computed PRPO advantages (fixed prior, sigma0 = sqrt(1/24)): Z(0.9) = 0.4 sqrt(24) = 1.9596,
# Z(0.1) = -1.9596, Z(0.7) = 0.2 sqrt(24) = 0.9798. q0: R = [1, -1, -1, -1], mean -0.5, beta = [1.5, -0.5,
# -0.5, -0.5]; q1: all correct, beta = 0. Each step's tokens get Z of its score plus beta.
Z_OK, Z_NO, Z_SO = 0.4 * math.sqrt(24), -0.4 * math.sqrt(24), 0.2 * math.sqrt(24)
EXPECTED_ADVANTAGES = [
    [Z_OK + 1.5] * 6 + [Z_SO + 1.5] * 5,
    [Z_NO] * 3 + [Z_SO] * 6,
    [Z_NO - 0.5] * 3 + [Z_SO - 0.5] * 5,
    [Z_OK] * 3 + [Z_SO] * 7,
    [Z_OK - 0.5] * 3 + [Z_SO - 0.5] * 2,
    [Z_OK] * 6 + [Z_SO] * 6,
    [Z_NO - 0.5] * 6 + [Z_SO - 0.5] * 6,
    [Z_SO] * 9,
]
EXPECTED_METRICS = {
    "accuracy": 5 / 8,  # rows 0, 1, 3, 5, 7
    "final_answer_rate": 7 / 8,  # row 4 has none
    "frac_groups_same_outcome": 1 / 2,  # q1 all correct, q0 mixed
    "segments/per_response": 19 / 8,  # 3 + 2 + 2 + 2 + 2 + 3 + 3 + 2
    "segments/mean_length": 76 / 19,  # 76 tokens in 19 segments
    # segment scores sum: 2.5 + 0.8 + 0.8 + 1.6 + 1.6 + 2.5 + 0.9 + 1.4 = 12.1 over 19 segments
    "prm/score_mean": 12.1 / 19,
    "prm/first_segment_mean": 4.6 / 8,  # 0.9 + 0.1 + 0.1 + 0.9 + 0.9 + 0.9 + 0.1 + 0.7
    # tokens with beta != 0: q0's 11 + 8 + 5 + 12 = 36; same sign of Z and beta: row 0 all 11 (beta > 0, Z > 0),
    # row 2 its 3 'no' tokens, row 4 none, row 6 its 6 'no' tokens: 20 of 36
    "sign_agreement": 20 / 36,
}


def step_rows(tokenizer) -> tuple[list[dict[str, Any]], list[list[int]], list[str]]:
    """Dataset rows, token ids (each step tokenised alone) and response texts of the 8 responses of STEP."""
    rows, ids, texts = [], [], []
    for pid, steps, eos in STEP:
        problem, answer = PROBLEMS[pid]
        tokens = [t for step in steps for t in tokenizer(step, add_special_tokens=False)["input_ids"]]
        ids.append(tokens + ([tokenizer.convert_tokens_to_ids(EOS)] if eos else []))
        texts.append("".join(steps))
        rows.append({"prompt": [{"role": "user", "content": problem}], "problem": problem, "answer": answer, "prompt_id": pid})
    assert [len(row) for row in ids] == LENGTHS
    return rows, ids, texts


def step_config(output_dir: str, **overrides) -> PRPOConfig:
    values = dict(output_dir=output_dir, method="prpo", segmenter="marker", num_generations=4,
                  per_device_train_batch_size=4, beta=0.0, max_completion_length=16, report_to=[], use_cpu=True,
                  samples_per_step=0, activation_checkpointing=False, save_strategy="no")
    values.update(overrides)
    return PRPOConfig(**values)


def step_dataset() -> Dataset:
    return Dataset.from_list([{"prompt": [{"role": "user", "content": p}], "problem": p, "answer": a, "prompt_id": pid}
                              for pid, (p, a) in PROBLEMS.items()])


def run_step(trainer: PRPOTrainer, local: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
    """Grade (TRL's reward call) and score rows ``local`` of STEP on this process; its advantages and the metrics."""
    rows, ids, texts = step_rows(trainer.processing_class)
    inputs = [rows[i] for i in local]
    completions = [[{"role": "assistant", "content": texts[i]}] for i in local]
    rollout = trainer._rollout = Rollout(lengths=[LENGTHS[i] for i in local])  # as TRL starts a rollout
    trainer._calculate_rewards(inputs, [r["prompt"] for r in inputs], completions, [ids[i] for i in local])
    width = max(LENGTHS[i] for i in local)  # each process pads to its own longest response
    pad = trainer.processing_class.pad_token_id
    completion_ids = torch.tensor([ids[i] + [pad] * (width - LENGTHS[i]) for i in local])
    advantages = trainer.rollout_advantages(inputs, {"completion_ids": completion_ids}, rollout, "train")
    metrics = {k: v[-1] for k, v in trl_surface.metrics(trainer, "train").items() if not k.startswith("time/")}
    return advantages, metrics


@pytest.fixture(scope="module")
def marker_trainer(tiny_causal_lm_dir, tmp_path_factory) -> PRPOTrainer:
    args = step_config(str(tmp_path_factory.mktemp("marker")))
    return PRPOTrainer(str(tiny_causal_lm_dir), args=args, train_dataset=step_dataset(), prm=WordPRM(), grader=answer_grader)


def test_hand_built_step_gives_the_hand_computed_advantages_and_metrics(marker_trainer):
    advantages, metrics = run_step(marker_trainer, list(range(8)))
    for row, expected in enumerate(EXPECTED_ADVANTAGES):
        torch.testing.assert_close(advantages[row, :LENGTHS[row]], torch.tensor(expected), rtol=1e-5, atol=1e-5)
        assert not advantages[row, LENGTHS[row]:].any()  # padding
    for key, value in EXPECTED_METRICS.items():
        assert metrics[key] == pytest.approx(value, rel=1e-6), key
    assert all(math.isfinite(v) for v in metrics.values())


class RecordingPRM(WordPRM):
    def __init__(self) -> None:
        self.segments: list[list[str]] = []

    def score(self, problems, segments):
        self.segments = [list(row) for row in segments]
        return super().score(problems, segments)


def test_fixed_segmenter_cuts_every_n_tokens(tiny_causal_lm_dir, tmp_path):
    prm = RecordingPRM()
    args = step_config(str(tmp_path), segmenter="fixed", segment_length=4)
    trainer = PRPOTrainer(str(tiny_causal_lm_dir), args=args, train_dataset=step_dataset(), prm=prm, grader=answer_grader)
    _, metrics = run_step(trainer, list(range(8)))
    _, ids, _ = step_rows(trainer.processing_class)
    tokenizer = trainer.processing_class
    assert prm.segments == [[tokenizer.decode(row[s:s + 4], skip_special_tokens=True) for s in range(0, len(row), 4)]
                            for row in ids]
    # ceil(L / 4) for L = 11, 9, 8, 10, 5, 12, 12, 9: 3 + 3 + 2 + 3 + 2 + 3 + 3 + 3 = 22 segments
    assert metrics["segments/per_response"] == pytest.approx(22 / 8)
    assert metrics["segments/mean_length"] == pytest.approx(76 / 22)


def test_marker_segments_end_with_their_marker(marker_trainer):
    prm = RecordingPRM()
    marker_trainer.prm, original = prm, marker_trainer.prm
    try:
        run_step(marker_trainer, list(range(8)))
    finally:
        marker_trainer.prm = original
    assert prm.segments == [steps for _, steps, _ in STEP]  # EOS is skipped in the text, kept in the last segment


# ----------------------------------------------------------------------------- where the entropy comes from


def rollout(trainer: PRPOTrainer) -> dict[str, torch.Tensor]:
    """TRL's rollout tensors for the first 4 responses of STEP after their prompts (left-padded)."""
    tokenizer = trainer.processing_class
    rows, ids, _ = step_rows(tokenizer)
    prompts = [tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
               for r in rows[:4]]
    plen, width, pad = max(map(len, prompts)), max(LENGTHS[:4]), tokenizer.pad_token_id
    return {
        "prompt_ids": torch.tensor([[pad] * (plen - len(p)) + p for p in prompts]),
        "prompt_mask": torch.tensor([[0] * (plen - len(p)) + [1] * len(p) for p in prompts]),
        "completion_ids": torch.tensor([row + [pad] * (width - len(row)) for row in ids[:4]]),
        "completion_mask": torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids[:4]]),
    }


@pytest.mark.parametrize("num_iterations", [2, 1], ids=["old-policy-pass", "extra-forward-pass"])
def test_entropy_without_a_generation_hook(num_iterations, policy_dir, tmp_path):
    """With an engine that gives no logits (continuous batching): from TRL's old-policy pass when it runs
    (``num_iterations > 1``), else from one extra forward pass; either way the sampling policy's entropy."""
    args = step_config(str(tmp_path), segmenter="entropy", min_gap=3, temperature=0.8, num_iterations=num_iterations,
                       use_transformers_continuous_batching=True)
    trainer = PRPOTrainer(str(policy_dir), args=args, train_dataset=step_dataset(), prm=WordPRM(), grader=answer_grader)
    output = rollout(trainer)
    expected = policy_entropy(trainer.model, output, 0.8)
    mask = output["completion_mask"].bool()
    assert trainer._entropy_source == ("old_pass" if num_iterations > 1 else "extra_pass")
    # TRL's rollout: PRPO arms the capture, then TRL runs its old-policy pass (not aligned steps).
    state = trainer._rollout = Rollout(capture_old_pass=trainer._entropy_source == "old_pass")
    if num_iterations > 1:
        ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        attention = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        with torch.no_grad():
            _, entropies, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, attention, mask.shape[1])
        assert entropies is None  # TRL asked for log-probs only and gets log-probs only
    state.times.clear()
    entropy = trainer._sampling_entropy(output, mask, state)
    assert expected[mask].std() > 0.3  # a peaked model: entropies that differ by position
    torch.testing.assert_close(entropy[mask], expected[mask], rtol=1e-4, atol=1e-4)
    extra_pass = "entropy" in state.times
    assert extra_pass == (num_iterations == 1)


@pytest.mark.parametrize("engine, num_iterations, mask_truncated, segmenter, source", [
    ({}, 1, False, "entropy", "generation"),
    ({}, 2, True, "entropy", "generation"),  # transformers generate: the hook, whatever else is set
    ({"use_transformers_continuous_batching": True}, 2, False, "entropy", "old_pass"),
    ({"use_transformers_continuous_batching": True}, 1, False, "entropy", "extra_pass"),
    ({"use_transformers_continuous_batching": True}, 2, True, "entropy", "extra_pass"),  # TRL's pass hides truncated rows
    ({}, 1, False, "marker", None),  # a segmenter that reads no entropy
])
def test_the_entropy_source_is_chosen_once(engine, num_iterations, mask_truncated, segmenter, source, policy_dir, tmp_path):
    args = step_config(str(tmp_path), segmenter=segmenter, min_gap=3, num_iterations=num_iterations,
                       mask_truncated_completions=mask_truncated, **engine)
    trainer = PRPOTrainer(str(policy_dir), args=args, train_dataset=step_dataset(), prm=WordPRM(), grader=answer_grader)
    assert trainer._entropy_source == source


def test_truncated_completions_masked_by_trl_keep_their_entropy(policy_dir, tmp_path):
    """mask_truncated_completions zeroes a truncated row's completion_mask; its entropy (so its segments and PRM
    scores) is still the sampling policy's over the tokens it sampled: the extra pass, never TRL's masked pass."""
    args = step_config(str(tmp_path), segmenter="entropy", min_gap=3, temperature=0.8, num_iterations=2,
                       use_transformers_continuous_batching=True, mask_truncated_completions=True)
    trainer = PRPOTrainer(str(policy_dir), args=args, train_dataset=step_dataset(), prm=WordPRM(), grader=answer_grader)
    assert trainer._entropy_source == "extra_pass"
    output = rollout(trainer)
    expected = policy_entropy(trainer.model, output, 0.8)
    mask = output["completion_mask"].bool()
    output["completion_mask"][0] = 0  # what TRL does to a truncated completion
    entropy = trainer._sampling_entropy(output, mask, Rollout())
    torch.testing.assert_close(entropy[mask], expected[mask], rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- the outcome reward


def test_overlong_penalty_and_reward_values(tmp_path):
    """R = correct_reward or wrong_reward, minus L / L_pen when L > L_pen / 2 (L_pen = 16: from 9 tokens on)."""
    reward = OutcomeReward(lambda r, g: [True, False, True, False], step_config(str(tmp_path), overlong_len=16,
                                                                                correct_reward=2.0, wrong_reward=-1.0))
    values = reward(prompts=[""] * 4, completions=["a", "b", "c", "d"], completion_ids=[[0] * 4, [0] * 8, [0] * 9, [0] * 16],
                    answer=["1"] * 4)
    # 2, -1 (8 = L_pen / 2: no penalty), 2 - 9/16 = 1.4375, -1 - 16/16 = -2
    assert values == pytest.approx([2.0, -1.0, 1.4375, -2.0])


def test_grader_returning_the_wrong_number_of_verdicts_is_an_error(tmp_path):
    reward = OutcomeReward(lambda responses, golds: [True], step_config(str(tmp_path)))
    with pytest.raises(ValueError, match="grader returned 1 verdicts for 2 responses"):
        reward(prompts=["", ""], completions=["a", "b"], completion_ids=[[1], [2]], answer=["1", "2"])
