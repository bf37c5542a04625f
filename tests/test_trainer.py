"""PRPOTrainer on tiny random Qwen2 models (CPU): loss, entropy capture, every method end to end, data checks."""

from __future__ import annotations

import json
import math

import pytest
import torch
from datasets import Dataset

from prpo.advantages import ADVANTAGES
from prpo.config import PRPOConfig
from prpo.trainer import PRPOTrainer, check_dataset

REQUIRED_METRICS = [
    "reward", "accuracy", "completions/mean_length", "completions/min_length", "completions/max_length",
    "completions/clipped_ratio", "final_answer_rate", "frac_groups_same_outcome", "advantages/mean",
    "advantages/std", "entropy", "clip_ratio/region_mean", "time/generate", "time/advantages", "time/update",
]
PRM_METRICS = ["segments/per_response", "segments/mean_length", "prm/score_mean", "prm/first_segment_mean",
               "sign_agreement", "sampling_entropy", "time/entropy", "time/segment", "time/prm"]


class LengthPRM:
    """A deterministic PRM for tests: a segment's score depends on its length, always in [0.1, 0.9]."""

    prm_id = "length"

    def score(self, problems: list[str], segments: list[list[str]]) -> list[list[float]]:
        return [[0.1 + 0.2 * (len(text) % 5) for text in row] for row in segments]


def parity_grader(responses: list[str], golds: list[str]) -> list[bool]:
    """Correct when the response has an even number of characters: mixed outcomes from a random model."""
    return [len(response) % 2 == 0 for response in responses]


def dataset(n: int = 2) -> Dataset:
    rows = [(3, 4), (12, 5), (7, 8), (20, 1)][:n]
    return Dataset.from_list([
        {"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}], "problem": f"What is {a} + {b}?",
         "answer": str(a + b), "prompt_id": f"sum-{a}-{b}"}
        for a, b in rows
    ])


def make_args(tmp_path, **overrides) -> PRPOConfig:
    values = dict(
        output_dir=str(tmp_path / "run"), method="prpo", prm={"type": "arithmetic"}, num_generations=4,
        per_device_train_batch_size=8, max_completion_length=16, min_gap=3, max_steps=2, save_strategy="no",
        report_to=[], seed=0, activation_checkpointing=False, use_cpu=True, learning_rate=1e-3,
    )
    values.update(overrides)
    return PRPOConfig(**values)


def test_loss_uses_token_level_advantages(tiny_causal_lm_dir, tmp_path):
    """With ratio 1 the loss is -sum(A M)/sum(M); moving A at one token moves the gradient by -dA/N * grad logp there."""
    trainer = PRPOTrainer(str(tiny_causal_lm_dir), args=make_args(tmp_path, beta=0.0), train_dataset=dataset(),
                          prm=LengthPRM(), grader=parity_grader)
    model = trainer.model
    torch.manual_seed(0)
    batch, prompt_len, width = 2, 5, 6
    completion_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    inputs = {
        "prompt_ids": torch.randint(0, 1000, (batch, prompt_len)),
        "prompt_mask": torch.ones(batch, prompt_len, dtype=torch.long),
        "completion_ids": torch.randint(0, 1000, (batch, width)),
        "completion_mask": completion_mask,
        "num_items_in_batch": completion_mask.sum(),
    }
    advantages = torch.randn(batch, width) * completion_mask

    def loss_and_grad(adv: torch.Tensor) -> tuple[float, torch.Tensor]:
        model.zero_grad()
        loss = trainer.compute_loss(model, {**inputs, "advantages": adv})
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    loss, grad = loss_and_grad(advantages)
    n = completion_mask.sum().item()
    assert math.isclose(loss, -(advantages * completion_mask).sum().item() / n, rel_tol=1e-5, abs_tol=1e-6)

    changed = advantages.clone()
    changed[0, 2] += 1.5
    _, grad_changed = loss_and_grad(changed)
    model.zero_grad()
    logps, _, _ = trainer._get_per_token_logps_and_entropies(
        model, torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
        torch.cat([inputs["prompt_mask"], completion_mask], 1), width,
    )
    logps[0, 2].backward()
    grad_logp = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    torch.testing.assert_close(grad_changed - grad, -1.5 / n * grad_logp, rtol=1e-3, atol=1e-6)
    padding = advantages.clone()
    padding[1, 4] = 100.0  # a padding position: no effect
    assert torch.allclose(loss_and_grad(padding)[1], grad)


