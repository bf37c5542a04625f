"""Tasks: problems with gold answers, a prompt template and a grader, loaded by name from a registry."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prpo.registry import Registry
from prpo.tasks.templates import Messages, get_template

Grader = Callable[[str, str], bool]
BatchGrader = Callable[[list[str], list[str]], list[bool]]


@dataclass(frozen=True)
class Example:
    """One problem. `problem` is the dataset's text verbatim (what the PRM is shown)."""

    id: str
    problem: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Task:
    """Examples + the name of their prompt template + `grader(response, gold) -> bool`.

    `grade_many`, when set, grades a batch at once (e.g. `prpo.grading.is_correct_many`).
    """

    name: str
    examples: list[Example]
    template: str
    grader: Grader
    grade_many: BatchGrader | None = None

    def __post_init__(self) -> None:
        get_template(self.template)
        seen: set[str] = set()
        for example in self.examples:
            if example.id in seen:
                raise ValueError(f"task {self.name!r}: duplicate example id {example.id!r}")
            seen.add(example.id)

    def __len__(self) -> int:
        return len(self.examples)

    def prompt(self, example: Example, tokenizer=None) -> Messages | str:
        """The chat messages (no tokenizer), else the rendered string (see `Template.render`)."""
        return get_template(self.template).render(example.problem, tokenizer)

    def grade(self, responses: list[str], golds: list[str]) -> list[bool]:
        """Grade each response against its gold answer."""
        if len(responses) != len(golds):
            raise ValueError(f"task {self.name!r}: {len(responses)} responses but {len(golds)} gold answers")
        if self.grade_many is not None:
            return list(self.grade_many(responses, golds))
        return [bool(self.grader(response, gold)) for response, gold in zip(responses, golds)]

    def to_dataset(self, tokenizer=None):
        """A `datasets.Dataset` for TRL: columns `prompt`, `problem`, `answer`, `prompt_id`."""
        from datasets import Dataset

        return Dataset.from_dict(
            {
                "prompt": [self.prompt(example, tokenizer) for example in self.examples],
                "problem": [example.problem for example in self.examples],
                "answer": [example.answer for example in self.examples],
                "prompt_id": [example.id for example in self.examples],
            }
        )


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: `load(data_file=, dataset_id=, split=, [limit=,] **options) -> list[Example]`."""

    name: str
    load: Callable[..., list[Example]]
    template: str
    grader: Grader
    grade_many: BatchGrader | None = None

    @property
    def fn(self) -> Callable[..., list[Example]]:
        """The task's function as a registry entry: its loader."""
        return self.load


TASKS: Registry[TaskSpec] = Registry("task")


def register_task(name: str, *, template: str, grader: Grader, grade_many: BatchGrader | None = None):
    """Decorator registering a loader function as task `name` (a second task of that name is an error)."""

    def decorator(load: Callable[..., list[Example]]) -> Callable[..., list[Example]]:
        TASKS.add(TaskSpec(name, load, template, grader, grade_many))
        return load

    return decorator


def load_task(
    name: str,
    *,
    data_file: str | Path | None = None,
    dataset_id: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    template: str | None = None,
    **options: Any,
) -> Task:
    """Load task `name` from a local file, a Hugging Face dataset id or its defaults.

    `limit` keeps the first `limit` examples; `template` overrides the task's prompt template;
    `options` go to the task's loader (e.g. `data_dir=` for benchmarks, `seed=` for arithmetic).
    """
    spec = TASKS.lookup(name)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"task {name!r}: limit must be a positive integer, got {limit!r}")
    kwargs = dict(data_file=data_file, dataset_id=dataset_id, split=split, **options)
    if "limit" in inspect.signature(spec.load).parameters:  # generators make `limit` examples
        kwargs["limit"] = limit
    try:
        inspect.signature(spec.load).bind(**kwargs)
    except TypeError as err:
        raise ValueError(f"task {name!r}: {err} (options given: {sorted(options)})") from None
    examples = spec.load(**kwargs)[:limit]
    if not examples:
        raise ValueError(f"task {name!r}: no examples")
    return Task(name, examples, template or spec.template, spec.grader, spec.grade_many)
