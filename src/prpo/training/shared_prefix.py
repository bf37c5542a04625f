"""Forward each group's prompt once: shared-prefix log-probs and entropies, exact against the unshared pass.

A group's G rollouts repeat one prompt. The unshared pass forwards every row whole: ``B (P + C)`` tokens for B
rows of P prompt and C completion tokens. The shared pass forwards each distinct prompt's first ``P - 1`` tokens
once, keeps their keys and values, and forwards each row's last prompt token and completion against that cache,
expanded per row: ``U (P - 1) + B (C + 1)`` tokens for U distinct prompts. Position ids, the attention mask and
the scored labels are the unshared pass's, so the per-token log-probs and entropies (and, through the cache's
autograd graph, every gradient) equal it to float rounding. docs/design.md ("Shared-prefix forward") says when
``auto`` turns it on.

Groups come from identical prompt rows (token ids and mask), never from positions in the batch.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal

import torch
from torch import Tensor, nn
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import logging

logger = logging.get_logger(__name__)

SharedPrefixMode = Literal["auto", "true", "false"]
MIN_TOKEN_RATIO = 1.3  # `auto` shares a micro-batch only when it forwards at least this many times fewer tokens
CHECK_TOLERANCE = 1e-3  # self-check: max |shared - unshared| log-prob in nats, float32 compute
HALF_CHECK_TOLERANCE = 5e-2  # the same under bfloat16 / float16 autocast (8-11 mantissa bits)


@dataclass(frozen=True)
class PromptGroups:
    """Rows grouped by identical prompt: ``first[u]`` is the first row of distinct prompt u, ``group[b]`` row b's prompt."""

    first: Tensor
    group: Tensor

    @property
    def count(self) -> int:
        return len(self.first)


def prompt_groups(prompt_ids: Tensor, prompt_mask: Tensor) -> PromptGroups:
    """Group rows whose prompt token ids and attention mask are equal (content, not position)."""
    key = torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1)
    _, group = torch.unique(key, dim=0, return_inverse=True)
    rows = torch.arange(len(group), device=group.device)
    first = torch.full((int(group.max()) + 1,), len(group), device=group.device, dtype=rows.dtype)
    first = first.scatter_reduce(0, group, rows, reduce="amin")
    return PromptGroups(first=first, group=group)


def shape_class(rows: int, groups: int, prompt_len: int, completion_len: int) -> tuple[int, int, int, int]:
    """What `auto` checks once: rows, distinct prompts, and the prompt and completion widths rounded up to a power
    of two (widths change every step; the code paths they select, such as mask and kernel choices, do not)."""
    return rows, groups, 1 << (prompt_len - 1).bit_length(), 1 << max(completion_len - 1, 0).bit_length()


def token_ratio(rows: int, groups: int, prompt_len: int, completion_len: int) -> float:
    """Tokens forwarded unshared over shared: ``B (P + C) / (U (P - 1) + B (C + 1))``.

    For G rows per prompt this is about ``G (P + C) / (P + G C)``: 1 for P = 0, G for C = 0.
    """
    return rows * (prompt_len + completion_len) / (groups * (prompt_len - 1) + rows * (completion_len + 1))


class PrefixLayer(DynamicLayer):
    """A cache layer holding a fixed prefix: ``update`` returns prefix + new states and stores nothing.

    Read-only, so a checkpointed decoder layer's backward replay sees the same keys and values as its forward.
    """

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


def expand_prefix(cache: DynamicCache, group: Tensor) -> Cache:
    """A read-only cache whose row b holds the prefix of distinct prompt ``group[b]`` (differentiable gather)."""
    layers = []
    for source in cache.layers:
        layer = PrefixLayer()
        layer.lazy_initialization(source.keys, source.values)
        layer.keys = source.keys.index_select(0, group)
        layer.values = source.values.index_select(0, group)
        layers.append(layer)
    return Cache(layers=layers)


@contextmanager
def _layer_flags(backbone: nn.Module, **flags: bool) -> Iterator[None]:
    """Set attributes on every checkpointable decoder layer for the duration, then restore them."""
    layers = [m for m in backbone.modules() if isinstance(m, GradientCheckpointingLayer)]
    saved = [{name: m.__dict__.get(name) for name in flags} for m in layers]
    for module in layers:
        module.__dict__.update(flags)
    try:
        yield
    finally:
        for module, old in zip(layers, saved):
            for name, value in old.items():
                if value is None:
                    module.__dict__.pop(name, None)
                else:
                    module.__dict__[name] = value


