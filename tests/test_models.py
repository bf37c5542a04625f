"""Model resolution (folders, run checkpoints, hub ids), the GGUF conversion cache, and load_policy."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from prpo import models
from prpo.models import MANIFEST, converted_gguf_folder, load_policy, resolve_model

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """A real GGUF file: a 1-layer Llama (hidden 16) with a byte-level BPE tokenizer and a chat template."""
    import gguf
    import numpy as np
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *bytes_to_unicode().values(), "Ġt"]
    hidden, ffn, vocab = 16, 32, len(tokens)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_rope_dimension_count(hidden // 2)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * (vocab - 3))
    writer.add_token_merges(["Ġ t"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_chat_template(CHAT_TEMPLATE)
    rng = np.random.default_rng(seed)
    shapes = {
        "attn_q": (hidden, hidden), "attn_k": (hidden // 2, hidden), "attn_v": (hidden // 2, hidden),
        "attn_output": (hidden, hidden), "ffn_gate": (ffn, hidden), "ffn_up": (ffn, hidden), "ffn_down": (hidden, ffn),
    }
    writer.add_tensor("token_embd.weight", (0.02 * rng.standard_normal((vocab, hidden))).astype(np.float32))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(hidden, np.float32))
    writer.add_tensor("blk.0.ffn_norm.weight", np.ones(hidden, np.float32))
    for name, shape in shapes.items():
        writer.add_tensor(f"blk.0.{name}.weight", (0.02 * rng.standard_normal(shape)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.Q.gguf")


def convert(gguf_file: Path, target: Path, capsys) -> bool:
    """Run the cached conversion; True if it actually converted (printed its progress message)."""
    assert converted_gguf_folder(gguf_file, target, "Tiny") == target
    return "converting Tiny (GGUF)" in capsys.readouterr().err


def test_gguf_conversion_writes_a_loadable_folder_and_manifest(tiny_gguf, tmp_path, capsys):
    target = tmp_path / "cache" / "tiny"
    assert convert(tiny_gguf, target, capsys)
    manifest = json.loads((target / MANIFEST).read_text())
    assert manifest["source"]["sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert manifest["source"]["size"] == tiny_gguf.stat().st_size
    assert manifest["files"]["model.safetensors"] == (target / "model.safetensors").stat().st_size
    assert [p.name for p in target.parent.iterdir() if p.name != "tiny.lock"] == ["tiny"]  # no staging left

    model, tokenizer = load_policy(str(target))
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == 2 and model.generation_config.pad_token_id == 2
    assert model.config.num_hidden_layers == 1 and not model.training

    assert not convert(tiny_gguf, target, capsys)  # complete: reused, not converted again


@pytest.mark.parametrize("damage", ["no_manifest", "garbled_manifest", "truncated_weights", "missing_tokenizer", "source_changed"])
def test_gguf_cache_rebuilds_a_damaged_or_stale_conversion(damage, tiny_gguf, tmp_path, capsys):
    source = tmp_path / tiny_gguf.name
    shutil.copy(tiny_gguf, source)
    target = tmp_path / "tiny"
    assert convert(source, target, capsys)
    if damage == "no_manifest":
        (target / MANIFEST).unlink()
    elif damage == "garbled_manifest":
        (target / MANIFEST).write_text('{"source": ')
    elif damage == "truncated_weights":
        weights = target / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "missing_tokenizer":
        (target / "tokenizer.json").unlink()
    elif damage == "source_changed":
        write_tiny_gguf(source, seed=1)
    assert convert(source, target, capsys)
    assert json.loads((target / MANIFEST).read_text())["source"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    load_policy(str(target))


def test_gguf_conversion_of_a_corrupt_file_fails_and_leaves_nothing(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)  # the magic, then version 0 and nothing else
    target = tmp_path / "cache" / "bad"
    with pytest.raises(ValueError, match=r"bad\.gguf is GGUF v0; this reader handles v2 and v3"):
        converted_gguf_folder(bad, target, "Bad")
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir()] == ["bad.lock"]


def test_concurrent_conversions_convert_once(tiny_gguf, tmp_path, capsys):
    target = tmp_path / "tiny"
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(converted_gguf_folder(tiny_gguf, target, "Tiny"))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [target, target]
    assert capsys.readouterr().err.count("converting Tiny (GGUF)") == 1


def _copy_model(src: Path, dst: Path, *, tokenizer: bool = True) -> Path:
    dst.mkdir(parents=True)
    for path in src.iterdir():
        if tokenizer or path.name in {"config.json", "generation_config.json", "model.safetensors"}:
            shutil.copy(path, dst / path.name)
    return dst


def test_resolve_model_picks_the_latest_checkpoint_of_a_run(tiny_causal_lm_dir, tmp_path):
    run = tmp_path / "run"
    for step in (2, 10, 9):
        _copy_model(tiny_causal_lm_dir, run / f"checkpoint-{step}")
    (run / "checkpoint-99-tmp").mkdir()
    assert resolve_model(str(run)) == str(run / "checkpoint-10")  # numeric order, not text order
    assert resolve_model(str(run / "checkpoint-2")) == str(run / "checkpoint-2")
    _copy_model(tiny_causal_lm_dir, run / "final")
    assert resolve_model(str(run)) == str(run / "final")


def test_resolve_model_rejects_incomplete_folders(tiny_causal_lm_dir, tmp_path):
    no_tokenizer = _copy_model(tiny_causal_lm_dir, tmp_path / "no-tok", tokenizer=False)
    with pytest.raises(FileNotFoundError, match="has no tokenizer"):
        resolve_model(str(no_tokenizer))
    with pytest.raises(FileNotFoundError, match="has no tokenizer"):
        load_policy(str(no_tokenizer))
    (no_tokenizer / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no weights"):
        resolve_model(str(no_tokenizer))
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a model folder"):
        resolve_model(str(tmp_path / "empty-run"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="is a file"):
        resolve_model(str(tiny_causal_lm_dir / "config.json"))


def test_resolve_model_passes_hub_ids_through():
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model("gpt2") == "gpt2"


def _save_lora_adapter(base: Path, folder: Path, base_reference: str):
    """A LoRA adapter with random (non-zero) weights on `base`, saved naming `base_reference` as its base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from prpo.training.model_card import name_adapter_base

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    name_adapter_base(model, base_reference)
    model.save_pretrained(folder)
    return model.eval()


