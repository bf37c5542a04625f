"""The learning-rate warm-up: asked for, it happens; the paper's constant 1e-6 stays exactly constant.

transformers' 'constant' schedule ignores `warmup_steps`, so PRPOConfig defaults to
'constant_with_warmup' (exactly constant without a warm-up) and refuses 'constant' with one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import get_scheduler

from prpo.training.config import ConfigError, PRPOConfig
from prpo.training.run_config import load_config
from prpo.training.trainer import PRPOTrainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def logged_learning_rates(model_dir, tmp_path, **overrides) -> list[float]:
    """The learning rate TRL logs at steps 1-3 of a tiny GRPO run."""
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": "What is 3 + 4?"}], "answer": "7"}])
    args = PRPOConfig(
        output_dir=str(tmp_path / "run"), method="grpo", num_generations=2, per_device_train_batch_size=2,
        max_completion_length=4, min_gap=2, max_steps=3, save_strategy="no", report_to=[], seed=0,
        activation_checkpointing=False, use_cpu=True, learning_rate=1e-3, eval_before_after=False, **overrides,
    )
    PRPOTrainer(str(model_dir), args=args, train_dataset=data, grader=lambda r, g: [False] * len(r)).train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    return [row["learning_rate"] for row in rows if "learning_rate" in row]


def test_a_warm_up_with_the_default_schedule_happens(tiny_causal_lm_dir, tmp_path):
    # transformers' linear warm-up over w = 2 steps: update s (from 1) runs at lr * (s - 1) / w, then at lr;
    # TRL logs the rate each update used
    assert logged_learning_rates(tiny_causal_lm_dir, tmp_path / "warm", warmup_steps=2) == pytest.approx([0.0, 5e-4, 1e-3])
    assert logged_learning_rates(tiny_causal_lm_dir, tmp_path / "plain") == pytest.approx([1e-3, 1e-3, 1e-3])


def test_constant_schedule_with_a_warm_up_is_refused_naming_both_keys(tmp_path):
    with pytest.raises(ConfigError, match="warmup_steps.*lr_scheduler_type='constant'.*constant_with_warmup"):
        PRPOConfig(output_dir=str(tmp_path), lr_scheduler_type="constant", warmup_steps=5, use_cpu=True)
    with pytest.raises(ConfigError, match="warmup_steps"):
        PRPOConfig(output_dir=str(tmp_path), lr_scheduler_type="constant", warmup_steps=0.1, use_cpu=True)
    PRPOConfig(output_dir=str(tmp_path), lr_scheduler_type="constant", use_cpu=True)  # no warm-up: fine


@pytest.mark.parametrize("config", ["paper-qwen2.5-math-1.5b.yaml", None], ids=["paper preset", "default"])
def test_without_a_warm_up_the_rate_is_exactly_constant(config, tmp_path):
    if config is None:
        args = PRPOConfig(output_dir=str(tmp_path), learning_rate=1e-6, use_cpu=True)
    else:
        args = load_config(CONFIGS / config).training
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    steps = 50
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.get_warmup_steps(steps),
                              num_training_steps=steps)
    rates = []
    for _ in range(steps):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert args.learning_rate == 1e-6 and set(rates) == {1e-6}