def cache_argument(backbone: nn.Module) -> str:
    """The name the backbone's forward takes its KV cache under (``cache`` in transformers >= 5.2x, else
    ``past_key_values``)."""
    return "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"


def shared_logps(
    model: Callable[..., Any],
    backbone: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    logits_to_keep: int,
    groups: PromptGroups,
    autocast: Callable[[], Any] = nullcontext,
) -> tuple[Tensor, Tensor | None]:
    """Per-token log-probs and entropies of the last ``logits_to_keep`` tokens, each distinct prompt forwarded once.

    ``model`` is the policy as the trainer calls it (wrapped or not, with TRL's fused LM head); ``backbone`` its
    decoder stack, for the prompt pass. The prompt pass runs without activation checkpointing (its cache is
    written once; a replay would write it again); the completion pass reads the cache only, so its checkpointed
    layers keep it (``_can_checkpoint_with_cache``).
    """
    prefix = input_ids.size(1) - logits_to_keep - 1  # the last prompt token is forwarded per row: it scores token 0
    name = cache_argument(backbone)
    cache = DynamicCache(config=backbone.config)
    with autocast(), _layer_flags(backbone, gradient_checkpointing=False):
        backbone(
            input_ids=input_ids[groups.first, :prefix],
            attention_mask=attention_mask[groups.first, :prefix],
            use_cache=False,  # the cache passed in is filled all the same; this only silences checkpointing's notice
            **{name: cache},
        )
    tail = input_ids[:, prefix:]
    labels = tail.masked_fill(attention_mask[:, prefix:] == 0, -100)
    labels[:, 0] = -100
    with autocast(), _layer_flags(backbone, _can_checkpoint_with_cache=True):
        outputs = model(
            input_ids=tail, attention_mask=attention_mask, labels=labels, fused_lm_head=True,
            **{name: expand_prefix(cache, groups.group)},
        )
    entropy = outputs.entropy[:, -logits_to_keep:] if outputs.entropy is not None else None
    return outputs.log_probs[:, -logits_to_keep:], entropy


def static_reasons(backbone: nn.Module, *, checkpointing: bool, reentrant: bool, distributed: str) -> list[str]:
    """Why sharing cannot be exact (or is unverified) for this model and setup, whatever the batch; [] if none."""
    config = backbone.config
    reasons = []
    if getattr(config, "is_encoder_decoder", False):
        reasons.append("an encoder-decoder model")
    if config is not config.get_text_config() or getattr(config, "vision_config", None) is not None:
        reasons.append("a multimodal model")
    layers = DynamicCache(config=config).layers
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        kinds = sorted({type(layer).__name__ for layer in layers} - {"DynamicLayer"}) or ["no layer list"]
        reasons.append(f"a cache other than full attention ({', '.join(kinds)}: sliding window, state-space or "
                       "linear attention)")
    if getattr(config, "output_router_logits", False) or any(
            getattr(config, key, None) for key in ("num_experts", "num_local_experts", "n_routed_experts")):
        reasons.append("a mixture of experts (its auxiliary loss is per token of the whole row)")
    if checkpointing:
        decoder = [m for m in backbone.modules() if isinstance(m, GradientCheckpointingLayer)]
        if not decoder:
            reasons.append("activation checkpointing on decoder layers that are not transformers' "
                           "GradientCheckpointingLayer (they drop the cache)")
        elif not hasattr(GradientCheckpointingLayer, "_can_checkpoint_with_cache"):
            reasons.append("activation checkpointing in a transformers version whose checkpointed layers drop the cache")
        if reentrant:
            reasons.append("reentrant activation checkpointing (no gradient reaches the cached prompt)")
    if distributed not in ("NO", "MULTI_GPU", "MULTI_CPU", "MULTI_XPU", "MULTI_NPU", "MULTI_MLU"):
        reasons.append(f"distributed type {distributed} (sharded parameters: not verified)")
    return reasons


