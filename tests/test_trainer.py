"""PRPOTrainer on tiny random Qwen2 models (CPU): the advantages that reach TRL's loss, metrics, samples, data checks.

Each run trains one step (the default PRPO run two) and records, at TRL's `_compute_loss`, the batch
the loss receives and the entropy of the sampling policy from an independent forward pass. The
expected advantages are rebuilt from that batch alone: texts decoded from the token ids, rewards
from the grader, groups from the prompt text, entropy segments from `prpo.reference`, scores from
the test PRM, the filter from its `prpo.reference` twin, and the advantages from
`prpo.advantages.compute_advantages` with the options the test names (never the trainer's).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import assert_close_scaled, tiny_qwen2_config
from datasets import Dataset

from prpo import advantages as adv
from prpo import reference
from prpo.advantages import ADVANTAGES
from prpo.training.config import PRPOConfig
from prpo.tasks.rows import check_dataset
from prpo.training.trainer import PRPOTrainer

REQUIRED_METRICS = [
    "reward", "accuracy", "completions/mean_length", "completions/min_length", "completions/max_length",
    "completions/clipped_ratio", "final_answer_rate", "frac_groups_same_outcome", "advantages/mean",
    "advantages/std", "entropy", "clip_ratio/region_mean", "time/generate", "time/advantages", "time/update",
]
PRM_METRICS = ["segments/per_response", "segments/mean_length", "prm/score_mean", "prm/first_segment_mean",
               "sampling_entropy", "time/entropy", "time/segment", "time/prm"]
PROBLEMS = ["What is 3 + 4?", "What is 12 + 5?"]
ROLLOUTS = 4  # num_generations; 2 prompts x 4 = one batch of 8
MIN_GAP = 3


def length_score(text: str) -> float:
    """The test PRM: a segment's score from its length, always in [0.1, 0.9]."""
    return 0.1 + 0.2 * (len(text) % 5)


class LengthPRM:
    """A deterministic PRM that also records what it was shown."""

    prm_id = "length"

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[list[str]]]] = []

    def score(self, problems: list[str], segments: list[list[str]]) -> list[list[float]]:
        self.calls.append((list(problems), [list(row) for row in segments]))
        return [[length_score(text) for text in row] for row in segments]


def parity(text: str) -> bool:
    return len(text) % 2 == 0


def parity_grader(responses: list[str], golds: list[str]) -> list[bool]:
    """Correct when the response has an even number of characters: mixed outcomes from a random model."""
    return [parity(response) for response in responses]


def dataset(n: int = 2) -> Dataset:
    rows = [(3, 4), (12, 5), (7, 8), (20, 1)][:n]
    return Dataset.from_list([
        {"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}], "problem": f"What is {a} + {b}?",
         "answer": str(a + b), "prompt_id": f"sum-{a}-{b}"}
        for a, b in rows
    ])


def make_args(tmp_path, **overrides) -> PRPOConfig:
    values = dict(
        output_dir=str(tmp_path / "run"), method="prpo", prm={"type": "arithmetic"}, num_generations=ROLLOUTS,
        per_device_train_batch_size=8, max_completion_length=12, min_gap=MIN_GAP, max_steps=1, save_strategy="no",
        report_to=[], seed=0, activation_checkpointing=False, use_cpu=True, learning_rate=1e-3, beta=0.0,
    )
    values.update(overrides)
    return PRPOConfig(**values)


# ----------------------------------------------------------------------------- recorded runs


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory, qwen_tokenizer) -> Path:
    """A tiny random Qwen2 with peaked next-token distributions (entropies 3-9 nats, not all ~log V).

    At the default initialisation every entropy is log V within 1e-5, so entropy spikes would be ties
    decided by rounding; here they are far apart and the segments are well defined.
    """
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("peaked-qwen2")
    Qwen2ForCausalLM(tiny_qwen2_config(len(qwen_tokenizer), initializer_range=0.5)).save_pretrained(path)
    qwen_tokenizer.save_pretrained(path)
    return path


@dataclass
class LossBatch:
    """What TRL's `_compute_loss` received in one step, and the sampling policy's entropy on it."""

    inputs: dict[str, Any]
    entropy: torch.Tensor


@dataclass
class Run:
    trainer: PRPOTrainer
    args: PRPOConfig
    prm: LengthPRM
    batches: list[LossBatch]
    metrics: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    moved: bool
    reward_funcs: list | None = None
    weights: list[float] | None = None


