"""Every use of TRL's private surface, in one place: upgrading TRL means editing this file.

`PRPOTrainer` overrides private `GRPOTrainer` hooks (`HOOKS`), reads and writes private attributes
(`ATTRIBUTES`) through the accessors below, uses `disable_gradient_checkpointing` from
`trl.models.utils`, swaps the row shuffle `_prepare_inputs` calls for one that keeps groups whole
(`rows_shuffled_by`), and relies on facts of TRL's source (`SOURCE_FACTS`): the
loss multiplies the per-token loss by ``tool_mask`` (used here as a loss mask to drop filtered
rollouts), reads the reference log-probs after the loss forward (`prpo.kl`'s clamp), and divides the
token-mean losses by ``num_items_in_batch``. `problems` checks each against the installed TRL and
names the hook or attribute that changed; `check` raises with that list, and `PRPOTrainer` calls it
once per process.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from trl.models.utils import disable_gradient_checkpointing  # noqa: F401  (a helper of TRL's, not in its top level)

TRL_VERSION = "1.16.0"

# GRPOTrainer method -> the leading parameters PRPOTrainer's override relies on, in order.
HOOKS = {
    "_generate": ("prompts",),
    "_get_per_token_logps_and_entropies": ("model", "input_ids", "attention_mask", "logits_to_keep", "batch_size",
                                           "compute_entropy"),
    "_calculate_rewards": ("inputs", "prompts", "completions", "completion_ids_list"),
    "_generate_and_score_completions": ("inputs",),
    "_compute_loss": ("model", "inputs"),
    "_prepare_inputs": ("generation_batch",),
}
# Private methods of transformers' Trainer that prpo calls (not overrides), with the parameters it passes.
CALLED = {"_save_checkpoint": ("model", "trial")}
# Private attributes GRPOTrainer.__init__ sets, which the accessors below read or write.
ATTRIBUTES = ("_metrics", "_logs", "_step", "_tokenizer")
LOSS_MASK = "tool_mask"  # multiplied into the per-token loss by `_compute_loss`; not an attention mask there
# Hook -> snippets of its source that PRPOTrainer's use of it depends on.
SOURCE_FACTS = {
    "_compute_loss": (
        "self._get_per_token_logps_and_entropies(",  # the loss forward comes first ...
        'inputs["ref_per_token_logps"]',  # ... the reference is read after it (prpo.kl's clamp)
        LOSS_MASK,  # the loss mask
        'inputs["num_items_in_batch"]',  # the token-mean denominator, recounted after a filter
    ),
    "_generate_and_score_completions": ("self._calculate_rewards(", 'self._logs["advantages"]'),
    # `prpo.training.shared_prefix` calls the policy as TRL's log-prob pass does: fused LM head, labels.
    "_get_per_token_logps_and_entropies": ("fused_lm_head=True", "outputs.log_probs", "outputs.entropy"),
    "_prepare_inputs": ("shuffle_sequence_dict(generation_batch)",),  # patched by `rows_shuffled_by`
}


def metrics(trainer: Any, mode: str) -> Any:
    """The trainer's metric lists of ``mode`` ("train" / "eval"), averaged and logged by TRL at each log step."""
    return trainer._metrics[mode]


def logged_advantages(trainer: Any) -> list[float]:
    """The per-rollout advantages TRL keeps for ``log_completions`` (GRPO's; PRPO puts its token means here)."""
    return trainer._logs["advantages"]


def micro_step(trainer: Any) -> int:
    """TRL's count of micro-batches (forward/backward passes) so far."""
    return trainer._step


def tokenizer(trainer: Any) -> Any:
    """The tokenizer of the trainer's processing class."""
    return trainer._tokenizer


def save_checkpoint(trainer: Any) -> str:
    """Save ``checkpoint-<global_step>`` now, as transformers does at ``save_steps`` (weights, optimizer,
    scheduler, RNG, trainer state), so ``--resume`` continues after the last completed step; returns its path."""
    trainer._save_checkpoint(trainer.model, trial=None)
    return f"{trainer.args.output_dir}/checkpoint-{trainer.state.global_step}"


def drop_from_loss(output: dict[str, Any], kept: Tensor, gather: Any) -> None:
    """Take the rows with ``kept[i] = False`` out of TRL's loss: no loss term, no gradient, no token counted.

    TRL 1.16's `_compute_loss` multiplies the per-token loss by ``completion_mask * tool_mask`` and uses
    ``completion_mask`` alone for attention, so a zero ``tool_mask`` row removes a rollout from the loss
    without changing any forward pass. The token-mean losses divide by ``num_items_in_batch``, the global
    count of loss tokens TRL took before the filter: recounted here (``gather`` sums across processes).
    """
    completion_mask = output["completion_mask"]
    loss_mask = output.get(LOSS_MASK, torch.ones_like(completion_mask)) * kept[:, None].to(completion_mask.dtype)
    output[LOSS_MASK] = loss_mask
    output["num_items_in_batch"] = gather((completion_mask * loss_mask).sum()).sum()


@contextlib.contextmanager
def rows_shuffled_by(shuffle: Callable[[dict[str, Any]], dict[str, Any]]) -> Iterator[None]:
    """Within the block, `_prepare_inputs` shuffles the generation batch with ``shuffle`` instead of TRL's
    `shuffle_sequence_dict` (the rows' order before it splits them into micro-batches)."""
    import trl.trainer.grpo_trainer as grpo_trainer

    original = grpo_trainer.shuffle_sequence_dict
    grpo_trainer.shuffle_sequence_dict = shuffle
    try:
        yield
    finally:
        grpo_trainer.shuffle_sequence_dict = original


def problems(trainer_class: type | None = None, version: str | None = None) -> list[str]:
    """What in ``trainer_class`` (default: TRL's `GRPOTrainer`) differs from what prpo relies on, one line each."""
    if trainer_class is None:
        import trl

        trainer_class, version = trl.GRPOTrainer, trl.__version__
    found = []
    if version is not None and version != TRL_VERSION:
        found.append(f"TRL {version} installed; prpo's private-surface checks were written for TRL {TRL_VERSION}")
    for name, expected in {**HOOKS, **CALLED}.items():
        hook = getattr(trainer_class, name, None)
        if not callable(hook):
            found.append(f"hook {name}: not a method of {trainer_class.__name__}")
            continue
        params = tuple(inspect.signature(hook).parameters)[1:len(expected) + 1]
        if params != expected:
            found.append(f"hook {name}: parameters {params}, expected {expected}")
    init = _source(trainer_class.__init__)
    for attribute in ATTRIBUTES:
        if f"self.{attribute} =" not in init:
            found.append(f"attribute {attribute}: no longer set in {trainer_class.__name__}.__init__")
    for name, snippets in SOURCE_FACTS.items():
        source = _source(getattr(trainer_class, name, None))
        missing = [snippet for snippet in snippets if snippet not in source]
        if missing:
            found.append(f"hook {name}: its source no longer contains {missing}")
        elif name == "_compute_loss" and source.index(snippets[1]) < source.index(snippets[0]):
            found.append(f"hook {name}: reads the reference log-probs before the loss forward (kl_clamp needs after)")
    return found


@functools.cache
def check() -> None:
    """Raise once, naming every change, if the installed TRL differs from what prpo relies on."""
    found = problems()
    if found:
        raise RuntimeError("PRPOTrainer relies on TRL internals that changed (prpo/training/trl_surface.py):\n- " + "\n- ".join(found))


def _source(function: Any) -> str:
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return ""
