"""PRMs that emit 2 logits per token, read at a step tag: the Qwen2.5-Math-PRM family.

Input, as in the Qwen2.5-Math-PRM model card: the tokenizer's chat template over
system = "Please reason step by step, and put your final answer within \\boxed{}.", user = problem,
assistant = `seg_1<extra_0>seg_2<extra_0>...seg_n<extra_0>`. The score of segment j is
`softmax(logits[t_j])[1]` at the j-th tag token t_j. Tag text inside a problem or a segment is
removed first, so every tag in the input is one we placed.

Loading: a config whose `auto_map` names custom model code (Qwen2.5-Math-PRM-7B:
`Qwen2ForProcessRewardModel`) is loaded with `AutoModel` and needs `trust_remote_code: true`;
anything else with `AutoModelForTokenClassification` (e.g. `Qwen2ForTokenClassification`, 2 labels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoModel, AutoModelForTokenClassification

from prpo.prm.base import PRMError, register_prm
from prpo.prm.hf import HFConfig, HFTaggedPRM

QWEN_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
# Qwen2.5's chat format, used when the tokenizer ships no chat template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
)


@register_prm("step_tag")
class StepTagPRM(HFTaggedPRM):
    """Token-classification PRM scored at a special step tag (default: Qwen2.5-Math-PRM-7B)."""

    kind = "step_tag"

    @dataclass(frozen=True)
    class Config(HFConfig):
        model: str = "Qwen/Qwen2.5-Math-PRM-7B"
        step_tag: str = "<extra_0>"
        system_prompt: str = QWEN_SYSTEM_PROMPT

    def __init__(self, config: Config | None = None):
        super().__init__(config or self.Config())
        self.tag_id = self.single_token(
            self.config.step_tag, "step tag", "a step_tag PRM needs a tag that is one (special) token"
        )
        if self.tokenizer.chat_template is None:
            self.tokenizer.chat_template = CHATML_TEMPLATE

    def load_model(self) -> torch.nn.Module:
        cfg = self.config
        try:
            model_config = AutoConfig.from_pretrained(
                cfg.model, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
            )
        except ValueError as err:
            if "trust_remote_code" not in str(err):
                raise
            raise PRMError(
                f"{cfg.model} ships its own config code; set trust_remote_code: true in the PRM config "
                "if you trust that repository"
            ) from err
        if "AutoModel" in (getattr(model_config, "auto_map", None) or {}):
            if not cfg.trust_remote_code:
                raise PRMError(
                    f"{cfg.model} ships its own model code ({model_config.auto_map['AutoModel']}); set "
                    "trust_remote_code: true in the PRM config if you trust that repository"
                )
            loader = AutoModel
        else:
            if model_config.num_labels != 2:
                raise PRMError(f"{cfg.model} has {model_config.num_labels} labels per token; a step_tag PRM needs 2")
            loader = AutoModelForTokenClassification
        return loader.from_pretrained(
            cfg.model, config=model_config, revision=cfg.revision, dtype=self.dtype, device_map=str(self.device),
            trust_remote_code=cfg.trust_remote_code,
        )

    def encode(self, problem: str, segments: list[str]) -> tuple[list[int], list[int]]:
        tag = self.config.step_tag
        clean = [segment.replace(tag, "") for segment in segments]
        messages = [
            {"role": "system", "content": self.config.system_prompt},
            {"role": "user", "content": problem.replace(tag, "")},
            {"role": "assistant", "content": tag.join(clean) + tag},
        ]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        positions = [t for t, token in enumerate(ids) if token == self.tag_id]
        if len(positions) != len(segments):
            raise PRMError(
                f"the chat template of {self.config.model} kept {len(positions)} of the {len(segments)} step tags "
                f"{tag!r}; the template must pass the assistant text through unchanged"
            )
        return ids, positions

    def scores_at(self, input_ids, attention_mask, position_ids, rows, cols) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        logits = out.logits if hasattr(out, "logits") else out[0]
        if logits.shape[-1] != 2:
            raise PRMError(f"{self.config.model} returned {logits.shape[-1]} logits per token; a step_tag PRM needs 2")
        return torch.softmax(logits[rows, cols].float(), dim=-1)[:, 1]
