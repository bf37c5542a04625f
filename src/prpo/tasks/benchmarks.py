"""MATH (train, and MATH500 as its test split), GSM8K, AIME 2024 and AMC 2023, graded by math-verify.

Each loads a local file (`data_file=`), a hub dataset (`dataset_id=`), or by default its file under
`data_dir` / `$PRPO_DATA_DIR` (named as in the `*_SOURCES` tables below, e.g. `math500.jsonl`)
and else its usual hub dataset.
A malformed row is an error naming its location; `skip_bad_rows=True` drops such rows with a
warning instead (the MATH training file has 2 problems with an empty answer).
"""

from __future__ import annotations

from pathlib import Path

from prpo.grading import extract_boxed, is_correct, is_correct_many
from prpo.tasks.base import Example, register_task
from prpo.tasks.sources import Row, RowError, Source, answer_text, read_rows, text_field, to_examples

MATH_SOURCES = {
    "train": Source("math_train_answers.json", "DigitalLearningGmbH/MATH-lighteval", "train"),
    "test": Source("math500.jsonl", "HuggingFaceH4/MATH-500", "test"),
}
GSM8K_SOURCES = {
    "train": Source("gsm8k_train.jsonl", "openai/gsm8k", "train", config="main"),
    "test": Source("gsm8k_test.jsonl", "openai/gsm8k", "test", config="main"),
}
AIME24_SOURCES = {"test": Source("aime24.jsonl", "HuggingFaceH4/aime_2024", "train")}
AMC23_SOURCES = {"test": Source("amc23.jsonl", "math-ai/amc23", "test")}

_PROBLEM_FIELDS = ("problem", "question")
_ANSWER_FIELDS = ("answer", "final_answer")
_ID_FIELDS = ("id", "unique_id")


def _row_id(row: Row, task: str, index: int) -> str:
    """The row's own id (`id`, `unique_id`), else `<task>-<index>`."""
    for name in _ID_FIELDS:
        if row.get(name) is not None:
            return str(row[name])
    return f"{task}-{index}"


def problem_answer_example(row: Row, index: int, task: str) -> Example:
    """A `problem` (or `question`) row whose gold is `answer` / `final_answer`, else the last
    `\\boxed{}` of `solution` (the original MATH format). Other fields go to `meta`."""
    problem = text_field(row, *_PROBLEM_FIELDS)
    name = next((n for n in _ANSWER_FIELDS if row.get(n) is not None), None)
    if name is not None:
        answer = answer_text(row[name], name)
    elif isinstance(row.get("solution"), str) and extract_boxed(row["solution"]) is not None:
        answer = extract_boxed(row["solution"])
    else:
        raise RowError("missing field 'answer' (or 'final_answer', or a 'solution' with a \\boxed{} answer)")
    meta = {k: v for k, v in row.items() if k not in _PROBLEM_FIELDS + _ANSWER_FIELDS}
    return Example(_row_id(row, task, index), problem, answer, meta)


def gsm8k_example(row: Row, index: int) -> Example:
    """GSM8K: `question`; the gold is the number after `####` in `answer` (commas removed)."""
    problem = text_field(row, "question")
    solution = text_field(row, "answer")
    if "####" not in solution:
        raise RowError("field 'answer' has no '#### <number>' final answer")
    reasoning, _, final = solution.rpartition("####")
    answer = final.strip().replace(",", "")
    if not answer:
        raise RowError("field 'answer' has nothing after '####'")
    meta = {"solution": reasoning.strip(), **{k: v for k, v in row.items() if k not in ("question", "answer")}}
    return Example(_row_id(row, "gsm8k", index), problem, answer_text(answer, "answer"), meta)


def _register_problem_answer(task: str, sources: dict[str, Source], default_split: str, doc: str) -> None:
    """Register ``task``: a benchmark of ``problem``/``answer`` rows read from ``sources``."""

    def load(
        *, data_file: str | Path | None = None, dataset_id: str | None = None, split: str | None = None,
        data_dir: str | Path | None = None, skip_bad_rows: bool = False,
    ) -> list[Example]:
        rows = read_rows(
            data_file=data_file, dataset_id=dataset_id, split=split,
            sources=sources, default_split=default_split, data_dir=data_dir,
        )
        return to_examples(rows, lambda row, index: problem_answer_example(row, index, task), skip_bad_rows=skip_bad_rows)

    load.__name__, load.__doc__ = f"load_{task}", doc
    register_task(task, template="qwen_boxed", grader=is_correct, grade_many=is_correct_many)(load)


_register_problem_answer("math", MATH_SOURCES, "train", "MATH training problems (split `train`, default) or MATH500 (split `test`).")
_register_problem_answer("math500", MATH_SOURCES, "test", "MATH500: the `math` task's test split.")
_register_problem_answer("aime24", AIME24_SOURCES, "test", "AIME 2024 (30 problems; answers are integers, `025` is read as 25).")
_register_problem_answer("amc23", AMC23_SOURCES, "test", "AMC 2023 (40 problems; float answers like 27.0 become \"27\").")


@register_task("gsm8k", template="qwen_boxed", grader=is_correct, grade_many=is_correct_many)
def load_gsm8k(
    *, data_file: str | Path | None = None, dataset_id: str | None = None, split: str | None = None,
    data_dir: str | Path | None = None, skip_bad_rows: bool = False,
) -> list[Example]:
    """GSM8K (split `test`, default, or `train`)."""
    rows = read_rows(
        data_file=data_file, dataset_id=dataset_id, split=split,
        sources=GSM8K_SOURCES, default_split="test", data_dir=data_dir,
    )
    return to_examples(rows, gsm8k_example, skip_bad_rows=skip_bad_rows)