def policy_entropy(model, inputs: dict[str, Any], temperature: float) -> torch.Tensor:
    """``H(softmax(logits / T))`` of each completion position, from one plain forward pass of ``model``."""
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    width = inputs["completion_ids"].shape[1]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits
    logp = torch.log_softmax(logits[:, -width - 1:-1].float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def train_recorded(model_dir: Path, out: Path, *, reward_funcs=None, **overrides) -> Run:
    args = make_args(out, **overrides)
    prm = LengthPRM()
    grader = None if reward_funcs else parity_grader
    trainer = PRPOTrainer(str(model_dir), reward_funcs=reward_funcs, args=args, train_dataset=dataset(),
                          prm=prm, grader=grader)
    batches: list[LossBatch] = []
    compute_loss = trainer._compute_loss

    def recording_loss(model, inputs):
        entropy = policy_entropy(model, inputs, args.temperature)  # one update per rollout: this is the sampler
        batches.append(LossBatch({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in inputs.items()},
                                 entropy))
        return compute_loss(model, inputs)

    trainer._compute_loss = recording_loss
    initial = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    run_dir = Path(args.output_dir)
    metrics = [row for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "reward" in row]
    samples_file = run_dir / "samples.jsonl"
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()] if samples_file.exists() else []
    moved = any(not torch.equal(a, b.detach()) for a, b in zip(initial, trainer.model.parameters()))
    weights = list(args.reward_weights) if args.reward_weights is not None else None
    return Run(trainer, args, prm, batches, metrics, samples, moved, reward_funcs, weights)


@dataclass
class Expected:
    """A loss batch rebuilt independently: everything the advantages are made of."""

    mask: torch.Tensor
    texts: list[str]
    groups: torch.Tensor
    correct: torch.Tensor
    rewards: torch.Tensor
    segment_ids: torch.Tensor | None = None
    segment_texts: list[list[str]] = field(default_factory=list)
    token_scores: torch.Tensor | None = None
    keep: torch.Tensor | None = None


