"""Evaluation never changes what training draws next: its sampling runs on a forked, seeded RNG.

The benchmark evaluates in `on_train_begin` and the demo before training; before the fork, each
evaluation reseeded the global generator, so every seed's rollouts came from the same stream.
"""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer, Qwen2ForCausalLM, TrainerCallback

from prpo.training.config import PRPOConfig
from prpo.evaluation.evaluate import evaluate_model
from prpo.tasks import load_task
from prpo.training.trainer import PRPOTrainer

TASK = load_task("arithmetic", split="test", limit=3, seed=0)


@pytest.fixture(scope="module")
def policy(tiny_causal_lm_dir):
    return Qwen2ForCausalLM.from_pretrained(tiny_causal_lm_dir), AutoTokenizer.from_pretrained(tiny_causal_lm_dir)


@pytest.mark.parametrize("samples, temperature", [(1, 0.0), (2, 1.0)], ids=["greedy", "sampled"])
def test_evaluate_model_leaves_the_global_rng_as_it_found_it(policy, samples, temperature):
    model, tokenizer = policy
    torch.manual_seed(1234)
    torch.rand(3)  # somewhere inside a stream, not at a seed
    before = torch.get_rng_state()
    evaluate_model(model, tokenizer, TASK, samples=samples, temperature=temperature, max_new_tokens=4, seed=5,
                   progress=False)
    assert torch.equal(torch.get_rng_state(), before)


def test_sampled_evaluation_is_still_seeded(policy):
    model, tokenizer = policy

    def texts(seed: int) -> list[str]:
        result = evaluate_model(model, tokenizer, TASK, samples=2, temperature=1.0, max_new_tokens=6, seed=seed,
                                progress=False)
        return [r["response"] for r in result.records]

    assert texts(3) == texts(3) != texts(4)


class EvaluateAtStart(TrainerCallback):
    """What the benchmark does: a sampled held-out evaluation (fixed seed) before the first step."""

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        evaluate_model(model, processing_class, TASK, samples=2, temperature=1.0, max_new_tokens=4, seed=0,
                       progress=False)


def rollouts(model_dir, tmp_path, seed: int, callbacks) -> list[str]:
    """The responses of a one-step run's only rollout (samples.jsonl keeps every row)."""
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": "What is 3 + 4?"}], "answer": "7"}])
    args = PRPOConfig(
        output_dir=str(tmp_path / f"run-{seed}-{len(callbacks)}"), method="grpo", num_generations=4,
        per_device_train_batch_size=4, max_completion_length=8, min_gap=3, max_steps=1, save_strategy="no", report_to=[],
        seed=seed, activation_checkpointing=False, use_cpu=True, samples_per_step=-1, eval_before_after=False,
    )
    trainer = PRPOTrainer(str(model_dir), args=args, train_dataset=data, callbacks=callbacks,
                          grader=lambda responses, golds: [False] * len(responses))
    trainer.train()
    lines = (tmp_path / f"run-{seed}-{len(callbacks)}" / "samples.jsonl").read_text().splitlines()
    return [json.loads(line)["response"] for line in lines]


def test_an_evaluation_changes_no_rollout_and_seeds_stay_independent(tiny_causal_lm_dir, tmp_path):
    plain = rollouts(tiny_causal_lm_dir, tmp_path, 0, [])
    evaluated = rollouts(tiny_causal_lm_dir, tmp_path, 0, [EvaluateAtStart()])
    other_seed = rollouts(tiny_causal_lm_dir, tmp_path, 1, [EvaluateAtStart()])
    assert len(plain) == 4 and len(set(plain)) > 1
    assert evaluated == plain  # the same draws with or without the evaluation
    assert other_seed != evaluated  # another seed, another stream, also after an evaluation
