"""The shared-prefix forward (`prpo.training.shared_prefix`) against the unshared pass TRL makes.

Per-token log-probs, entropies, a loss of both and every trainable parameter's gradient must equal the
unshared pass's to float rounding: SDPA and eager attention, LoRA and full fine-tuning, activation
checkpointing on and off, left-padded prompts of different lengths in one batch, truncated and empty
completions. Then the trainer's use of it: a group split across micro-batches, G = 1 and all-distinct
prompts (unshared), `auto`'s reasons and self-check, whole-group shuffling, and one training step whose
logged numbers match the unshared run's.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import assert_close_scaled, tiny_qwen2_config
from test_trainer import dataset, make_args, parity_grader, policy_dir  # noqa: F401  (policy_dir: a fixture)
from transformers import Qwen2ForCausalLM
from trl.trainer.utils import add_fused_lm_head

from prpo.training import shared_prefix as sp
from prpo.training.config import ConfigError, PRPOConfig
from prpo.training.trainer import PRPOTrainer

VOCAB = 300
PROMPT, COMPLETION = 9, 6


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """6 rows: prompt a (7 tokens, 2 left pads) x 3, prompt b (9 tokens) x 2, prompt a again; completions full
    (truncated), ended early (right padding) and empty."""
    generator = torch.Generator().manual_seed(1)
    a = torch.randint(1, VOCAB, (PROMPT,), generator=generator)
    a[:2] = 0
    b = torch.randint(1, VOCAB, (PROMPT,), generator=generator)
    prompts = torch.stack([a, a, b, a, b, a])
    prompt_mask = (prompts != 0).long()
    completions = torch.randint(1, VOCAB, (6, COMPLETION), generator=generator)
    completion_mask = torch.ones_like(completions)
    completion_mask[1, 3:] = 0  # ended after 3 tokens
    completion_mask[4, 1:] = 0  # one token
    completion_mask[5, :] = 0  # empty
    completions = completions * completion_mask
    return torch.cat([prompts, completions], 1), torch.cat([prompt_mask, completion_mask], 1)


def policy(attention: str, lora: bool, checkpointing: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(tiny_qwen2_config(VOCAB, attn_implementation=attention, initializer_range=0.3))
    add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
    if checkpointing:
        model.activation_checkpointing_enable()
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                                 init_lora_weights=False))
    return model.train()


def backbone(model: torch.nn.Module) -> torch.nn.Module:
    return (model.get_base_model() if hasattr(model, "get_base_model") else model).base_model


def unshared(model, ids, mask) -> tuple[torch.Tensor, torch.Tensor]:
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :-COMPLETION] = -100
    out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    return out.log_probs[:, -COMPLETION:], out.entropy[:, -COMPLETION:]


def loss_and_grads(model, logps, entropy, mask) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A loss that weighs every token differently, and every trainable parameter's gradient."""
    weights = torch.linspace(-1.0, 2.0, logps.numel()).view_as(logps) * mask[:, -COMPLETION:]
    loss = (weights * logps).sum() + 0.3 * (weights * entropy).sum()
    model.zero_grad()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["no-ckpt", "ckpt"])
def test_shared_pass_equals_the_unshared_pass_with_gradients(attention, lora, checkpointing):
    model = policy(attention, lora, checkpointing)
    ids, mask = batch()
    want_logps, want_entropy = unshared(model, ids, mask)
    want_loss, want_grads = loss_and_grads(model, want_logps, want_entropy, mask)
    groups = sp.prompt_groups(ids[:, :PROMPT], mask[:, :PROMPT])
    assert groups.count == 2
    logps, entropy = sp.shared_logps(model, backbone(model), ids, mask, COMPLETION, groups)
    loss, grads = loss_and_grads(model, logps, entropy, mask)
    valid = mask[:, -COMPLETION:].bool()
    assert_close_scaled(logps[valid], want_logps[valid])
    assert_close_scaled(entropy[valid], want_entropy[valid])
    assert (logps[~valid] == 0).all() and (entropy[~valid] == 0).all()  # masked as TRL masks them
    assert_close_scaled(loss, want_loss)
    assert grads.keys() == want_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        assert_close_scaled(grad, want_grads[name], rel=1e-4)
    assert any(g.abs().sum() > 0 for g in grads.values())


