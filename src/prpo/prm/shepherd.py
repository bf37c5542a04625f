"""Math-Shepherd-style PRMs: a causal LM that predicts `+` (good) or `-` (bad) after each step tag.

Input, as in Math-Shepherd's reference usage: `f"{problem} {step_1} ки\\n{step_2} ки..."` (each
segment stripped of surrounding whitespace), tokenized with the tokenizer's special tokens. The
score of segment j is `softmax([logit_good, logit_bad])[0]` from the logits at the last token of
the j-th tag, i.e. the model's prediction of the token that follows the tag.

The tag is located by character offsets, not by searching for a token id: `ки` is one token in
Mistral's vocabulary but ` ки` is two in Qwen's (`Ġк`, `и`), and `и` also occurs in ordinary
Cyrillic text. Only the two candidate rows of the output embedding are applied to the hidden
states at the tag positions, so no `[batch, length, vocabulary]` logits tensor is built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM

from prpo.prm.base import PRMError, register_prm
from prpo.prm.hf import HFConfig, HFTaggedPRM


@register_prm("shepherd")
class ShepherdPRM(HFTaggedPRM):
    """Causal-LM PRM scored by the good/bad token logits at each step tag (default: Math-Shepherd)."""

    kind = "shepherd"

    @dataclass(frozen=True)
    class Config(HFConfig):
        model: str = "peiyi9979/math-shepherd-mistral-7b-prm"
        step_tag: str = "ки"
        good_token: str = "+"
        bad_token: str = "-"

    def __init__(self, config: Config | None = None):
        super().__init__(config or self.Config())
        if not getattr(self.tokenizer, "is_fast", False):
            raise PRMError(f"the tokenizer of {self.config.model} is not a fast tokenizer; tag offsets need one")
        self.candidates = [self.single_token(self.config.good_token, "candidate token"),
                           self.single_token(self.config.bad_token, "candidate token")]

    def load_model(self) -> torch.nn.Module:
        cfg = self.config
        return AutoModelForCausalLM.from_pretrained(
            cfg.model, revision=cfg.revision, dtype=self.dtype, device_map=str(self.device),
            trust_remote_code=cfg.trust_remote_code,
        )

    def encode(self, problem: str, segments: list[str]) -> tuple[list[int], list[int]]:
        text, tag_ends = f"{problem} ", []
        for j, segment in enumerate(segments):
            text += f"{segment.strip()} {self.config.step_tag}"
            tag_ends.append(len(text))
            if j < len(segments) - 1:
                text += "\n"
        encoding = self.tokenizer(text, return_offsets_mapping=True)
        ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
        positions, t = [], 0
        for end in tag_ends:  # the token holding the tag's last character
            while t < len(offsets) and not (offsets[t][0] < end <= offsets[t][1]):
                t += 1
            if t == len(offsets):
                raise PRMError(f"could not find step tag {self.config.step_tag!r} ending at character {end} in the tokens")
            while t + 1 < len(offsets) and offsets[t + 1][0] < end <= offsets[t + 1][1]:
                t += 1  # a character split over several byte-level tokens: take the last
            positions.append(t)
        return ids, positions

    def scores_at(self, input_ids, attention_mask, position_ids, rows, cols) -> torch.Tensor:
        hidden = self.model.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state[rows, cols]
        head = self.model.get_output_embeddings()
        logits = hidden.float() @ head.weight[self.candidates].float().T
        if head.bias is not None:
            logits = logits + head.bias[self.candidates].float()
        return torch.softmax(logits, dim=-1)[:, 0]
