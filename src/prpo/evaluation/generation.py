"""Batched generation for evaluation: Hugging Face `generate` (default) or vLLM, behind one interface.

A prompt is a chat (a list of `{"role", "content"}` messages, rendered with the tokenizer's chat
template and a generation prompt) or a string (e.g. `Task.prompt(example, tokenizer)`). Generation stops at the
model's EOS tokens, at the end-of-turn tokens of common chat formats that the tokenizer has
(`<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`, ...; a base model prompted with a chat template
otherwise runs on into invented turns), and at optional stop strings, which are cut from the text.

The vLLM backend needs `pip install vllm` and a CUDA GPU; `make_generator(..., backend="auto")`
uses it when both are present, else HF. It is not exercised by the test suite.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from abc import ABC, abstractmethod
from dataclasses import dataclass

from tqdm.auto import tqdm

from prpo.models import load_policy, resolve_model

Prompt = str | list[dict[str, str]]
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|end|>")
BACKENDS = ("auto", "hf", "vllm")


@dataclass(frozen=True)
class Completion:
    """One generated response: its text (stop text removed), its token count (EOS included), and why it ended."""

    text: str
    num_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (hit max_new_tokens)


@dataclass(frozen=True)
class Sampling:
    """How to decode: ``samples`` responses per prompt, each at most ``max_new_tokens``; greedy at temperature 0.

    Checked on construction: a bad value is an error naming it.
    """

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    samples: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got temperature={self.temperature}, "
                             f"top_p={self.top_p}")
        if self.samples < 1:
            raise ValueError(f"samples must be at least 1, got {self.samples}")
        if self.samples > 1 and self.temperature == 0:
            raise ValueError(f"{self.samples} samples per prompt with greedy decoding would be {self.samples} copies; "
                             "set a temperature > 0")


class Generator(ABC):
    """Batched generation behind one interface; a backend implements `sample`."""

    tokenizer: object

    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        samples: int = 1,
        seed: int = 0,
    ) -> list[list[Completion]]:
        """`samples` completions per prompt, in prompt order (see `Sampling`)."""
        return self.sample(prompts, Sampling(max_new_tokens, temperature, top_p, samples, seed))

    @abstractmethod
    def sample(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[list[Completion]]:
        """`generate` with its settings checked."""


def render_prompt(tokenizer, prompt: Prompt) -> tuple[str, list[int]]:
    """The prompt's text and token ids: a chat through the chat template, a string as is.

    The tokenizer's special tokens (e.g. BOS) are added unless the text already starts with BOS,
    as a chat template's output usually does.
    """
    if isinstance(prompt, str):
        text = prompt
    elif getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    else:
        raise ValueError(
            f"the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template, so a chat prompt "
            "cannot be rendered; use a plain-text prompt"
        )
    has_bos = bool(tokenizer.bos_token) and text.startswith(tokenizer.bos_token)
    return text, tokenizer(text, add_special_tokens=not has_bos)["input_ids"]


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """EOS ids of the generation config and tokenizer, plus the end-of-turn special tokens the tokenizer has."""
    ids: list[int] = []
    configured = getattr(generation_config, "eos_token_id", None)
    ids += configured if isinstance(configured, list) else [configured]
    ids.append(tokenizer.eos_token_id)
    ids += [tokenizer.added_tokens_encoder[token] for token in END_OF_TURN_TOKENS if token in tokenizer.added_tokens_encoder]
    return sorted({i for i in ids if i is not None})


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cut = min((index for s in stop if (index := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class HFGenerator(Generator):
    """`model.generate` over batches of `batch_size` sequences, left-padded, longest prompts first."""

    def __init__(self, model, tokenizer, *, batch_size: int = 16, stop: Sequence[str] = (), progress: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.stop, self.progress = batch_size, tuple(stop), progress
        self.eos_ids = stop_token_ids(tokenizer, model.generation_config)
        if not self.eos_ids:
            raise ValueError("neither the model's generation config nor the tokenizer defines an EOS token")
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_ids[0]

    def sample(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[list[Completion]]:
        import torch

        max_new_tokens, temperature, samples = sampling.max_new_tokens, sampling.temperature, sampling.samples
        encoded = [render_prompt(self.tokenizer, prompt)[1] for prompt in prompts]
        jobs = sorted(((i, j) for i in range(len(prompts)) for j in range(samples)), key=lambda job: -len(encoded[job[0]]))
        # exactly the decoding asked for: no top-k or repetition penalty from the model's generation config
        decoding = (dict(do_sample=True, temperature=temperature, top_p=sampling.top_p, top_k=0) if temperature > 0
                    else dict(do_sample=False))
        decoding["repetition_penalty"] = 1.0
        if self.stop:
            decoding.update(stop_strings=list(self.stop), tokenizer=self.tokenizer)
        results: list[list[Completion | None]] = [[None] * samples for _ in prompts]
        device = self.model.device
        # Sampling draws from a forked RNG seeded with `seed`: the global stream (the one training
        # draws its rollouts from) is restored afterwards, so an evaluation never changes a run.
        cuda_devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(sampling.seed)
            starts = range(0, len(jobs), self.batch_size)
            for start in tqdm(starts, desc="generating", unit="batch", disable=not self.progress or not jobs):
                batch = jobs[start : start + self.batch_size]
                rows = [encoded[i] for i, _ in batch]
                width = max(len(row) for row in rows)
                input_ids = torch.tensor([[self.pad_id] * (width - len(row)) + row for row in rows], device=device)
                attention_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], device=device)
                with torch.no_grad():
                    output = self.model.generate(
                        input_ids=input_ids,
                        attention_mask=attention_mask,
                        max_new_tokens=max_new_tokens,
                        eos_token_id=self.eos_ids,
                        pad_token_id=self.pad_id,
                        use_cache=True,
                        **decoding,
                    )
                for (i, j), new in zip(batch, output[:, width:].tolist()):
                    results[i][j] = self._completion(new, max_new_tokens)
        return results  # type: ignore[return-value]

    def _completion(self, new_tokens: list[int], max_new_tokens: int) -> Completion:
        """Tokens up to the first EOS (kept) or padding (dropped), decoded, cut at a stop string."""
        end = next((t for t, token in enumerate(new_tokens) if token in self.eos_ids or token == self.pad_id), len(new_tokens))
        hit_eos = end < len(new_tokens) and new_tokens[end] in self.eos_ids
        tokens = new_tokens[: end + 1] if hit_eos else new_tokens[:end]
        text, stopped = _cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), self.stop)
        truncated = not hit_eos and not stopped and len(tokens) >= max_new_tokens
        return Completion(text=text, num_tokens=len(tokens), finish_reason="length" if truncated else "stop")


class VLLMGenerator(Generator):
    """vLLM's offline engine (continuous batching on a GPU); same interface as HFGenerator."""

    def __init__(self, model_path: str, *, dtype: str = "auto", stop: Sequence[str] = (), seed: int = 0, **engine_options):
        from vllm import LLM

        self.llm = LLM(model=model_path, dtype=dtype, seed=seed, **engine_options)
        self.tokenizer = self.llm.get_tokenizer()
        self.stop = tuple(stop)
        self.eos_ids = stop_token_ids(self.tokenizer)  # vLLM adds the generation config's own EOS

    def sample(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[list[Completion]]:
        from vllm import SamplingParams

        params = SamplingParams(
            n=sampling.samples,
            temperature=sampling.temperature,
            top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
            max_tokens=sampling.max_new_tokens,
            stop=list(self.stop) or None,
            stop_token_ids=self.eos_ids,
            seed=sampling.seed,
        )
        requests = [{"prompt_token_ids": render_prompt(self.tokenizer, prompt)[1]} for prompt in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=True)
        return [
            [
                Completion(text=out.text, num_tokens=len(out.token_ids), finish_reason="length" if out.finish_reason == "length" else "stop")
                for out in request.outputs
            ]
            for request in outputs
        ]


def vllm_available() -> bool:
    """True when vLLM is installed and a CUDA GPU is visible."""
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def make_generator(
    model: str,
    *,
    backend: str = "auto",
    dtype: str = "auto",
    device: str | None = None,
    batch_size: int = 16,
    stop: Sequence[str] = (),
    seed: int = 0,
) -> Generator:
    """A generator for a model name or path (see `prpo.models.resolve_model`): vLLM if `auto` finds it, else HF."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "vllm" and not vllm_available():
        raise RuntimeError("the vLLM backend needs `pip install vllm` and a CUDA GPU; use --backend hf")
    if backend == "vllm" or (backend == "auto" and vllm_available()):
        return VLLMGenerator(resolve_model(model), dtype=dtype, stop=stop, seed=seed)
    policy, tokenizer = load_policy(model, dtype=dtype, device=device)
    return HFGenerator(policy, tokenizer, batch_size=batch_size, stop=stop)