def test_without_the_read_only_cache_a_checkpointed_completion_pass_is_wrong():
    """The trap the read-only cache avoids: checkpointed layers that are not told they may keep the cache drop
    it, and the completions no longer see the prompt (an error here; off by over a nat where the mask fits)."""
    model = policy("sdpa", lora=False, checkpointing=True)
    ids, mask = batch()
    want, _ = unshared(model, ids, mask)
    groups = sp.prompt_groups(ids[:, :PROMPT], mask[:, :PROMPT])
    flags = sp._layer_flags
    sp._layer_flags = lambda module, **kw: flags(module, **{k: v for k, v in kw.items() if k == "gradient_checkpointing"})
    try:
        wrong, _ = sp.shared_logps(model, backbone(model), ids, mask, COMPLETION, groups)
    except RuntimeError as err:
        assert "size of tensor" in str(err)
    else:
        valid = mask[:, -COMPLETION:].bool()
        assert (wrong[valid] - want[valid]).abs().max() > 0.1
    finally:
        sp._layer_flags = flags


def test_groups_come_from_prompt_content_not_positions():
    ids, mask = batch()
    groups = sp.prompt_groups(ids[:, :PROMPT], mask[:, :PROMPT])
    a, b = groups.group[0].item(), groups.group[2].item()
    assert a != b and groups.group.tolist() == [a, a, b, a, b, a]
    assert groups.first[a].item() == 0 and groups.first[b].item() == 2  # each prompt's first row
    same_ids_other_mask = mask.clone()
    same_ids_other_mask[0, 2] = 0
    assert sp.prompt_groups(ids[:, :PROMPT], same_ids_other_mask[:, :PROMPT]).count == 3


def test_token_ratio_is_the_token_count_ratio():
    # 16 rows, 2 prompts of 120 tokens, 32 completion tokens: 16 * 152 / (2 * 119 + 16 * 33)
    assert sp.token_ratio(16, 2, 120, 32) == pytest.approx(16 * 152 / (2 * 119 + 16 * 33))
    assert sp.token_ratio(8, 1, 1024, 64) == pytest.approx(8 * 1088 / (1023 + 8 * 65))


def test_shuffle_keeps_groups_whole_and_rows_aligned():
    ids, mask = batch()
    rows = {"prompt_ids": ids[:, :PROMPT], "prompt_mask": mask[:, :PROMPT], "completion_ids": ids[:, PROMPT:],
            "tag": list("abcdef"), "num_items_in_batch": torch.tensor(7), "images": None}
    torch.manual_seed(3)
    orders = set()
    for _ in range(20):
        out = sp.shuffle_groups(rows)
        order = ["abcdef".index(t) for t in out["tag"]]
        orders.add(tuple(order))
        groups = sp.prompt_groups(out["prompt_ids"], out["prompt_mask"]).group.tolist()
        assert sum(groups[i] != groups[i + 1] for i in range(5)) == 1  # one boundary: two whole groups
        assert torch.equal(out["completion_ids"], rows["completion_ids"][order])
        assert out["num_items_in_batch"] is rows["num_items_in_batch"] and out["images"] is None
        assert sorted(order) == list(range(6))
    assert orders == {(0, 1, 3, 5, 2, 4), (2, 4, 0, 1, 3, 5)}  # both group orders, each group in its row order


def test_choice_falls_back_for_distinct_prompts_short_prompts_and_small_savings(caplog):
    choice = sp.SharedPrefix("auto", [])
    distinct = sp.PromptGroups(first=torch.arange(4), group=torch.arange(4))
    paired = sp.PromptGroups(first=torch.tensor([0, 2]), group=torch.tensor([0, 0, 1, 1]))
    with caplog.at_level(logging.WARNING):
        assert not choice.choose(distinct, 4, 50, 10)
        assert not choice.choose(distinct, 4, 50, 10)
        assert not choice.choose(paired, 4, 1, 10)
        assert not choice.choose(paired, 4, 10, 500)  # ratio 2 * 510 / (9 + 2 * 501) ~ 1.01
        assert choice.choose(paired, 4, 500, 10)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("no repeated prompt" in m for m in messages) == 1  # said once
    assert any("fewer than 2 tokens" in m for m in messages) and any("under 1.3x" in m for m in messages)
    assert sp.SharedPrefix("true", []).choose(paired, 4, 10, 500)  # true shares below the auto threshold
    assert not sp.SharedPrefix("false", []).choose(paired, 4, 500, 10)


