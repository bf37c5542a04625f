"""The Hugging Face PRM adapters on tiny random Qwen2 models with the real Qwen2.5 tokenizer.

Models are saved to a folder and loaded by `load_prm`, the same `from_pretrained` path a hub id
takes. Each score is checked against a manual forward pass of one unpadded sequence, following the
reference usage of Qwen2.5-Math-PRM and Math-Shepherd.
"""

import functools
import json
import logging

import pytest
import torch
from conftest import tiny_qwen2_config
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer, Qwen2ForCausalLM

from prpo.prm import PRMError, ShepherdPRM, StepTagPRM, load_prm
from prpo.prm.hf import token_budget_batches

PROBLEMS = [
    "Tom has 3 boxes with 4 apples each. He eats 2 apples. How many apples are left?",
    "What is 17 * 23?",
    "A train travels 60 km per hour for 2.5 hours. How far does it go?",
]
SEGMENTS = [
    ["Each box has 4 apples, so ", "3 * 4 = 12 apples.\n\n", "He eats 2: 12 - 2 = 10.\n\n", "Answer: 10"],
    ["17 * 23 = 391"],
    ["Distance is speed times time.\n\n", "60 * 2.5 = 150 km. Шаг и конец.", "The answer is \\boxed{150}."],
]


@pytest.fixture(scope="module")
def step_tag_dir(tiny_step_tag_prm_dir):
    """Tiny random Qwen2ForTokenClassification(num_labels=2) + Qwen tokenizer with `<extra_0>` (conftest)."""
    return tiny_step_tag_prm_dir


@pytest.fixture(scope="module")
def shepherd_dir(tmp_path_factory, qwen_tokenizer_dir):
    """Tiny random Qwen2ForCausalLM with the unmodified Qwen tokenizer (` ки` is two tokens there)."""
    tokenizer = AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir))
    torch.manual_seed(1)
    model = Qwen2ForCausalLM(tiny_qwen2_config(len(tokenizer), initializer_range=0.5))
    path = tmp_path_factory.mktemp("tiny-shepherd-prm")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def step_tag_prm(step_tag_dir):
    return load_prm({"type": "step_tag", "model": str(step_tag_dir), "device": "cpu"})


@pytest.fixture(scope="module")
def shepherd_prm(shepherd_dir):
    return load_prm({"type": "shepherd", "model": str(shepherd_dir), "device": "cpu"})


@functools.cache
def _load(path, model_class):
    return AutoTokenizer.from_pretrained(str(path)), model_class.from_pretrained(str(path)).eval()


