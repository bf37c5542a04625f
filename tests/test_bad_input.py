"""Bad input gets a clear error naming the row, key or function, before the first step where it can be
known then: one test per row of docs/faults.md's table (rows checked elsewhere name their test there)."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset

from prpo.tasks.rows import check_dataset
from prpo.training.config import PRPOConfig
from prpo.training.rewards import checked_reward_function
from prpo.training.trainer import PRPOTrainer

CHAT = [{"role": "user", "content": "What is 3 + 4?"}]


def rows(**overrides) -> list[dict]:
    base = [{"prompt": CHAT, "problem": "What is 3 + 4?", "answer": "7", "prompt_id": "a"},
            {"prompt": [{"role": "user", "content": "What is 5 + 1?"}], "problem": "What is 5 + 1?", "answer": "6",
             "prompt_id": "b"}]
    return [{**row, **overrides} for row in base]


def test_a_row_without_the_prompt_column(qwen_tokenizer):
    data = Dataset.from_list([{k: v for k, v in row.items() if k != "prompt"} for row in rows()])
    with pytest.raises(ValueError, match=r"dataset lacks the 'prompt' column .* has \['problem', 'answer', 'prompt_id'\]"):
        check_dataset(data, qwen_tokenizer, 512)


def test_a_row_without_the_answer_column(qwen_tokenizer):
    data = Dataset.from_list([{k: v for k, v in row.items() if k != "answer"} for row in rows()])
    with pytest.raises(ValueError, match="dataset lacks the 'answer' column"):
        check_dataset(data, qwen_tokenizer, 512)
    check_dataset(data, qwen_tokenizer, 512, needs_answer=False)  # reward functions read their own columns


def test_an_empty_prompt_or_answer_names_the_row(qwen_tokenizer):
    data = Dataset.from_list([rows()[0], {**rows()[1], "prompt": []}])
    with pytest.raises(ValueError, match=r"dataset row 1 \(prompt_id 'b'\): prompt is empty"):
        check_dataset(data, qwen_tokenizer, 512)
    data = Dataset.from_list([rows()[0], {**rows()[1], "answer": " "}])
    with pytest.raises(ValueError, match=r"dataset row 1 \(prompt_id 'b'\): answer must be a non-empty string"):
        check_dataset(data, qwen_tokenizer, 512)


def test_prompt_ids_that_merge_different_prompts_into_one_group(qwen_tokenizer):
    data = Dataset.from_list(rows(prompt_id="same"))
    with pytest.raises(ValueError, match=r"dataset row 1 \(prompt_id 'same'\): prompt_id is shared with a different "
                                         "problem; groups would merge"):
        check_dataset(data, qwen_tokenizer, 512)


def test_a_conversational_dataset_with_a_tokenizer_without_chat_template(qwen_tokenizer):
    tokenizer = type(qwen_tokenizer).from_pretrained(qwen_tokenizer.name_or_path)
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match=r"dataset row 0 \(prompt_id 'a'\): the prompt is conversational .* no chat "
                                         "template"):
        check_dataset(Dataset.from_list(rows()), tokenizer, 512)
    check_dataset(Dataset.from_list(rows(prompt="What is 3 + 4?")[:1]), tokenizer, 512)  # plain text is fine


@pytest.mark.parametrize("bad, message", [
    ([1.0, math.nan], r"reward function bad returned nan for completion 1: expected a finite number, or None"),
    ([1.0, math.inf], r"returned inf for completion 1"),
    ([1.0, "1"], r"returned '1' for completion 1"),
    ((1.0 for _ in range(2)), r"reward function bad returned generator, expected a list"),
])
def test_a_reward_function_returning_nan_or_not_a_number(bad, message):
    def bad_fn(completions, **kwargs):
        return bad

    bad_fn.__name__ = "bad"
    checked = checked_reward_function(bad_fn)
    assert checked.__name__ == "bad"
    with pytest.raises(ValueError, match=message):
        checked(prompts=["p", "q"], completions=["a", "b"], completion_ids=[[1], [2]])


def test_none_rewards_pass_and_the_trainer_checks_every_reward_function(tiny_causal_lm_dir, tmp_path):
    def sometimes(completions, **kwargs):
        return [None, 0.5][: len(completions)]

    sometimes.reward_range = (0.0, 1.0)
    assert checked_reward_function(sometimes)(completions=["a", "b"]) == [None, 0.5]
    args = PRPOConfig(output_dir=str(tmp_path), prm={"type": "arithmetic"}, num_generations=2,
                      per_device_train_batch_size=2, max_completion_length=8, min_gap=3, use_cpu=True, report_to=[],
                      activation_checkpointing=False)
    trainer = PRPOTrainer(str(tiny_causal_lm_dir), reward_funcs=sometimes, args=args,
                          train_dataset=Dataset.from_list(rows()))
    [wrapped] = trainer.reward_funcs
    assert wrapped.__wrapped__ is sometimes and wrapped.reward_range == (0.0, 1.0)
    with pytest.raises(ValueError, match="'sometimes' returned 2 rewards, but 3 were expected"):
        trainer._calculate_rewards([{}] * 3, ["p"] * 3, ["a", "b", "c"], [[1]] * 3)  # TRL's own count check


def test_a_model_folder_that_is_not_a_model(tmp_path):
    from prpo.models import resolve_model

    (tmp_path / "weights.txt").write_text("not a model")
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path} is neither a model folder \(no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ValueError, match="is a file; expected a model folder"):
        resolve_model(str(tmp_path / "weights.txt"))
