"""The rules for a training dataset's rows: each row's group (prompt id), the problem the PRM is shown, and checks.

A row has a ``prompt`` (text or conversational, as for TRL's GRPOTrainer) and may have
``prompt_id`` (default: a content hash of the prompt, so equal prompts form one group),
``problem`` (default: the prompt's last user message) and ``answer`` (the default grader's gold).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable, Mapping
from typing import Any

from datasets import Dataset


def prompt_key(prompt: str | list[dict[str, Any]]) -> str:
    """Group id of a prompt without a ``prompt_id``: the first 16 hex digits of sha256 of its canonical JSON.

    Equal prompts get one id (one group); the id is the same in every process, run and resume
    (Python's `hash` of a string is salted per process).
    """
    text = json.dumps(prompt, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def row_prompt_id(row: Mapping[str, Any]) -> Hashable:
    """The row's ``prompt_id``, else `prompt_key` of its prompt."""
    return row["prompt_id"] if "prompt_id" in row else prompt_key(row["prompt"])


def row_problem(row: Mapping[str, Any]) -> str:
    """The text the PRM is shown: the row's ``problem``, else the prompt's last user message (a text prompt as is)."""
    if "problem" in row:
        return row["problem"]
    prompt = row["prompt"]
    if isinstance(prompt, str):
        return prompt
    users = [message["content"] for message in prompt if message.get("role") == "user"]
    if not users:
        return ""
    content = users[-1]
    if isinstance(content, str):
        return content
    return "".join(part.get("text") or "" for part in content if part.get("type") == "text")  # multimodal parts


def check_dataset(dataset, tokenizer, max_prompt_length: int | None, *, needs_answer: bool = True) -> None:
    """Every row has a prompt and a problem text, and a gold ``answer`` when ``needs_answer`` (the default grader).

    ``prompt_id`` and ``problem`` may be absent (`row_prompt_id`, `row_problem` derive them); a
    prompt id shared by different problems would merge groups and is refused, and every prompt
    fits ``max_prompt_length``. A dict of datasets (TRL's eval sets) is checked set by set; a
    streamed dataset is not read here.
    """
    if isinstance(dataset, Mapping):
        for part in dataset.values():
            check_dataset(part, tokenizer, max_prompt_length, needs_answer=needs_answer)
        return
    if not isinstance(dataset, Dataset):
        return
    columns = dataset.column_names
    if "prompt" not in columns:
        raise ValueError(f"dataset lacks the 'prompt' column (text or conversational, as for GRPOTrainer); has {columns}")
    if needs_answer and "answer" not in columns:
        raise ValueError(f"dataset lacks the 'answer' column (has {columns}): the default grader checks each response "
                         "against it; add it, or pass reward_funcs (e.g. trl.rewards.accuracy_reward reads 'solution')")
    problems: dict[Any, str] = {}
    for index, row in enumerate(dataset):
        if "prompt_id" in row and row["prompt_id"] is None:
            raise ValueError(f"dataset row {index}: prompt_id is missing")
        prompt_id = row_prompt_id(row)
        where = f"dataset row {index} (prompt_id {prompt_id!r})"
        if not row["prompt"]:
            raise ValueError(f"{where}: prompt is empty")
        problem = row_problem(row)
        if not isinstance(problem, str) or not problem.strip():
            source = "problem" if "problem" in row else "the prompt's last user message (no 'problem' column)"
            raise ValueError(f"{where}: {source} must be a non-empty string, got {problem!r}")
        if needs_answer and (not isinstance(row["answer"], str) or not row["answer"].strip()):
            raise ValueError(f"{where}: answer must be a non-empty string, got {row['answer']!r}")
        if problems.setdefault(prompt_id, problem) != problem:
            raise ValueError(f"{where}: prompt_id is shared with a different problem; groups would merge")
        if not isinstance(row["prompt"], str) and getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(f"{where}: the prompt is conversational (a list of messages) and the tokenizer has no "
                             "chat template; use a chat model's tokenizer, set tokenizer.chat_template, or give "
                             "plain-text prompts")
        if max_prompt_length is not None:
            length = _prompt_length(tokenizer, row["prompt"])
            if length > max_prompt_length:
                raise ValueError(f"{where}: prompt is {length} tokens, more than max_prompt_length={max_prompt_length}")


def _prompt_length(tokenizer, prompt: str | list[dict[str, str]]) -> int:
    if isinstance(prompt, str):
        return len(tokenizer(prompt)["input_ids"])
    return len(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
