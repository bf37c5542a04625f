"""The benchmark's policy: a character-level tokenizer and a compact Qwen2 decoder built from a config."""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
CHARACTERS = string.digits + string.ascii_letters + string.punctuation + " \n"


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character (and newline), plus pad, BOS, EOS and UNK."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS.values())}
    vocab.update({char: len(SPECIAL_TOKENS) + i for i, char in enumerate(CHARACTERS)})
    core = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL_TOKENS)
    tokenizer.padding_side = "left"
    return tokenizer


def load_char_tokenizer(folder: str | Path) -> PreTrainedTokenizerFast:
    """The tokenizer saved with a benchmark policy, exactly as saved.

    (`AutoTokenizer` would rebuild it as the Qwen2 tokenizer class, whose byte-level pre-tokenizer
    drops this vocabulary's spaces, because the folder's config says `qwen2`.)
    """
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
    tokenizer.padding_side = "left"
    return tokenizer


@dataclass(frozen=True)
class PolicySize:
    """Width and depth of the decoder."""

    hidden_size: int
    layers: int
    heads: int
    max_positions: int = 512


SIZES = {
    "smoke": PolicySize(hidden_size=32, layers=2, heads=2),
    "cpu": PolicySize(hidden_size=96, layers=3, heads=4),
    "gpu": PolicySize(hidden_size=256, layers=6, heads=8),
}


def build_policy(size: PolicySize, tokenizer: PreTrainedTokenizerFast, seed: int) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 causal LM of ``size`` over ``tokenizer``'s vocabulary."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=4 * size.hidden_size,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=size.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model
