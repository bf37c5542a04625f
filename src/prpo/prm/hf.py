"""Shared machinery of the Hugging Face PRM adapters: loading, length limits, token-budget batches.

An adapter turns (problem, segments) into token ids plus the position where each segment's score
is read (`encode`), and reads the scores at those positions from one padded forward pass
(`scores_at`). This module does the rest: device and dtype, problem truncation from the left,
batching by a token budget, padding on either side with matching position ids.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from prpo.prm.base import PRMError, check_inputs, config_id, validate_scores

logger = logging.getLogger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class HFConfig:
    """Options common to PRMs loaded with `from_pretrained` (a hub id or a local folder)."""

    model: str
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    device: str = "auto"
    max_batch_tokens: int = 16384
    max_length: int | None = None
    truncate_problem: bool = False
    padding_side: Literal["right", "left"] = "right"

    def __post_init__(self) -> None:
        if self.max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens = {self.max_batch_tokens} must be positive")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length = {self.max_length} must be positive")


def resolve_device(device: str) -> torch.device:
    """`"auto"` is the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`"auto"` is bfloat16 on an accelerator and float32 on the CPU."""
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    return _DTYPES[dtype]


def token_budget_batches(lengths: list[int], max_batch_tokens: int) -> list[list[int]]:
    """Group indices so that `len(batch) * max length in batch <= max_batch_tokens` (padded size).

    Longest first, so each batch holds sequences of similar length; a sequence longer than the
    budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= max_batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class HFTaggedPRM(ABC):
    """Base of the adapters that read one score per segment at tag positions of one sequence."""

    kind: str
    config: HFConfig

    def __init__(self, config: HFConfig):
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        if config.trust_remote_code:
            logger.warning("trust_remote_code is on: running the Python code shipped with %s", config.model)
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
            config.model, revision=config.revision, trust_remote_code=config.trust_remote_code
        )
        self.model = self.load_model().eval()
        model_limit = getattr(self.model.config, "max_position_embeddings", None)
        self.max_length = config.max_length or model_limit or self.tokenizer.model_max_length
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id
        if self.pad_id is None:
            raise PRMError(f"tokenizer of {config.model} has neither a pad nor an EOS token to pad batches with")

    @property
    def prm_id(self) -> str:
        return config_id(self.kind, self.config, exclude=("device", "max_batch_tokens", "padding_side"))

    def single_token(self, text: str, role: str, rule: str = "it must be one") -> int:
        """The id of ``text``, which must be exactly one token of the tokenizer (else a PRMError naming ``role``)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise PRMError(f"{role} {text!r} is {len(ids)} tokens in the tokenizer of {self.config.model}; {rule}")
        return ids[0]

    @abstractmethod
    def load_model(self) -> torch.nn.Module:
        """The model, loaded with `from_pretrained` in `self.dtype` straight onto `self.device`."""

    @abstractmethod
    def encode(self, problem: str, segments: list[str]) -> tuple[list[int], list[int]]:
        """Token ids of one response and the position of each segment's score (one per segment)."""

    @abstractmethod
    def scores_at(self, input_ids, attention_mask, position_ids, rows, cols) -> torch.Tensor:
        """Float32 scores at (rows[k], cols[k]) from one forward pass over the padded batch."""

    def score(self, problems: list[str], segments: list[list[str]]) -> list[list[float]]:
        check_inputs(problems, segments)
        scores: list[list[float]] = [[] for _ in segments]
        todo = [i for i, response in enumerate(segments) if response]
        encoded = {i: self._encode_within_limit(i, problems[i], list(segments[i])) for i in todo}
        truncated = sum(1 for _, _, cut in encoded.values() if cut)
        if truncated:
            logger.warning("cut the problem text from the left for %d of %d responses to fit %d tokens",
                           truncated, len(todo), self.max_length)
        lengths = [len(encoded[i][0]) for i in todo]
        with torch.inference_mode():
            for batch in token_budget_batches(lengths, self.config.max_batch_tokens):
                rows_ids = [todo[b] for b in batch]
                for i, row_scores in zip(rows_ids, self._score_batch([encoded[i][:2] for i in rows_ids])):
                    scores[i] = row_scores
        return validate_scores(scores, segments)

    def _score_batch(self, items: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        width = max(len(ids) for ids, _ in items)
        input_ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        rows, cols = [], []
        for r, (ids, positions) in enumerate(items):
            offset = width - len(ids) if self.config.padding_side == "left" else 0
            input_ids[r, offset : offset + len(ids)] = torch.tensor(ids)
            attention_mask[r, offset : offset + len(ids)] = 1
            rows += [r] * len(positions)
            cols += [offset + p for p in positions]
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        values = self.scores_at(
            input_ids.to(self.device),
            attention_mask.to(self.device),
            position_ids.to(self.device),
            torch.tensor(rows, device=self.device),
            torch.tensor(cols, device=self.device),
        ).tolist()
        out, start = [], 0
        for _, positions in items:
            out.append(values[start : start + len(positions)])
            start += len(positions)
        return out

    def _encode_within_limit(self, i: int, problem: str, segments: list[str]) -> tuple[list[int], list[int], bool]:
        """Encode response i; over the limit, cut the problem from the left if allowed, else raise."""
        ids, positions = self.encode(problem, segments)
        if len(ids) <= self.max_length:
            return ids, positions, False
        if not self.config.truncate_problem:
            raise PRMError(
                f"response {i}: the PRM input is {len(ids)} tokens, over the limit of {self.max_length} tokens "
                f"of {self.config.model}; set truncate_problem: true to cut the problem text from the left "
                "(the steps are never cut), or raise max_length if the model allows it"
            )
        problem_ids = self.tokenizer(problem, add_special_tokens=False)["input_ids"]
        drop = len(ids) - self.max_length
        while drop <= len(problem_ids):
            ids, positions = self.encode(self.tokenizer.decode(problem_ids[drop:]), segments)
            if len(ids) <= self.max_length:
                return ids, positions, True
            drop += len(ids) - self.max_length
        raise PRMError(
            f"response {i}: its {len(segments)} segments alone exceed the limit of {self.max_length} tokens "
            f"of {self.config.model}, even with the whole problem text cut"
        )