def active_dropout(model: nn.Module, backbone: nn.Module) -> list[str]:
    """Dropout that is on while training: a shared prompt would share one mask across its G rows."""
    found = sorted({".".join(name.split(".")[-2:]) for name, module in model.named_modules()
                    if isinstance(module, nn.Dropout) and module.p > 0})  # e.g. lora_dropout.default
    config = backbone.config
    for key in ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if float(getattr(config, key, 0.0) or 0.0) > 0:
            found.append(f"config.{key}")
    return found


@dataclass
class SharedPrefix:
    """The trainer's choice of path per micro-batch (``auto``/``true``/``false``), its self-checks and messages."""

    mode: SharedPrefixMode
    reasons: list[str]  # static reasons sharing is off (auto) or refused (true)
    tolerance: float = CHECK_TOLERANCE  # the self-check's max |shared - unshared| log-prob (nats)
    checked: dict[tuple, bool] = field(default_factory=dict)  # shape -> shared path agreed with the unshared one
    said: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.mode == "true" and self.reasons:
            raise ValueError(f"shared_prefix: true cannot be exact here: {'; '.join(self.reasons)}")
        if self.mode != "false" and self.reasons:
            self.say(f"shared_prefix: auto runs the unshared path: {'; '.join(self.reasons)}")

    @property
    def possible(self) -> bool:
        return self.mode != "false" and not self.reasons

    def say(self, message: str) -> None:
        if message not in self.said:
            self.said.add(message)
            logger.warning(message)

    def choose(self, groups: PromptGroups, rows: int, prompt_len: int, completion_len: int) -> bool:
        """Whether this micro-batch takes the shared path; says why not, once per reason."""
        if not self.possible:
            return False
        if groups.count == rows:
            self.say("shared_prefix: a micro-batch with no repeated prompt (G = 1 or all prompts distinct) runs the "
                     "unshared path")
            return False
        if prompt_len < 2:
            self.say("shared_prefix: prompts of fewer than 2 tokens run the unshared path")
            return False
        ratio = token_ratio(rows, groups.count, prompt_len, completion_len)
        if self.mode == "auto" and ratio < MIN_TOKEN_RATIO:
            self.say(f"shared_prefix: auto runs the unshared path where it would save under {MIN_TOKEN_RATIO}x "
                     f"tokens (here {ratio:.2f}x: {rows} rows, {groups.count} prompts of {prompt_len} tokens, "
                     f"{completion_len} completion tokens)")
            return False
        if self.checked.get(shape_class(rows, groups.count, prompt_len, completion_len)) is False:
            return False
        return True

    def needs_check(self, shape: tuple) -> bool:
        return self.mode == "auto" and shape not in self.checked

    def record_check(self, shape: tuple, shared: Tensor, unshared: Tensor, mask: Tensor) -> bool:
        """Compare one micro-batch's shared and unshared log-probs; on a difference beyond ``self.tolerance``, warn
        once and keep this shape on the unshared path."""
        tolerance = self.tolerance
        diff = ((shared.double() - unshared.double()).abs() * mask).max().item() if mask.any() else 0.0
        agrees = diff <= tolerance
        self.checked[shape] = agrees
        if not agrees:
            self.say(f"shared_prefix: auto's check found shared and unshared log-probs {diff:.3g} nats apart "
                     f"(tolerance {tolerance:g}) for {shape[0]} rows of {shape[1]} prompts, prompt <= {shape[2]} and "
                     f"completion <= {shape[3]} tokens: such batches run the unshared path")
        return agrees


def shuffle_groups(batch: dict[str, Any]) -> dict[str, Any]:
    """Shuffle a generation batch's rows by whole groups (rows of one prompt stay together, in their order; the
    groups' order is random), so a micro-batch split keeps a group's rows in one micro-batch where sizes allow.

    Draws one ``torch.randperm`` over the groups, as TRL's row shuffle draws one over the rows.
    """
    groups = prompt_groups(batch["prompt_ids"], batch["prompt_mask"]).group.cpu()
    rank = torch.empty(int(groups.max()) + 1, dtype=torch.long)
    rank[torch.randperm(len(rank))] = torch.arange(len(rank))
    permutation = torch.argsort(rank[groups] * len(groups) + torch.arange(len(groups)))

    def permute(value: Any) -> Any:
        if value is None or (isinstance(value, Tensor) and value.ndim == 0):
            return value
        if isinstance(value, Tensor):
            return value[permutation.to(value.device)]
        return [value[i] for i in permutation]

    return {key: permute(value) for key, value in batch.items()}