def manual_step_tag_scores(path, problem, segments):
    """Qwen2.5-Math-PRM model card: chat template, encode, softmax(logits)[..., 1] where id == <extra_0>."""
    tokenizer, model = _load(path, AutoModelForTokenClassification)
    messages = [
        {"role": "system", "content": "Please reason step by step, and put your final answer within \\boxed{}."},
        {"role": "user", "content": problem},
        {"role": "assistant", "content": "<extra_0>".join(segments) + "<extra_0>"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    input_ids = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits[0]
    mask = input_ids[0] == tokenizer.convert_tokens_to_ids("<extra_0>")
    return torch.softmax(logits[mask], dim=-1)[:, 1].tolist()


def manual_shepherd_scores(path, problem, segments):
    """Math-Shepherd reference: full logits, candidates (+, -), softmax[0] at the tag's last token."""
    tokenizer, model = _load(path, AutoModelForCausalLM)
    text = f"{problem} " + "\n".join(f"{segment.strip()} ки" for segment in segments)
    ids = tokenizer.encode(text)
    tag = tokenizer.encode(" ки", add_special_tokens=False)
    assert len(tag) == 2  # `Ġк`, `и`: the tag is two tokens in Qwen's vocabulary
    positions = [t for t in range(1, len(ids)) if ids[t - 1 : t + 1] == tag]
    plus, minus = tokenizer.convert_tokens_to_ids(["+", "-"])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    return torch.softmax(logits[positions][:, [plus, minus]], dim=-1)[:, 0].tolist()


def assert_close(actual, expected, tol=1e-5):
    assert len(actual) == len(expected)
    for row_a, row_e in zip(actual, expected):
        assert row_a == pytest.approx(row_e, abs=tol)


@pytest.mark.parametrize("kind", ["step_tag", "shepherd"])
def test_scores_are_read_at_exactly_the_tag_positions(kind, request):
    prm = request.getfixturevalue(f"{kind}_prm")
    path = request.getfixturevalue(f"{kind}_dir")
    manual = manual_step_tag_scores if kind == "step_tag" else manual_shepherd_scores
    scores = prm.score(PROBLEMS, SEGMENTS)
    assert_close(scores, [manual(path, p, s) for p, s in zip(PROBLEMS, SEGMENTS)])
    flat = torch.tensor([s for row in scores for s in row])
    assert flat.std() > 0.01  # the random model gives different scores, so a wrong position would show


@pytest.mark.parametrize("kind", ["step_tag", "shepherd"])
def test_batching_padding_side_and_order_do_not_change_scores(kind, request):
    path = request.getfixturevalue(f"{kind}_dir")
    reference = request.getfixturevalue(f"{kind}_prm").score(PROBLEMS, SEGMENTS)
    for options in ({"max_batch_tokens": 1}, {"padding_side": "left"}, {"padding_side": "left", "max_batch_tokens": 200}):
        prm = load_prm({"type": kind, "model": str(path), "device": "cpu", **options})
        assert_close(prm.score(PROBLEMS, SEGMENTS), reference)
    order = [2, 0, 1]
    prm = request.getfixturevalue(f"{kind}_prm")
    assert_close(prm.score([PROBLEMS[i] for i in order], [SEGMENTS[i] for i in order]), [reference[i] for i in order])
    # An empty response gets no scores and leaves the others in place.
    assert_close(prm.score([PROBLEMS[0], "p", PROBLEMS[1]], [SEGMENTS[0], [], SEGMENTS[1]]), [reference[0], [], reference[1]])


def test_token_budget_batches():
    assert token_budget_batches([5, 9, 3, 9], 20) == [[1, 3], [0, 2]]
    assert token_budget_batches([30, 2], 10) == [[0], [1]]  # over budget: alone
    assert token_budget_batches([], 10) == []


def test_too_long_input_raises_unless_the_problem_may_be_cut(step_tag_dir, step_tag_prm, caplog):
    problem = "Some long story about apples and boxes. " * 40 + "How many apples are left?"
    segments = SEGMENTS[0]
    full = len(step_tag_prm.encode(problem, segments)[0])
    limit = full - 100
    strict = load_prm({"type": "step_tag", "model": str(step_tag_dir), "device": "cpu", "max_length": limit})
    with pytest.raises(PRMError, match=rf"response 0: the PRM input is {full} tokens, over the limit of {limit}.*truncate_problem"):
        strict.score([problem], [segments])

    cut = load_prm({"type": "step_tag", "model": str(step_tag_dir), "device": "cpu", "max_length": limit,
                    "truncate_problem": True})
    with caplog.at_level(logging.WARNING, logger="prpo.prm.hf"):
        scores = cut.score([problem], [segments])
    assert "cut the problem text from the left for 1 of 1" in caplog.text
    ids, _ = cut.encode(problem, segments)
    # The kept problem text is a suffix of the original: the question survives, the steps are whole.
    kept = cut.tokenizer.decode(cut.tokenizer(problem, add_special_tokens=False)["input_ids"][full - limit :])
    assert problem.endswith(kept) and kept.endswith("How many apples are left?")
    assert_close(scores, [manual_step_tag_scores(step_tag_dir, kept, segments)])

    tiny = load_prm({"type": "step_tag", "model": str(step_tag_dir), "device": "cpu", "max_length": 20,
                     "truncate_problem": True})
    with pytest.raises(PRMError, match="segments alone exceed the limit of 20 tokens"):
        tiny.score([problem], [segments])


def test_custom_model_code_needs_trust_remote_code(tmp_path, step_tag_dir, step_tag_prm, caplog):
    """A folder whose config maps AutoModel to its own code, like Qwen2.5-Math-PRM-7B."""
    import shutil

    path = tmp_path / "custom-prm"
    shutil.copytree(step_tag_dir, path)
    (path / "modeling_tiny_prm.py").write_text(
        "from transformers import Qwen2ForTokenClassification\n\n\n"
        "class TinyProcessRewardModel(Qwen2ForTokenClassification):\n    pass\n"
    )
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_tiny_prm.TinyProcessRewardModel"}
    (path / "config.json").write_text(json.dumps(config))

    with pytest.raises(PRMError, match="ships its own model code.*trust_remote_code: true"):
        load_prm({"type": "step_tag", "model": str(path), "device": "cpu"})
    with caplog.at_level(logging.WARNING, logger="prpo.prm.hf"):
        prm = load_prm({"type": "step_tag", "model": str(path), "device": "cpu", "trust_remote_code": True})
    assert "trust_remote_code is on" in caplog.text
    assert type(prm.model).__name__ == "TinyProcessRewardModel"
    assert_close(prm.score(PROBLEMS, SEGMENTS), step_tag_prm.score(PROBLEMS, SEGMENTS))


def test_bad_models_and_tags_are_clear_errors(tmp_path, step_tag_dir, shepherd_dir):
    with pytest.raises(PRMError, match="'<extra_1>' is .* tokens .* needs a tag that is one"):
        load_prm({"type": "step_tag", "model": str(step_tag_dir), "device": "cpu", "step_tag": "<extra_1>"})
    with pytest.raises(PRMError, match=r"candidate token 'plus-sign' is \d+ tokens"):
        load_prm({"type": "shepherd", "model": str(shepherd_dir), "device": "cpu", "good_token": "plus-sign"})
    config = json.loads((step_tag_dir / "config.json").read_text())
    three = tmp_path / "three-labels"
    three.mkdir()
    for f in step_tag_dir.iterdir():
        (three / f.name).write_bytes(f.read_bytes())
    config["id2label"] = {"0": "a", "1": "b", "2": "c"}
    config["label2id"] = {"a": 0, "b": 1, "c": 2}
    (three / "config.json").write_text(json.dumps(config))
    with pytest.raises(PRMError, match="has 3 labels per token; a step_tag PRM needs 2"):
        load_prm({"type": "step_tag", "model": str(three), "device": "cpu"})
    with pytest.raises(PRMError, match="unknown field 'modle'"):
        load_prm({"type": "shepherd", "modle": "x"})
    with pytest.raises(PRMError, match="field 'dtype' = 'fp8'"):
        load_prm({"type": "step_tag", "model": str(step_tag_dir), "dtype": "fp8"})


def test_prm_id_names_the_model_and_score_options(step_tag_prm, shepherd_prm, step_tag_dir):
    assert step_tag_prm.prm_id.startswith("step_tag(model=") and str(step_tag_dir) in step_tag_prm.prm_id
    assert "device" not in step_tag_prm.prm_id and "max_batch_tokens" not in step_tag_prm.prm_id
    assert "good_token='+'" in shepherd_prm.prm_id
    assert isinstance(step_tag_prm, StepTagPRM) and isinstance(shepherd_prm, ShepherdPRM)


def test_bfloat16_scores_are_close_to_float32(step_tag_dir, step_tag_prm):
    bf16 = load_prm({"type": "step_tag", "model": str(step_tag_dir), "device": "cpu", "dtype": "bfloat16"})
    assert bf16.model.dtype == torch.bfloat16
    assert_close(bf16.score(PROBLEMS, SEGMENTS), step_tag_prm.score(PROBLEMS, SEGMENTS), tol=0.05)


def test_step_tag_text_in_problems_and_segments_is_removed(step_tag_prm):
    """Only the tags the adapter places are tags: tag text typed into a problem or a step is dropped first."""
    tagged = step_tag_prm.score(["What is <extra_0>17 * 23?"], [["17 * 23<extra_0> = 391", "<extra_0>Answer: 391"]])
    clean = step_tag_prm.score(["What is 17 * 23?"], [["17 * 23 = 391", "Answer: 391"]])
    assert_close(tagged, clean)
    _, positions = step_tag_prm.encode("a <extra_0> b", ["x<extra_0>y", "z"])
    assert len(positions) == 2


def test_a_chat_template_that_drops_step_tags_is_an_error(step_tag_dir):
    prm = load_prm({"type": "step_tag", "model": str(step_tag_dir), "device": "cpu"})
    prm.tokenizer.chat_template = "{% for m in messages %}{% if m['role'] != 'assistant' %}{{ m['content'] }}{% endif %}{% endfor %}"
    with pytest.raises(PRMError, match=r"kept 0 of the 2 step tags '<extra_0>'"):
        prm.score(["What is 1 + 1?"], [["1 + 1 = 2", "Answer: 2"]])