def rebuild(run: Run, batch: LossBatch) -> Expected:
    inputs, tokenizer, args = batch.inputs, run.trainer.processing_class, run.args
    mask = inputs["completion_mask"].bool()
    lengths = mask.sum(dim=1).tolist()
    assert torch.equal(mask, torch.arange(mask.shape[1])[None, :] < torch.tensor(lengths)[:, None])  # a prefix
    rows = inputs["completion_ids"].tolist()
    texts = [tokenizer.decode(row[:n], skip_special_tokens=True) for row, n in zip(rows, lengths)]
    prompts = tokenizer.batch_decode(inputs["prompt_ids"], skip_special_tokens=True)
    groups = torch.tensor([[p in prompt for p in PROBLEMS].index(True) for prompt in prompts])
    correct = torch.tensor([parity(t) for t in texts])
    if run.reward_funcs:
        per_func = torch.tensor([[float(f(completions=[t])[0]) for f in run.reward_funcs] for t in texts])
        rewards = (per_func * torch.tensor(run.weights or [1.0] * len(run.reward_funcs))).sum(dim=1)
    else:
        rewards = torch.where(correct, args.correct_reward, args.wrong_reward)
    out = Expected(mask, texts, groups, correct, rewards.float())
    if not args.uses_prm():
        return out
    assert args.segmenter == "entropy"
    ids = [reference.entropy_segments_row(batch.entropy[i].tolist(), n, k=args.k, min_gap=args.min_gap)
           for i, n in enumerate(lengths)]
    out.segment_ids = torch.tensor([row + [-1] * (mask.shape[1] - len(row)) for row in ids])
    for row, seg in zip(rows, ids):
        spans = [[t for t, s in enumerate(seg) if s == j] for j in range(max(seg) + 1)]
        out.segment_texts.append([tokenizer.decode(row[span[0]:span[-1] + 1], skip_special_tokens=True) for span in spans])
    scores = [[length_score(t) for t in row] for row in out.segment_texts]
    out.token_scores = torch.tensor([[scores[i][s] if s >= 0 else 0.0 for s in row] for i, row in enumerate(out.segment_ids.tolist())])
    spec = args.filter_spec()
    if spec is not None:
        keep = spec[1].get("keep", ROLLOUTS // 2)
        out.keep = torch.tensor(reference.consistency_filter_rows(out.correct.tolist(), out.groups.tolist(), scores, keep))
    return out


def expected_advantages(run: Run, e: Expected, method: str, **options) -> torch.Tensor:
    """`compute_advantages` of ``method`` on the kept rows of the rebuilt batch (the loss sees 0 on dropped rows)."""
    keep = e.keep if e.keep is not None else torch.ones(len(e.texts), dtype=torch.bool)
    out = torch.zeros(e.mask.shape)
    pick = (lambda t: None if t is None else t[keep])
    out[keep] = adv.compute_advantages(
        method, outcome_rewards=e.rewards[keep], group_ids=e.groups[keep], mask=e.mask[keep],
        token_scores=pick(e.token_scores), segment_ids=pick(e.segment_ids), **options,
    )
    return out


def check_advantages(run: Run, method: str, options: dict[str, Any], defaults_differ: bool = False) -> None:
    """Every loss batch of ``run`` carries the advantages of ``method`` with ``options``, and the PRM saw its segments."""
    assert len(run.batches) == run.args.max_steps
    for batch, (problems, segments) in zip(run.batches, run.prm.calls or [(None, None)] * len(run.batches)):
        e = rebuild(run, batch)
        expected = expected_advantages(run, e, method, **options)
        torch.testing.assert_close(batch.inputs["advantages"], expected, rtol=1e-5, atol=1e-5)
        if defaults_differ:  # the options change this batch's advantages, so dropping them would fail above
            assert not torch.allclose(expected_advantages(run, e, method), expected, atol=1e-3)
        if e.keep is not None:  # dropped rollouts leave the loss: mask and token count
            loss_mask = batch.inputs["completion_mask"] * batch.inputs["tool_mask"]
            assert torch.equal(loss_mask.bool(), e.mask & e.keep[:, None])
            assert int(batch.inputs["num_items_in_batch"]) == int((e.mask & e.keep[:, None]).sum())
            assert 0 < int(e.keep.sum()) < len(e.keep)
        if e.segment_ids is not None:  # the PRM saw each row's own problem and exactly these segments
            seen = sorted(zip(problems, map(tuple, segments)))
            assert seen == sorted(zip([PROBLEMS[g] for g in e.groups.tolist()], map(tuple, e.segment_texts)))


def check_metrics(run: Run) -> None:
    """Every logged number is finite, and the trainer's own metrics equal values computed from the rebuilt batch."""
    for row, batch in zip(run.metrics, run.batches):
        bad = {k: v for k, v in row.items() if v is None or (isinstance(v, float) and not math.isfinite(v))}
        assert not bad, bad  # the run files write NaN and inf as null
        e = rebuild(run, batch)
        approx = lambda value: pytest.approx(value, rel=1e-4, abs=1e-5)  # noqa: E731
        if not run.reward_funcs:
            assert row["accuracy"] == approx(e.correct.float().mean().item())
        outcome = e.rewards if run.reward_funcs else e.correct.float()
        same = [len(set(outcome[e.groups == g].tolist())) == 1 for g in range(len(PROBLEMS))]
        assert row["frac_groups_same_outcome"] == approx(sum(same) / len(same))
        assert row["final_answer_rate"] == 0.0  # a random model writes no \boxed{} nor "Answer:"
        # The method's own diagnostics, over the rows it ran on (the filter's kept ones): beta = 0 tokens for the
        # methods with an outcome location, sign agreement of Z and beta for PRPO; no other method logs them.
        fn = ADVANTAGES[run.args.method].fn
        keep = e.keep if e.keep is not None else torch.ones(len(e.texts), dtype=torch.bool)
        beta, mask = outcome_beta(run.args, e, keep)[keep], e.mask[keep]
        if fn in (adv.grpo, adv.dr_grpo, adv.prpo, adv.prpo_sp):
            assert row["beta_zero_token_share"] == approx((mask & (beta[:, None] == 0)).sum().item() / mask.sum().item())
        else:
            assert "beta_zero_token_share" not in row
        if fn in (adv.prpo, adv.prpo_sp):
            z = process_z(run.args, e, keep)[keep]
            signed = mask & (beta[:, None] != 0)
            agree = signed & (torch.sign(z) == torch.sign(beta)[:, None])
            assert row["sign_agreement"] == approx(agree.sum().item() / max(signed.sum().item(), 1))
        else:
            assert "sign_agreement" not in row
        if fn is adv.prpo_sp:  # the share of signed tokens where the outcome overruled the PRM
            clipped = signed & (z.abs() > beta.abs()[:, None])
            assert row["clip_share"] == approx(clipped.sum().item() / max(signed.sum().item(), 1))
        else:
            assert "clip_share" not in row
        if e.segment_ids is None:
            continue
        counts = e.segment_ids.amax(dim=1) + 1
        first = [row_scores[0] for row_scores in ([length_score(t) for t in texts] for texts in e.segment_texts)]
        every = [length_score(t) for texts in e.segment_texts for t in texts]
        assert row["segments/per_response"] == approx(counts.float().mean().item())
        assert row["segments/mean_length"] == approx(e.mask.sum().item() / counts.sum().item())
        assert row["prm/score_mean"] == approx(sum(every) / len(every))
        assert row["prm/first_segment_mean"] == approx(sum(first) / len(first))
        assert row["sampling_entropy"] == approx((batch.entropy * e.mask).sum().item() / e.mask.sum().item())


def process_z(args: PRPOConfig, e: Expected, keep: torch.Tensor) -> torch.Tensor:
    """Z of docs/algorithm.md s.4 on the ``keep`` rows, written out: fixed prior, or the group's token mean and population std."""
    scores = e.token_scores.double()
    if args.normalization == "fixed_prior":
        return torch.where(e.mask, (scores - args.mu0) / args.sigma0, 0.0)
    z = torch.zeros_like(scores)
    for g in e.groups.unique():
        rows = (e.groups == g) & keep
        tokens = scores[rows][e.mask[rows]]
        mean, std = tokens.mean(), tokens.std(unbiased=False)
        z[rows] = (scores[rows] - mean) / (std + args.eps)
    return torch.where(e.mask, z, 0.0)


def outcome_beta(args: PRPOConfig, e: Expected, keep: torch.Tensor) -> torch.Tensor:
    """The outcome location over the ``keep`` rows of each group: ``R - mean``, over the sample std for 'group'.

    GRPO's advantage is the scaled one; its zeros are the same.
    """
    scaled = args.outcome_scale == "group" or ADVANTAGES[args.method].fn is adv.grpo
    beta = torch.zeros(len(e.texts), dtype=torch.float64)
    for g in e.groups.unique():
        rows = (e.groups == g) & keep
        r = e.rewards[rows].double()
        beta[rows] = (r - r.mean()) / ((r.std() + args.eps) if scaled and len(r) > 1 else 1.0)
    return beta


def first_reward(completions, **kwargs) -> list[float]:
    """A custom reward: 1 when the response has an even number of characters."""
    return [float(parity(c[0]["content"] if isinstance(c, list) else c)) for c in completions]


def constant_reward(completions, **kwargs) -> list[float]:
    """A custom reward that never varies: every group has all-same outcomes."""
    return [1.0] * len(completions)


def second_reward(completions, **kwargs) -> list[float]:
    """A custom reward: the response's character count mod 3."""
    return [float(len(c[0]["content"] if isinstance(c, list) else c) % 3) for c in completions]


# One recorded run per registered method, plus runs for the options that change the math. Each entry:
# (method, PRPOConfig overrides, custom reward functions, options passed to compute_advantages as written here).
# A method not named here runs with its defaults.
RUNS: dict[str, tuple[str, dict[str, Any], list | None, dict[str, Any]]] = {
    "prpo": ("prpo", dict(max_steps=2, beta=0.001), None, {}),  # two steps, with the KL term
    "prpo-group": ("prpo", dict(normalization="group", outcome_scale="group"), None,
                   dict(normalization="group", outcome_scale="group")),
    "prpo-prior": ("prpo", dict(mu0=0.3, sigma0=0.1, correct_reward=3.0, wrong_reward=0.0), None, dict(mu0=0.3, sigma0=0.1)),
    "process_only": ("process_only", dict(normalization="group"), None, dict(normalization="group")),
    "pure": ("pure", dict(advantage_options={"tau": 0.5}), None, dict(tau=0.5)),
    "prpo_prof": ("prpo_prof", dict(filter={"type": "consistency", "keep": 3}), None, {}),
    "grpo": ("grpo", dict(reward_weights=[1.0, 0.5]), [first_reward, second_reward], {}),
    # every group all-same (a constant reward): prpo_sp's advantage there is uniform_group_scale * Z
    "prpo_sp-uniform": ("prpo_sp", dict(advantage_options={"uniform_group_scale": 1.0}), [constant_reward],
                        dict(uniform_group_scale=1.0)),
}
RUN_NAMES = sorted(set(ADVANTAGES) | set(RUNS))


@pytest.fixture(scope="module", params=RUN_NAMES)
def recorded(request, policy_dir, tmp_path_factory) -> tuple[str, dict[str, Any], Run]:
    method, config, reward_funcs, options = RUNS.get(request.param, (request.param, {}, None, {}))
    run = train_recorded(policy_dir, tmp_path_factory.mktemp(request.param), method=method,
                         reward_funcs=reward_funcs, **config)
    return method, options, run


def test_loss_receives_the_advantages_of_the_method_and_options(recorded):
    method, options, run = recorded
    check_advantages(run, method, options, defaults_differ=bool(options))


def test_metrics_are_finite_and_equal_their_definition(recorded):
    _, _, run = recorded
    assert [row["step"] for row in run.metrics] == list(range(1, run.args.max_steps + 1))
    expected = REQUIRED_METRICS + (PRM_METRICS if run.args.uses_prm() else [])
    for row in run.metrics:
        missing = [key for key in expected if key not in row and not (key == "accuracy" and run.reward_funcs)]
        assert not missing, missing
    if run.args.beta > 0:
        assert all(row["kl"] >= 0.0 for row in run.metrics)
    check_metrics(run)


def test_samples_keep_their_own_rows_and_the_weights_move(recorded):
    _, _, run = recorded
    steps = run.args.max_steps
    assert [sample["step"] for sample in run.samples] == [s for s in range(1, steps + 1) for _ in range(8)]
    gold = {row["prompt_id"]: (row["problem"], row["answer"]) for row in dataset()}
    for sample in run.samples:
        assert "".join(seg["text"] for seg in sample["segments"]) == sample["response"]
        assert sum(seg["tokens"] for seg in sample["segments"]) == sample["length"]
        assert (sample["problem"], sample["answer"]) == gold[sample["prompt_id"]]  # each sample keeps its own answer
        if not run.reward_funcs:
            assert sample["correct"] == parity(sample["response"])
            right, wrong = run.args.correct_reward, run.args.wrong_reward
            assert sample["reward"] == (right if sample["correct"] else wrong)
        if run.args.uses_prm():
            assert [seg["prm_score"] for seg in sample["segments"]] == [length_score(seg["text"]) for seg in sample["segments"]]
    assert run.moved, "an update with non-zero advantages left the weights unchanged"


# ----------------------------------------------------------------------------- loss and entropy capture


def test_loss_uses_token_level_advantages(tiny_causal_lm_dir, tmp_path):
    """With ratio 1 the loss is -sum(A M)/sum(M); moving A at one token moves the gradient by -dA/N * grad logp there."""
    trainer = PRPOTrainer(str(tiny_causal_lm_dir), args=make_args(tmp_path), train_dataset=dataset(),
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
    # the difference of two float32 gradients: its error is a few ulps of the gradients, not of the difference
    assert_close_scaled(grad_changed - grad, -1.5 / n * grad_logp, scale=grad.abs().max().item())
    padding = advantages.clone()
    padding[1, 4] = 100.0  # a padding position: no effect
    assert_close_scaled(loss_and_grad(padding)[1], grad, rel=1e-6)


def test_generation_entropy_equals_the_forward_pass_entropy(tiny_causal_lm_dir, tmp_path):
    """The entropy captured while sampling is the sampling policy's H(softmax(logits / T)) at every position."""
    args = make_args(tmp_path, temperature=0.7, max_completion_length=12)
    trainer = PRPOTrainer(str(tiny_causal_lm_dir), args=args, train_dataset=dataset(), prm=LengthPRM(), grader=parity_grader)
    trainer.model.eval()
    prompts = [row["prompt"] for row in dataset()]
    prompt_ids, completion_ids, *_ = trainer._generate(prompts)
    width = max(len(c) for c in completion_ids)
    captured = trainer._rollout.recorder.entropies(width)
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


# ----------------------------------------------------------------------------- data checks


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
