"""The paper's loss on a tiny random Qwen2 (CPU): the KL term is plain k3, and bf16 weights still train at lr 1e-6."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close_scaled
from datasets import Dataset

from prpo.training.config import PRPOConfig
from prpo.training.trainer import PRPOTrainer


class HalfPRM:
    """Every segment scores 0.5 (no process credit): the advantages are the outcome's alone."""

    def score(self, problems: list[str], segments: list[list[str]]) -> list[list[float]]:
        return [[0.5] * len(row) for row in segments]


def _grader(responses: list[str], golds: list[str]) -> list[bool]:
    return [len(response) % 2 == 0 for response in responses]


def _dataset() -> Dataset:
    return Dataset.from_list([
        {"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}], "problem": f"What is {a} + {b}?",
         "answer": str(a + b), "prompt_id": f"sum-{a}-{b}"}
        for a, b in [(3, 4), (12, 5)]
    ])


def _args(tmp_path, **overrides) -> PRPOConfig:
    values = dict(
        output_dir=str(tmp_path / "run"), prm={"type": "arithmetic"}, num_generations=4, per_device_train_batch_size=8,
        max_completion_length=12, min_gap=3, max_steps=1, save_strategy="no", report_to=[], seed=0,
        activation_checkpointing=False, use_cpu=True,
    )
    return PRPOConfig(**{**values, **overrides})


class KLBatch:
    """A loss batch with A = 0 (the loss is the KL term alone) and a reference ~0.5 nats off the policy."""

    def __init__(self, trainer: PRPOTrainer):
        torch.manual_seed(0)
        self.trainer, self.model = trainer, trainer.model
        batch, prompt_len, self.width = 2, 5, 6
        self.mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
        prompt_ids = torch.randint(0, 1000, (batch, prompt_len))
        completion_ids = torch.randint(0, 1000, (batch, self.width))
        self.input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        self.attention = torch.cat([torch.ones(batch, prompt_len, dtype=torch.long), self.mask], dim=1)
        with torch.no_grad():
            self.ref = self.logps() + 0.5 * torch.randn(batch, self.width)
        self.inputs = {
            "prompt_ids": prompt_ids, "prompt_mask": torch.ones(batch, prompt_len, dtype=torch.long),
            "completion_ids": completion_ids, "completion_mask": self.mask, "num_items_in_batch": self.mask.sum(),
            "advantages": torch.zeros(batch, self.width), "ref_per_token_logps": self.ref.clone(),
        }

    def logps(self) -> torch.Tensor:
        return self.trainer._get_per_token_logps_and_entropies(self.model, self.input_ids, self.attention, self.width)[0]

    def grad(self, loss: torch.Tensor) -> torch.Tensor:
        self.model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in self.model.parameters() if p.grad is not None])


@pytest.mark.parametrize("bias_correction", [False, True])
def test_kl_gradient_is_the_plain_k3_gradient(bias_correction, tiny_causal_lm_dir, tmp_path):
    """With A = 0 the loss is beta * token-mean k3, k3 = exp(r) - r - 1, r = logp_ref - logp.

    Its gradient is beta * mean((1 - exp(r)) grad logp). TRL's bias-corrected KL multiplies k3 by the
    ratio exp(logp - logp_old) (value 1, gradient grad logp), adding beta * mean(k3 grad logp).
    """
    args = _args(tmp_path, beta=0.5, use_bias_correction_kl=bias_correction)
    trainer = PRPOTrainer(str(tiny_causal_lm_dir), args=args, train_dataset=_dataset(), prm=HalfPRM(), grader=_grader)
    kl = KLBatch(trainer)
    mask, ref, grad = kl.mask, kl.ref, kl.grad
    trl_grad = grad(trainer.compute_loss(kl.model, kl.inputs))
    logp = kl.logps()
    r = ref - logp
    k3 = torch.exp(r) - r - 1
    plain = grad(0.5 * (k3 * mask).sum() / mask.sum())
    assert plain.norm() > 1e-3
    if bias_correction:
        # the extra k3 * grad logp term is not small next to the plain gradient
        assert (trl_grad - plain).norm() > 0.1 * plain.norm()
    else:
        assert_close_scaled(trl_grad, plain)