def test_adapter_run_loads_as_base_plus_adapter_merged_once(tiny_causal_lm_dir, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setenv("PRPO_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    adapter = _save_lora_adapter(tiny_causal_lm_dir, run / "checkpoint-2", str(tiny_causal_lm_dir))
    assert json.loads((run / "checkpoint-2" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tiny_causal_lm_dir)
    folder = resolve_model(str(run))  # a run directory whose checkpoint holds an adapter
    assert Path(folder).parent == tmp_path / "cache" / "models" and (Path(folder) / "config.json").is_file()
    assert "merging the LoRA adapter" in capsys.readouterr().err
    assert resolve_model(str(run / "checkpoint-2")) == folder and capsys.readouterr().err == ""  # built once
    model, _ = load_policy(str(run), device="cpu")
    base, _ = load_policy(str(tiny_causal_lm_dir), device="cpu")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        merged_logits, adapter_logits, base_logits = model(ids).logits, adapter(ids).logits, base(ids).logits
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-4)  # the adapter changed the model


def test_adapter_base_reference_is_resolved_by_name_or_relative_path(tiny_causal_lm_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PRPO_CACHE_DIR", str(tmp_path / "cache"))
    _copy_model(tiny_causal_lm_dir, tmp_path / "moved" / "base")
    _save_lora_adapter(tiny_causal_lm_dir, tmp_path / "moved" / "run" / "final", "../../base")
    assert Path(resolve_model(str(tmp_path / "moved" / "run"))).parent == tmp_path / "cache" / "models"
    config = tmp_path / "moved" / "run" / "final" / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": None}))
    with pytest.raises(ValueError, match="adapter_config.json: base_model_name_or_path is None"):
        resolve_model(str(tmp_path / "moved" / "run"))


def test_load_policy_is_ready_for_batched_generation(tiny_causal_lm_dir):
    import torch

    model, tokenizer = load_policy(str(tiny_causal_lm_dir), dtype="bfloat16", device="cpu")
    assert model.dtype == torch.bfloat16 and not model.training
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id is not None
    assert model.generation_config.pad_token_id is not None
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_policy(str(tiny_causal_lm_dir), dtype="fp8")


@pytest.mark.slow
def test_smollm2_alias_converts_the_shipped_gguf_and_answers(tmp_path, monkeypatch):
    """The real SmolLM2-135M-Instruct GGUF (~25 s to convert on 2 CPU cores)."""
    monkeypatch.setenv("PRPO_CACHE_DIR", str(tmp_path))
    folder = resolve_model("smollm2")
    assert folder == str(tmp_path / "models" / models.SMOLLM2_CACHE_NAME)
    model, tokenizer = load_policy("smollm2")
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    batch = tokenizer.apply_chat_template(
        [[{"role": "user", "content": "What is 2+3?"}]], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**batch, max_new_tokens=20, do_sample=False)
    assert "5" in tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert os.path.getsize(Path(folder) / "model.safetensors") > 400e6  # dequantised float32 weights