def test_self_check_sends_a_disagreeing_shape_to_the_unshared_path(caplog):
    choice = sp.SharedPrefix("auto", [])
    paired = sp.PromptGroups(first=torch.tensor([0, 2]), group=torch.tensor([0, 0, 1, 1]))
    shape = sp.shape_class(4, 2, 500, 10)
    assert shape == (4, 2, 512, 16) and sp.shape_class(4, 2, 257, 9) == shape
    assert choice.needs_check(shape)
    logps = torch.randn(4, 10)
    mask = torch.ones(4, 10, dtype=torch.bool)
    assert choice.record_check(shape, logps + 1e-5, logps, mask)
    assert not choice.needs_check(shape) and choice.choose(paired, 4, 500, 10)
    other = sp.shape_class(4, 2, 600, 10)
    with caplog.at_level(logging.WARNING):
        assert not choice.record_check(other, logps + 0.5 * torch.eye(4, 10), logps, mask)
    assert not choice.choose(paired, 4, 1000, 10) and choice.choose(paired, 4, 500, 10)
    assert "0.5 nats apart" in caplog.text


@pytest.mark.parametrize("overrides, reason", [
    (dict(sliding_window=4, use_sliding_window=True, max_window_layers=0), "sliding window"),
    (dict(num_experts=4), "mixture of experts"),
])
def test_auto_says_why_it_cannot_share(overrides, reason):
    model = Qwen2ForCausalLM(tiny_qwen2_config(VOCAB, **overrides))
    reasons = sp.static_reasons(model.base_model, checkpointing=False, reentrant=False, distributed="NO")
    assert any(reason in r for r in reasons), reasons
    with pytest.raises(ValueError, match="cannot be exact"):
        sp.SharedPrefix("true", reasons)


def test_reentrant_checkpointing_and_sharded_training_are_refused():
    model = Qwen2ForCausalLM(tiny_qwen2_config(VOCAB))
    assert sp.static_reasons(model.base_model, checkpointing=False, reentrant=False, distributed="NO") == []
    reasons = sp.static_reasons(model.base_model, checkpointing=True, reentrant=True, distributed="FSDP")
    assert any("reentrant" in r for r in reasons) and any("FSDP" in r for r in reasons)


def test_dropout_turns_auto_off_and_true_warns(policy_dir, tmp_path, caplog):
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear")
    with caplog.at_level(logging.WARNING):
        trainer = PRPOTrainer(str(policy_dir), args=make_args(tmp_path), train_dataset=dataset(), prm=None,
                              grader=parity_grader, peft_config=lora)
    assert not trainer.shared_prefix.possible and any("dropout" in r for r in trainer.shared_prefix.reasons)
    with caplog.at_level(logging.WARNING):
        trainer = PRPOTrainer(str(policy_dir), args=make_args(tmp_path, shared_prefix=True), train_dataset=dataset(),
                              grader=parity_grader, peft_config=lora)
    assert trainer.shared_prefix.possible and "dropout mask is shared" in caplog.text


def test_yaml_booleans_and_bad_values(tmp_path):
    assert make_args(tmp_path, shared_prefix=False).shared_prefix == "false"
    with pytest.raises(ConfigError, match="shared_prefix"):
        PRPOConfig(output_dir=str(tmp_path), shared_prefix="on", use_cpu=True)


def trainer_for(policy_dir, tmp_path, mode: str, **overrides) -> PRPOTrainer:
    args = make_args(tmp_path / mode, shared_prefix=mode, **overrides)
    return PRPOTrainer(str(policy_dir), args=args, train_dataset=dataset(), grader=parity_grader)