def test_generation_entropy_equals_the_forward_pass_entropy(tiny_causal_lm_dir, tmp_path):
    """The entropy captured while sampling is the sampling policy's H(softmax(logits / T)) at every position."""
    args = make_args(tmp_path, beta=0.0, temperature=0.7, max_completion_length=12)
    trainer = PRPOTrainer(str(tiny_causal_lm_dir), args=args, train_dataset=dataset(), prm=LengthPRM(), grader=parity_grader)
    trainer.model.eval()
    prompts = [row["prompt"] for row in dataset()]
    prompt_ids, completion_ids, *_ = trainer._generate(prompts)
    width = max(len(c) for c in completion_ids)
    captured = trainer._recorder.entropies(width)
    pad = trainer._tokenizer.pad_token_id
    plen = max(len(p) for p in prompt_ids)
    ids = torch.tensor([[pad] * (plen - len(p)) + p + c + [pad] * (width - len(c)) for p, c in zip(prompt_ids, completion_ids)])
    mask = torch.tensor([[0] * (plen - len(p)) + [1] * (len(p) + len(c)) + [0] * (width - len(c))
                         for p, c in zip(prompt_ids, completion_ids)])
    with torch.no_grad():
        _, entropies, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, width, compute_entropy=True)
    valid = mask[:, plen:].bool()
    assert valid.sum() > 10
    torch.testing.assert_close(captured[valid], entropies.float()[valid], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", sorted(ADVANTAGES))
def test_few_steps_end_to_end(method, tiny_causal_lm_dir, tmp_path):
    args = make_args(tmp_path, method=method, prm={"type": "arithmetic"} if ADVANTAGES[method].uses_prm else None)
    trainer = PRPOTrainer(str(tiny_causal_lm_dir), args=args, train_dataset=dataset(), prm=LengthPRM(), grader=parity_grader)
    initial = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    run = tmp_path / "run"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in metrics if "reward" in row]
    assert [row["step"] for row in steps] == [1, 2]
    expected = REQUIRED_METRICS + (PRM_METRICS if ADVANTAGES[method].uses_prm else [])
    for row in steps:
        missing = [key for key in expected if key not in row]
        assert not missing, missing
        assert all(v is None or math.isfinite(v) for v in row.values() if isinstance(v, float))
        assert 0.0 <= row["accuracy"] <= 1.0 and row["kl"] >= 0.0
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert [sample["step"] for sample in samples] == [1] * 8 + [2] * 8
    gold = {row["prompt_id"]: (row["problem"], row["answer"]) for row in dataset()}
    for sample in samples:
        assert "".join(seg["text"] for seg in sample["segments"]) == sample["response"]
        assert sum(seg["tokens"] for seg in sample["segments"]) == sample["length"]
        assert sample["correct"] == (len(sample["response"]) % 2 == 0)
        assert sample["reward"] == (1.0 if sample["correct"] else -1.0)
        assert (sample["problem"], sample["answer"]) == gold[sample["prompt_id"]]  # each sample keeps its own answer
        if ADVANTAGES[method].uses_prm:
            assert [seg["prm_score"] for seg in sample["segments"]] == LengthPRM().score([""], [[s["text"] for s in sample["segments"]]])[0]
    moved = any(not torch.equal(a, b.detach()) for a, b in zip(initial, trainer.model.parameters()))
    assert moved, "two updates with non-zero advantages left the weights unchanged"


def test_bad_data_rows_are_rejected(qwen_tokenizer):
    good = dataset(2).to_list()
    cases = [
        (Dataset.from_list([{k: v for k, v in row.items() if k != "answer"} for row in good]), "lacks the 'answer' column"),
        (Dataset.from_list([good[0], {**good[1], "answer": " "}]), "dataset row 1 (prompt_id 'sum-12-5'): answer"),
        (Dataset.from_list([good[0], {**good[1], "prompt_id": "sum-3-4"}]), "shared with a different problem"),
    ]
    for data, words in cases:
        with pytest.raises(ValueError) as info:
            check_dataset(data, qwen_tokenizer, 2048)
        assert words in str(info.value)
    with pytest.raises(ValueError) as info:
        check_dataset(dataset(2), qwen_tokenizer, 8)
    assert "more than max_prompt_length=8" in str(info.value)
    check_dataset(dataset(2), qwen_tokenizer, 2048)
