"""Task loading (benchmarks from local files), row errors, templates, datasets and the registries."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from prpo.grading import is_correct_many
from prpo.tasks import (
    TASKS,
    TEMPLATES,
    Example,
    Task,
    Template,
    get_template,
    load_task,
    register_task,
    register_template,
)
from prpo.tasks.templates import QWEN_MATH_SYSTEM


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _file_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# every file format, on a few rows of each (tests/fixtures/data)


@pytest.mark.parametrize(("folder", "size", "first_id", "first_answer", "text_row", "text_answer"), [
    ("fixture_data", 5, "test/precalculus/fixture-1.json", "\\left( 2, \\frac{3\\pi}{2} \\right)", 3, "\\text{Ana}"),
    ("shared_data", 500, "test/precalculus/807.json", "\\left( 3, \\frac{\\pi}{2} \\right)", 4, "\\text{Evelyn}"),
])
def test_math500_from_file(request, folder, size, first_id, first_answer, text_row, text_answer):
    data = request.getfixturevalue(folder)  # the full file: an extra check where ../shared/data exists
    task = load_task("math500", data_file=data / "math500.jsonl")
    rows = _file_rows(data / "math500.jsonl")
    assert len(task) == size and task.template == "qwen_boxed"
    first = task.examples[0]
    assert first.id == rows[0]["unique_id"] == first_id
    assert first.problem == rows[0]["problem"]  # verbatim: the PRM sees the dataset's text
    assert first.answer == first_answer  # a tuple
    assert first.meta["subject"] == "Precalculus" and first.meta["level"] == rows[0]["level"]
    assert first.meta["solution"] == rows[0]["solution"] and "\\boxed" in first.meta["solution"]
    assert task.examples[text_row].answer == text_answer
    assert len({example.id for example in task.examples}) == size


def test_default_files_from_data_dir_and_env_on_fixtures(fixture_data, monkeypatch):
    assert len(load_task("math500", data_dir=fixture_data)) == 5
    monkeypatch.setenv("PRPO_DATA_DIR", str(fixture_data))
    assert [e.answer for e in load_task("aime24").examples] == ["204", "25", "45"]  # "025", "045" in the file
    assert len(load_task("gsm8k", split="train")) == 3 and len(load_task("gsm8k", split="test", limit=2)) == 2
    assert load_task("math", split="test", limit=3).examples[0].id == "test/precalculus/fixture-1.json"
    with pytest.warns(UserWarning, match="skipped 1 bad row"):
        assert len(load_task("math", split="train", skip_bad_rows=True)) == 4


def test_math_train_json_list_with_an_empty_answer(fixture_data):
    path = fixture_data / "math_train_answers.json"
    # The 4th object of the list opens on line 14 (1 + 4 lines per object before it).
    with pytest.raises(ValueError, match=r"math_train_answers\.json line 14: field 'final_answer' is empty"):
        load_task("math", data_file=path)
    with pytest.warns(UserWarning, match="skipped 1 bad row"):
        task = load_task("math", data_file=path, skip_bad_rows=True)
    assert [e.answer for e in task.examples] == ["\\frac{1}{4}", "3003", "609", "\\frac{11}{36}"]
    assert [e.id for e in task.examples] == ["math-0", "math-1", "math-2", "math-4"]  # ids keep the row index
    assert task.examples[0].problem.startswith("A bag holds 1 red marble and 3 blue marbles.")


def test_gsm8k_gold_from_the_fixture(fixture_data):
    task = load_task("gsm8k", data_file=fixture_data / "gsm8k_test.jsonl")
    rows = _file_rows(fixture_data / "gsm8k_test.jsonl")
    assert [e.answer for e in task.examples] == ["18", "3", "540", "2125"]  # "#### 2,125" in the last row
    assert task.examples[0].problem == rows[0]["question"]
    assert task.examples[0].meta["solution"] == "Mia has 20 - 2 = <<20-2=18>>18 eggs left every day."
    assert all(is_correct_many([f"\\boxed{{{e.answer}}}" for e in task.examples], [e.answer for e in task.examples]))


def test_aime_and_amc_answers_from_the_fixtures(fixture_data):
    aime = load_task("aime24", data_file=fixture_data / "aime24.jsonl")
    amc = load_task("amc23", data_file=fixture_data / "amc23.jsonl")
    assert [e.answer for e in aime.examples] == ["204", "25", "45"]
    assert [e.answer for e in amc.examples] == ["27", "36", "45", "3159", "-1"]  # 27.0 ... -1.0 in the file
    assert aime.examples[0].id == "60" and "url" in aime.examples[0].meta
    assert [e.id for e in amc.examples] == ["0", "1", "2", "3", "17"]


# ---------------------------------------------------------------------------------------------
# the full benchmark files (extra checks where ../shared/data exists)


def test_default_file_from_data_dir_and_env(shared_data, monkeypatch):
    assert len(load_task("math500", data_dir=shared_data)) == 500
    monkeypatch.setenv("PRPO_DATA_DIR", str(shared_data))
    assert len(load_task("aime24")) == 30
    assert len(load_task("gsm8k", split="train", limit=5)) == 5
    assert load_task("math", split="test", limit=3).examples[0].id == "test/precalculus/807.json"


def test_missing_default_file_in_an_explicit_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"aime24\.jsonl: no such data file"):
        load_task("aime24", data_dir=tmp_path)


def test_math_train_file_has_two_empty_answers(shared_data):
    path = shared_data / "math_train_answers.json"
    with pytest.raises(ValueError, match=r"math_train_answers\.json line 9202: field 'final_answer' is empty"):
        load_task("math", data_file=path)
    with pytest.warns(UserWarning, match="skipped 2 bad row"):
        task = load_task("math", data_file=path, skip_bad_rows=True)
    assert len(task) == 7498
    assert task.examples[0].answer == "\\frac{1}{4}" and task.examples[0].id == "math-0"
    assert task.examples[0].problem.startswith("A board game spinner is divided into three parts")


def test_gsm8k_gold_is_the_number_after_hashes(shared_data):
    task = load_task("gsm8k", data_file=shared_data / "gsm8k_test.jsonl")
    rows = _file_rows(shared_data / "gsm8k_test.jsonl")
    assert len(task) == 1319
    assert task.examples[0].answer == "18" and task.examples[0].problem == rows[0]["question"]
    assert task.examples[0].meta["solution"].endswith("18 every day at the farmer\u2019s market.")
    for example, row in zip(task.examples, rows):
        assert example.answer == row["answer"].split("####")[1].strip().replace(",", "")
    assert all(is_correct_many([f"\\boxed{{{e.answer}}}" for e in task.examples[:100]], [e.answer for e in task.examples[:100]]))


def test_gsm8k_commas_removed(tmp_path):
    path = _write_jsonl(tmp_path / "g.jsonl", [{"question": "How many?", "answer": "So 1,000 + 234.\n#### 1,234"}])
    assert load_task("gsm8k", data_file=path).examples[0].answer == "1234"


def test_aime_and_amc_answers_are_normalised(shared_data):
    aime = load_task("aime24", data_file=shared_data / "aime24.jsonl")
    amc = load_task("amc23", data_file=shared_data / "amc23.jsonl")
    assert len(aime) == 30 and len(amc) == 40
    aime_raw = [row["answer"] for row in _file_rows(shared_data / "aime24.jsonl")]
    assert "025" in aime_raw and aime.examples[aime_raw.index("025")].answer == "25"
    assert [e.answer for e in amc.examples[:5]] == ["27", "36", "45", "3159", "36"]
    assert amc.examples[15].answer == "-1"
    assert all(example.answer.lstrip("-").isdigit() for example in aime.examples + amc.examples)
    assert aime.examples[0].id == "60" and "url" in aime.examples[0].meta


# ---------------------------------------------------------------------------------------------
# bad files and rows: the error names the file, the line and the field


def test_missing_field_names_file_line_and_field(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"... #### {i}"} for i in range(16)] + [{"question": "q16"}]
    path = _write_jsonl(tmp_path / "gsm8k_test.jsonl", rows)
    with pytest.raises(ValueError, match=r"gsm8k_test\.jsonl line 17: missing field 'answer'"):
        load_task("gsm8k", data_file=path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"problem": "p"}, "missing field 'answer' \\(or 'final_answer'"),
        ({"problem": "", "answer": "1"}, "field 'problem' must be a non-empty string"),
        ({"problem": 5, "answer": "1"}, "field 'problem' must be a non-empty string"),
        ({"answer": "1"}, "missing field 'problem' \\(or 'question'\\)"),
        ({"problem": "p", "answer": True}, "field 'answer' must be a string or a number"),
        ({"problem": "p", "answer": float("nan")}, "field 'answer' must be a finite number"),
        ({"problem": "p", "answer": "  "}, "field 'answer' is empty"),
    ],
)
def test_bad_math_rows(tmp_path, row, message):
    path = _write_jsonl(tmp_path / "m.jsonl", [{"problem": "fine", "answer": "2"}, row])
    with pytest.raises(ValueError, match=r"m\.jsonl line 2: " + message):
        load_task("math", data_file=path)


def test_skip_bad_rows_still_needs_one_good_row(tmp_path):
    path = _write_jsonl(tmp_path / "m.jsonl", [{"problem": "p"}, {"problem": "q", "answer": ""}])
    with pytest.warns(UserWarning, match="skipped 2 bad row"), pytest.raises(ValueError, match="all 2 rows are bad"):
        load_task("math", data_file=path, skip_bad_rows=True)


def test_gsm8k_answer_without_final_number(tmp_path):
    path = _write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "no hashes"}])
    with pytest.raises(ValueError, match=r"g\.jsonl line 1: field 'answer' has no '#### <number>'"):
        load_task("gsm8k", data_file=path)


def test_math_answer_from_boxed_solution(tmp_path):
    path = _write_jsonl(tmp_path / "m.jsonl", [{"problem": "p", "solution": "so $\\boxed{\\frac{3}{4}}$."}])
    assert load_task("math", data_file=path).examples[0].answer == "\\frac{3}{4}"


def test_bad_json_names_file_and_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"problem": "a", "answer": "1"}\n\n{"problem": "b", "answer": \n')
    with pytest.raises(ValueError, match=r"m\.jsonl line 3: invalid JSON"):
        load_task("math", data_file=path)
    listing = tmp_path / "m.json"
    listing.write_text('[\n  {"problem": "a", "answer": "1"},\n  {"problem": "b" "answer": "2"}\n]\n')
    with pytest.raises(ValueError, match=r"m\.json line 3: invalid JSON"):
        load_task("math", data_file=listing)


def test_json_list_rows_are_located_by_line(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('[\n  {"problem": "a",\n   "answer": "1"},\n\n  {"problem": "b"}\n]\n')
    with pytest.raises(ValueError, match=r"m\.json line 5: missing field 'answer'"):
        load_task("math", data_file=path)
    path.write_text('{"problem": "a", "answer": "1"}')
    with pytest.raises(ValueError, match="expected a JSON list of objects"):
        load_task("math", data_file=path)
    path.write_text('[{"problem": "a", "answer": "1"}, 7]')
    with pytest.raises(ValueError, match=r"m\.json line 1: expected a JSON object, got int"):
        load_task("math", data_file=path)


def test_empty_missing_and_unsupported_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(ValueError, match=r"empty\.jsonl: the file has no rows"):
        load_task("math", data_file=tmp_path / "empty.jsonl")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(ValueError, match=r"empty\.json: the file has no rows"):
        load_task("math", data_file=tmp_path / "empty.json")
    with pytest.raises(FileNotFoundError, match="nope.jsonl: no such data file"):
        load_task("math", data_file=tmp_path / "nope.jsonl")
    (tmp_path / "m.csv").write_text("problem,answer\n")
    with pytest.raises(ValueError, match="unsupported data file type '.csv'"):
        load_task("math", data_file=tmp_path / "m.csv")


def test_duplicate_ids_name_both_lines(tmp_path):
    rows = [{"id": 1, "problem": "a", "answer": "1"}, {"id": 2, "problem": "b", "answer": "2"},
            {"id": 1, "problem": "c", "answer": "3"}]
    path = _write_jsonl(tmp_path / "a.jsonl", rows)
    with pytest.raises(ValueError, match=r"a\.jsonl line 3: duplicate id '1' \(first at .*a\.jsonl line 1\)"):
        load_task("aime24", data_file=path)


def test_bad_arguments(tmp_path, fixture_data):
    with pytest.raises(ValueError, match="unknown task 'nope'; known: .*gsm8k"):
        load_task("nope")
    with pytest.raises(ValueError, match="task 'math500'.*unexpected keyword argument 'seed'"):
        load_task("math500", data_file=fixture_data / "math500.jsonl", seed=3)
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        load_task("math500", data_file=fixture_data / "math500.jsonl", limit=0)
    with pytest.raises(ValueError, match="not both"):
        load_task("math500", data_file=fixture_data / "math500.jsonl", dataset_id="HuggingFaceH4/MATH-500")
    with pytest.raises(ValueError, match="no default data for split 'validation'"):
        load_task("gsm8k", split="validation")
    with pytest.raises(ValueError, match="unknown prompt template 'nope'"):
        load_task("math500", data_file=fixture_data / "math500.jsonl", template="nope")


def test_dataset_id_goes_through_datasets_load_dataset(tmp_path):
    """The hub code path, pointed at a local dataset folder (which `load_dataset` accepts too)."""
    folder = tmp_path / "my-gsm8k"
    folder.mkdir()
    _write_jsonl(folder / "test.jsonl", [{"question": "How many?", "answer": "2 + 2 = 4\n#### 4"}] * 2)
    task = load_task("gsm8k", dataset_id=str(folder), split="test")
    assert [(e.id, e.problem, e.answer) for e in task.examples] == [("gsm8k-0", "How many?", "4"), ("gsm8k-1", "How many?", "4")]
    _write_jsonl(folder / "train.jsonl", [{"id": 7, "question": "q", "answer": "#### 4"}] * 2)
    with pytest.raises(ValueError, match=r"my-gsm8k \(train\) row 2: duplicate id '7' \(first at .*row 1\)"):
        load_task("gsm8k", dataset_id=str(folder), split="train")


# ---------------------------------------------------------------------------------------------
# prompts, datasets, grading


def test_qwen_boxed_prompt_forms(fixture_data, qwen_tokenizer_dir):
    task = load_task("math500", data_file=fixture_data / "math500.jsonl", limit=2)
    example = task.examples[1]
    assert task.prompt(example) == [
        {"role": "system", "content": QWEN_MATH_SYSTEM},
        {"role": "user", "content": example.problem},
    ]
    expected = (f"<|im_start|>system\n{QWEN_MATH_SYSTEM}<|im_end|>\n<|im_start|>user\n{example.problem}<|im_end|>\n"
                "<|im_start|>assistant\n")
    assert TEMPLATES["qwen_boxed"].text(example.problem) == expected
    tokenizer = AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir))
    assert task.prompt(example, tokenizer) == expected  # Qwen's own chat template renders the same text
    tokenizer.chat_template = None  # a base model without a chat template gets the plain rendering
    assert task.prompt(example, tokenizer) == expected


def test_chat_template_puts_the_instruction_in_the_user_turn(fixture_data, qwen_tokenizer):
    task = load_task("math500", data_file=fixture_data / "math500.jsonl", limit=1, template="chat")
    problem = task.examples[0].problem
    (message,) = task.prompt(task.examples[0])
    assert message == {"role": "user", "content": f"{problem}\n\n{QWEN_MATH_SYSTEM}"}
    rendered = task.prompt(task.examples[0], qwen_tokenizer)
    assert rendered.endswith(f"<|im_start|>user\n{problem}\n\n{QWEN_MATH_SYSTEM}<|im_end|>\n<|im_start|>assistant\n")


def test_to_dataset_has_the_columns_trl_and_the_trainer_use(fixture_data):
    from trl.data_utils import is_conversational

    task = load_task("amc23", data_file=fixture_data / "amc23.jsonl")
    dataset = task.to_dataset()
    assert dataset.column_names == ["prompt", "problem", "answer", "prompt_id"]
    assert len(dataset) == 5
    row = dataset[3]
    example = task.examples[3]
    assert is_conversational(row)
    assert row["prompt"] == task.prompt(example)
    assert (row["problem"], row["answer"], row["prompt_id"]) == (example.problem, example.answer, example.id)


def test_task_grade_uses_the_batch_grader(fixture_data):
    task = load_task("math500", data_file=fixture_data / "math500.jsonl", limit=3)
    golds = [example.answer for example in task.examples]
    responses = [f"\\boxed{{{golds[0]}}}", "no answer", f"\\boxed{{{golds[0]}}}"]
    assert task.grade(responses, golds) == [True, False, golds[2] == golds[0]]
    assert task.grader(f"so \\boxed{{{golds[1]}}}", golds[1])
    with pytest.raises(ValueError, match="2 responses but 3 gold"):
        task.grade(responses[:2], golds)


def test_task_checks_template_and_ids():
    examples = [Example("a", "p", "1"), Example("a", "q", "2")]
    with pytest.raises(ValueError, match="duplicate example id 'a'"):
        Task("t", examples, "qwen_boxed", lambda response, gold: True)
    with pytest.raises(ValueError, match="unknown prompt template 'missing'"):
        Task("t", examples[:1], "missing", lambda response, gold: True)


def test_users_can_register_tasks_and_templates():
    template = register_template(Template("terse", lambda p: [{"role": "user", "content": p + " Be brief."}],
                                          lambda p: p + " Be brief.\n"))

    @register_task("toy", template="terse", grader=lambda response, gold: response.strip() == gold)
    def load_toy(*, data_file=None, dataset_id=None, split=None, limit=None, size: int = 3) -> list[Example]:
        return [Example(f"toy-{i}", f"{i} + {i}?", str(2 * i)) for i in range(limit or size)]

    try:
        task = load_task("toy", size=4)
        assert len(task) == 4 and task.grader("6", task.examples[3].answer)
        assert task.prompt(task.examples[1]) == [{"role": "user", "content": "1 + 1? Be brief."}]
        assert len(load_task("toy", limit=2)) == 2
        # a second task or template of a taken name is refused; the first one stays
        with pytest.raises(ValueError, match="task 'toy' is already registered"):
            register_task("toy", template="chat", grader=lambda response, gold: True)(load_toy)
        with pytest.raises(ValueError, match="prompt template 'terse' is already registered"):
            register_template(Template("terse", template.messages, template.text))
        assert TASKS["toy"].template == "terse" and TEMPLATES["terse"] is template
    finally:
        TASKS.pop("toy")
        TEMPLATES.pop(template.name)


def test_a_miss_lists_the_known_tasks_and_templates():
    with pytest.raises(ValueError, match=r"unknown task 'nope'; known: aime24, amc23, arithmetic, gsm8k, math, math500"):
        load_task("nope")
    with pytest.raises(ValueError, match=r"unknown prompt template 'nope'; known: .*arithmetic_oneshot, .*qwen_boxed"):
        get_template("nope")