def test_bf16_weights_move_at_the_papers_learning_rate(tiny_causal_lm_dir, tmp_path):
    """Loaded in bf16, the policy gets float32 master weights: 2 AdamW steps at lr 1e-6 change the layer weights.

    Without them, a step of ~1e-6 is lost against bf16's spacing near |w| ~ 0.02 (0.02 * 2^-8 ~ 8e-5).
    """
    args = _args(tmp_path, learning_rate=1e-6, max_steps=2, model_init_kwargs={"dtype": torch.bfloat16})
    trainer = PRPOTrainer(str(tiny_causal_lm_dir), args=args, train_dataset=_dataset(), prm=HalfPRM(), grader=_grader)
    layers = trainer.model.model.layers
    assert {p.dtype for p in layers.parameters()} == {torch.float32}
    initial = [p.detach().clone() for p in layers.parameters()]
    trainer.train()
    changed = sum((a != b).sum().item() for a, b in zip(initial, layers.parameters()))
    total = sum(a.numel() for a in initial)
    assert changed / total > 0.9, f"only {changed} of {total} layer weights moved"


def _verl_low_var_kl(ref: torch.Tensor, logp: torch.Tensor, kl_max: float = 10.0) -> torch.Tensor:
    """verl's ``low_var_kl`` as written there: clamp r to +-20, k3, clamp to +-kl_max."""
    r = torch.clamp(ref - logp, min=-20, max=20)
    return torch.clamp(torch.exp(r) - r - 1, min=-kl_max, max=kl_max)


@pytest.mark.parametrize("kl_max", [10.0, 1.0, 0.05])
def test_clamped_reference_gives_verls_value_and_gradient(kl_max):
    from prpo.kl import clamped_reference, k3, k3_bounds

    r_lo, r_hi = k3_bounds(kl_max)
    assert k3(torch.tensor([r_lo, r_hi], dtype=torch.float64)).tolist() == pytest.approx([kl_max, kl_max], rel=1e-12)
    torch.manual_seed(0)
    ref = torch.randn(4000, dtype=torch.float64) * 8  # r from about -30 to 30: every side of both bounds
    logp = (torch.randn(4000, dtype=torch.float64) * 2).requires_grad_()
    ours = k3(clamped_reference(ref, logp, kl_max) - logp)
    theirs = _verl_low_var_kl(ref, logp, kl_max)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    (g_ours,) = torch.autograd.grad(ours.sum(), logp)
    (g_theirs,) = torch.autograd.grad(theirs.sum(), logp)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-12, atol=1e-12)
    # Against TRL's unclamped k3: equal inside the bounds, different (larger) outside.
    r = (ref - logp).detach()
    inside = (r >= r_lo) & (r <= r_hi)
    (g_plain,) = torch.autograd.grad(k3(ref - logp).sum(), logp)
    assert inside.any() and (~inside).any()
    torch.testing.assert_close(g_ours[inside], g_plain[inside], rtol=1e-12, atol=1e-12)
    assert (g_ours[~inside] == 0).all() and (g_plain[~inside].abs() > 0).all()


def test_kl_clamp_bounds_are_checked():
    from prpo.training.config import ConfigError

    with pytest.raises(ConfigError, match=r"kl_clamp.*kl_max must be in \(0, 19"):
        PRPOConfig(output_dir="x", kl_clamp=25.0, use_cpu=True)
    with pytest.raises(ConfigError, match="kl_clamp"):
        PRPOConfig(output_dir="x", kl_clamp=0.0, use_cpu=True)


def test_trainer_loss_with_kl_clamp_is_verls_and_leaves_the_batch_alone(tiny_causal_lm_dir, tmp_path):
    """With A = 0 and ``kl_clamp``, the trainer's loss and gradient are beta * token-mean of verl's clamped k3;
    the reference in the batch TRL keeps is not touched."""
    args = _args(tmp_path, beta=0.5, kl_clamp=0.05)  # a small cap, so that both sides of it occur
    trainer = PRPOTrainer(str(tiny_causal_lm_dir), args=args, train_dataset=_dataset(), prm=HalfPRM(), grader=_grader)
    kl = KLBatch(trainer)
    mask, ref, grad, inputs = kl.mask, kl.ref, kl.grad, kl.inputs
    loss = trainer.compute_loss(kl.model, inputs)
    trl_grad = grad(loss)
    assert torch.equal(inputs["ref_per_token_logps"], ref)
    logp = kl.logps()
    verl = _verl_low_var_kl(ref, logp, 0.05)
    assert ((verl == 0.05) & (mask == 1)).any() and ((verl < 0.05) & (mask == 1)).any()
    expected = 0.5 * (verl * mask).sum() / mask.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert_close_scaled(trl_grad, grad(expected))
