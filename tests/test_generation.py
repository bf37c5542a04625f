"""HF batched generation: left padding, EOS and stop strings, sampling; prompt rendering; backend guard."""

from __future__ import annotations

import pytest
import torch

from prpo.evaluation.generation import HFGenerator, make_generator, render_prompt, stop_token_ids, vllm_available

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]
PROMPTS = [
    CHAT,
    "A much longer plain prompt, so that the batch really needs left padding: " + "one two three " * 12,
    [{"role": "user", "content": "Hi"}],
]


@pytest.fixture(scope="module")
def tiny(qwen_tokenizer):
    """A tiny random Qwen2 with large weights, so greedy text varies from token to token."""
    from conftest import tiny_qwen2_config
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(tiny_qwen2_config(len(qwen_tokenizer), initializer_range=1.0)).eval()
    return model, qwen_tokenizer


def test_render_prompt_uses_the_chat_template_without_special_tokens(qwen_tokenizer):
    text, ids = render_prompt(qwen_tokenizer, CHAT)
    assert text == qwen_tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert ids == qwen_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert render_prompt(qwen_tokenizer, "plain") == ("plain", qwen_tokenizer("plain")["input_ids"])


def test_render_prompt_adds_bos_once():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "</s>": 1, "<unk>": 2, "hello": 3, "world": 4}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    assert render_prompt(tokenizer, "hello world")[1] == [0, 3, 4]
    assert render_prompt(tokenizer, "<s> hello world")[1] == [0, 3, 4]
    with pytest.raises(ValueError, match="no chat template"):
        render_prompt(tokenizer, CHAT)


def test_stop_tokens_include_the_chat_end_of_turn(qwen_tokenizer):
    ids = stop_token_ids(qwen_tokenizer)
    assert qwen_tokenizer.convert_tokens_to_ids("<|im_end|>") in ids
    assert qwen_tokenizer.convert_tokens_to_ids("<|endoftext|>") in ids


def test_batched_left_padded_generation_matches_one_by_one(tiny):
    model, tokenizer = tiny
    batched = HFGenerator(model, tokenizer, batch_size=3, progress=False).generate(PROMPTS, max_new_tokens=6)
    single = HFGenerator(model, tokenizer, batch_size=1, progress=False).generate(PROMPTS, max_new_tokens=6)
    assert batched == single
    assert len({c.text for row in batched for c in row}) == 3
    assert [len(row) for row in batched] == [1, 1, 1]
    for (completion,) in batched:
        assert completion.finish_reason == "length" and completion.num_tokens == 6


def test_generation_stops_at_eos_and_counts_it(tiny):
    model, tokenizer = tiny
    generator = HFGenerator(model, tokenizer, batch_size=3, progress=False)
    prompt_ids = render_prompt(tokenizer, CHAT)[1]
    free = model.generate(
        input_ids=torch.tensor([prompt_ids]), max_new_tokens=6, do_sample=False,
        eos_token_id=generator.eos_ids, pad_token_id=generator.pad_id,
    )[0, len(prompt_ids):].tolist()
    eos = free[2]  # make the third greedy token an EOS
    generator.eos_ids = [*generator.eos_ids, eos]
    (completion,) = generator.generate([CHAT], max_new_tokens=6)[0]
    first = free.index(eos)
    assert completion.num_tokens == first + 1 and completion.finish_reason == "stop"
    assert completion.text == tokenizer.decode(free[: first + 1], skip_special_tokens=True)


def test_stop_strings_cut_the_text(tiny):
    model, tokenizer = tiny
    (full,) = HFGenerator(model, tokenizer, progress=False).generate([CHAT], max_new_tokens=12)[0]
    stop = full.text[len(full.text) // 2 :][:3]
    assert stop.strip(), f"need visible text to stop on, got {full.text!r}"
    (cut,) = HFGenerator(model, tokenizer, stop=[stop], progress=False).generate([CHAT], max_new_tokens=12)[0]
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.finish_reason == "stop" and cut.num_tokens < 12


def test_sampling_is_seeded_and_returns_every_sample(tiny):
    model, tokenizer = tiny
    generator = HFGenerator(model, tokenizer, batch_size=4, progress=False)
    first = generator.generate(PROMPTS[:2], max_new_tokens=4, temperature=1.0, samples=3, seed=7)
    again = generator.generate(PROMPTS[:2], max_new_tokens=4, temperature=1.0, samples=3, seed=7)
    other = generator.generate(PROMPTS[:2], max_new_tokens=4, temperature=1.0, samples=3, seed=8)
    assert [len(row) for row in first] == [3, 3]
    assert first == again and first != other
    assert len({c.text for row in first for c in row}) > 1
    with pytest.raises(ValueError, match="greedy decoding"):
        generator.generate(PROMPTS, max_new_tokens=5, samples=2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generator.generate(PROMPTS, max_new_tokens=0)


def test_vllm_backend_is_guarded(tiny_causal_lm_dir):
    if vllm_available():
        pytest.skip("vLLM and a GPU are present")
    with pytest.raises(RuntimeError, match="vLLM backend needs"):
        make_generator(str(tiny_causal_lm_dir), backend="vllm")
    with pytest.raises(ValueError, match="backend must be one of"):
        make_generator(str(tiny_causal_lm_dir), backend="tgi")
    assert isinstance(make_generator(str(tiny_causal_lm_dir), backend="auto"), HFGenerator)


def test_decoding_ignores_the_model_generation_defaults(qwen_tokenizer):
    """A shipped generation_config (e.g. Qwen2.5-Instruct: repetition_penalty 1.05, top_k 20) must not change greedy eval."""
    from conftest import tiny_qwen2_config
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(tiny_qwen2_config(len(qwen_tokenizer))).eval()  # small weights: greedy repeats itself
    ids = torch.tensor([render_prompt(qwen_tokenizer, CHAT)[1]])
    plain = HFGenerator(model, qwen_tokenizer, progress=False).generate([CHAT], max_new_tokens=8)
    model.generation_config.repetition_penalty, model.generation_config.top_k = 3.0, 20
    penalised = model.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1]:]
    assert qwen_tokenizer.decode(penalised, skip_special_tokens=True) != plain[0][0].text  # the config matters to plain generate
    assert HFGenerator(model, qwen_tokenizer, progress=False).generate([CHAT], max_new_tokens=8) == plain