def test_a_group_split_across_micro_batches_is_exact(policy_dir, tmp_path):
    """TRL's chunked pass with chunks of 3 over groups of 4: each chunk's groups are found and shared."""
    shared, plain = trainer_for(policy_dir, tmp_path, "true"), trainer_for(policy_dir, tmp_path, "false")
    ids, mask = batch()
    for trainer in (shared, plain):
        trainer.model.train()
    logps, entropy, _ = shared._get_per_token_logps_and_entropies(shared.model, ids, mask, COMPLETION, batch_size=3,
                                                                  compute_entropy=True)
    want_logps, want_entropy, _ = plain._get_per_token_logps_and_entropies(plain.model, ids, mask, COMPLETION,
                                                                           batch_size=3, compute_entropy=True)
    valid = mask[:, -COMPLETION:].bool()
    assert_close_scaled(logps[valid], want_logps[valid])
    assert_close_scaled(entropy[valid], want_entropy[valid])
    assert shared._metrics["train"]["shared_prefix/token_ratio"][0] > 1  # the first chunk was shared


def logged(trainer: PRPOTrainer) -> dict[str, float]:
    """Train, then the metrics.jsonl row of the one update."""
    trainer.train()
    with open(f"{trainer.args.output_dir}/metrics.jsonl") as rows:
        return next(row for row in map(json.loads, rows) if "loss" in row)


def test_one_training_step_logs_the_unshared_runs_numbers(policy_dir, tmp_path):
    """PRPO with LoRA, a KL term and checkpointing, one update over 2 micro-batches: auto shares, and every logged
    number (loss, KL, entropy, clip ratios, advantages, rewards) equals the unshared run's."""
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear")
    runs = {}
    for mode in ("auto", "false"):
        args = make_args(tmp_path / mode, shared_prefix=mode, beta=0.04, activation_checkpointing=True,
                         per_device_train_batch_size=4, gradient_accumulation_steps=2)
        trainer = PRPOTrainer(str(policy_dir), args=args, train_dataset=dataset(), grader=parity_grader,
                              prm={"type": "arithmetic"}, peft_config=lora)
        runs[mode] = logged(trainer)
    shared, plain = runs["auto"], runs["false"]
    assert shared["shared_prefix/token_ratio"] > 1.3 and plain["shared_prefix/token_ratio"] == 1.0
    compared = [key for key in plain if not key.startswith(("time/", "shared_prefix/")) and
                isinstance(plain[key], (int, float)) and key not in ("step_time", "train_runtime")]
    assert {"loss", "kl", "entropy", "reward", "advantages/mean"} <= set(compared)
    for key in compared:
        assert shared[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-6), key


def test_prpo_train_logs_the_same_step_shared_and_unshared(tiny_causal_lm_dir, tmp_path):
    """`prpo train` end to end (cpu-tiny config, one step, full fine-tuning): auto shares (token ratio > 1.3) and
    every logged number of the step equals the unshared run's."""
    from prpo.cli import main as cli_main

    rows = {}
    for mode in ("auto", "false"):
        out = tmp_path / mode
        assert cli_main(["train", "cpu-tiny", "--model.model_name_or_path", str(tiny_causal_lm_dir), "--output_dir",
                         str(out), "--max_steps", "1", "--eval_before_after", "false", "--shared_prefix", mode]) == 0
        with open(out / "metrics.jsonl") as lines:
            rows[mode] = next(row for row in map(json.loads, lines) if "loss" in row)
    shared, plain = rows["auto"], rows["false"]
    assert shared["shared_prefix/token_ratio"] > 1.3 and plain["shared_prefix/token_ratio"] == 1.0
    numbers = [k for k, v in plain.items() if isinstance(v, (int, float)) and not k.startswith(("time/", "shared_prefix/"))
               and k not in ("step_time", "train_runtime")]
    assert {"loss", "kl", "entropy", "accuracy", "prm/score_mean"} <= set(numbers)
    for key in numbers:
        assert shared[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-6), key
