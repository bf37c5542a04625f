"""PROF's consistency filter (prpo.filters): the rule by hand, against the reference, in the config and the trainer."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import assert_close_scaled
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st

from prpo.training import trl_surface
from prpo.advantages import ADVANTAGES, AdvantageInputs, advantages_on_kept, compute_advantages
from prpo.training.config import ConfigError, PRPOConfig
from prpo.filters import (
    FILTERS,
    FilterResult,
    apply_filter,
    get_filter,
    register_filter,
    removal_counts,
)
from prpo.reference import consistency_filter_rows
from prpo.training.trainer import PRPOTrainer


def batch_of(rows: list[list[tuple[float, int]]], width: int) -> dict[str, torch.Tensor]:
    """Mask, token scores and segment ids from rows of segments ``(score, tokens)``, right-padded to ``width``."""
    ids = torch.full((len(rows), width), -1)
    scores = torch.zeros(len(rows), width)
    for i, segments in enumerate(rows):
        t = 0
        for j, (score, tokens) in enumerate(segments):
            ids[i, t:t + tokens], scores[i, t:t + tokens] = j, score
            t += tokens
    return {"mask": ids >= 0, "token_scores": scores, "segment_ids": ids}


def outcome_inputs(correct: torch.Tensor, group_ids: torch.Tensor, mask: torch.Tensor, token_scores=None,
                   segment_ids=None) -> tuple[AdvantageInputs, torch.Tensor]:
    """A filter's arguments: the batch (rewards +-1 from the outcomes) and the outcomes ``correct[B]``."""
    return AdvantageInputs(torch.where(correct, 1.0, -1.0), group_ids, mask, token_scores, segment_ids), correct


# One group of G = 8: five correct, three wrong. Step means (not token means) decide: row 0's steps
# 0.95 (1 token) and 0.45 (3 tokens) have step mean 0.7 (c = 0.4) but token mean 0.575 (c = 0.15).
GROUP = [
    [(0.95, 1), (0.45, 3)],  # correct, p = 0.7,  c = 0.4
    [(0.2, 4)],              # correct, p = 0.2,  c = -0.6
    [(0.6, 2), (0.6, 2)],    # correct, p = 0.6,  c = 0.2
    [(0.45, 4)],             # correct, p = 0.45, c = -0.1
    [(0.8, 2)],              # correct, p = 0.8,  c = 0.6 (2 tokens, then padding)
    [(0.1, 4)],              # wrong,   p = 0.1,  c = 0.8
    [(0.7, 4)],              # wrong,   p = 0.7,  c = -0.4
    [(0.25, 1), (0.35, 3)],  # wrong,   p = 0.3,  c = 0.4
]
CORRECT = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0]).bool()


def group_inputs() -> dict[str, torch.Tensor]:
    return {**batch_of(GROUP, 4), "group_ids": torch.zeros(8, dtype=torch.long)}


def test_hand_computed_group_keeps_the_consistent_ones_and_grpo_runs_on_them():
    inputs = group_inputs()
    result = apply_filter("consistency", *outcome_inputs(CORRECT, **inputs), keep=4)
    # n+ = 5, n- = 3, r = 4: r+ = min(4, round((2 + 4) / 2)) = 3 correct dropped (c = -0.6, -0.1, 0.2: rows 1, 3, 2),
    # 1 wrong dropped (c = -0.4: row 6); kept 2 correct (rows 0, 4) and 2 wrong (rows 5, 7).
    assert result.keep.tolist() == [True, False, False, False, True, True, False, True]
    torch.testing.assert_close(result.scores["consistency"], torch.tensor([0.4, -0.6, 0.2, -0.1, 0.6, 0.8, -0.4, 0.4]))
    metrics = result.metrics(CORRECT)
    assert metrics["filter/kept_frac"] == 0.5
    assert (metrics["filter/kept_correct"], metrics["filter/kept_wrong"]) == (2.0, 2.0)
    assert metrics["filter/consistency_kept"] == pytest.approx((0.4 + 0.6 + 0.8 + 0.4) / 4)       # 0.55
    assert metrics["filter/consistency_dropped"] == pytest.approx((-0.6 + 0.2 - 0.1 - 0.4) / 4)   # -0.225
    assert metrics["filter/process_score_kept"] == pytest.approx((0.7 + 0.8 + 0.1 + 0.3) / 4)     # 0.475
    assert metrics["filter/process_score_dropped"] == pytest.approx((0.2 + 0.6 + 0.45 + 0.7) / 4)  # 0.4875

    rewards = torch.where(CORRECT, 1.0, -1.0)
    grpo = advantages_on_kept("grpo", result.keep, AdvantageInputs(rewards, inputs["group_ids"], inputs["mask"]))
    grpo = grpo.advantages
    # kept R = [1, 1, -1, -1]: mean 0, sample std sqrt(4 / 3), A = +-1 / sqrt(4 / 3) = +-0.8660 on valid tokens
    a = 1 / (math.sqrt(4 / 3) + 1e-6)
    expected = torch.zeros(8, 4)
    expected[0], expected[4, :2], expected[5], expected[7] = a, a, -a, -a
    torch.testing.assert_close(grpo, expected)
    # PRPO on the kept rows: beta = R - mean over the kept (0, not the group's 0.25): row 0, token 0 has
    # Z = (0.95 - 0.5) / sqrt(1/24) = 2.2045 and A = 2.2045 + 1.
    prpo = advantages_on_kept("prpo", result.keep, AdvantageInputs(outcome_rewards=rewards, **inputs))
    assert prpo.advantages[0, 0].item() == pytest.approx(0.45 / math.sqrt(1 / 24) + 1.0, rel=1e-5)
    assert prpo.advantages[~result.keep].eq(0).all()
    # Its diagnostics are the kept rows' too. beta = +1, +1, -1, -1 (never 0); sign Z = sign(s - 0.5) agrees with
    # it on row 0's 0.95 (1 token, not its three 0.45), row 4's 0.8 (2), row 5's 0.1 (4) and row 7's 0.25, 0.35 (4):
    # 11 of the 14 kept tokens. (Over the whole group it would be 21 of 26: rows 1-3 and 6 count there.)
    assert prpo.metrics == pytest.approx({"beta_zero_token_share": 0.0, "sign_agreement": 11 / 14})


@pytest.mark.parametrize(("n_correct", "n_wrong", "remove", "expected"), [
    (5, 3, 4, (3, 1)),  # docs/algorithm.md's example (s.8): (2 + 4) / 2 = 3 -> keep 2 correct and 2 wrong
    (4, 4, 3, (2, 1)),  # (0 + 3) / 2 = 1.5 -> 2 (half to even)
    (5, 3, 3, (2, 1)),  # (2 + 3) / 2 = 2.5 -> 2 (half to even, not 3)
    (6, 2, 3, (3, 0)),  # (4 + 3) / 2 = 3.5 -> 4, min(r = 3, 4) = 3
    (3, 5, 3, (0, 3)),  # (-2 + 3) / 2 = 0.5 -> 0: r+ <= 0, all from the wrong ones
    (1, 7, 4, (0, 4)),  # (-6 + 4) / 2 = -1 -> none correct
    (8, 0, 4, (4, 0)),  # one outcome: (8 + 4) / 2 = 6, min(4, 6) = 4 correct
    (0, 8, 4, (0, 4)),  # one outcome: (-8 + 4) / 2 = -2 -> 4 wrong
    (2, 6, 7, (2, 5)),  # (-4 + 7) / 2 = 1.5 -> 2 correct (all of them), 5 wrong
    (7, 1, 7, (6, 1)),  # (6 + 7) / 2 = 6.5 -> 6 (half to even, not 7): 6 correct, the 7th is the wrong one
])
def test_removal_counts_round_half_to_even(n_correct, n_wrong, remove, expected):
    got = removal_counts(torch.tensor([float(n_correct)]), torch.tensor([float(n_wrong)]), torch.tensor([float(remove)]))
    assert (int(got[0]), int(got[1])) == expected
    assert round((n_correct - n_wrong + remove) / 2) == torch.round(torch.tensor((n_correct - n_wrong + remove) / 2))


def test_a_group_of_one_outcome_drops_its_lowest_consistency():
    inputs = {**batch_of([[(s, 2)] for s in (0.9, 0.3, 0.5, 0.4)], 2), "group_ids": torch.zeros(4, dtype=torch.long)}
    right = apply_filter("consistency", *outcome_inputs(torch.ones(4, dtype=torch.bool), **inputs), keep=2)
    assert right.keep.tolist() == [True, False, True, False]  # the lowest scores 0.3 and 0.4 go
    wrong = apply_filter("consistency", *outcome_inputs(torch.zeros(4, dtype=torch.bool), **inputs), keep=2)
    assert wrong.keep.tolist() == [False, True, False, True]  # c = -(2s - 1): the highest scores 0.9 and 0.5 go
    advantages = advantages_on_kept("grpo", right.keep, AdvantageInputs(torch.ones(4), inputs["group_ids"], inputs["mask"]))
    advantages = advantages.advantages
    assert advantages.eq(0).all()  # equal outcomes among the kept: GRPO's 0


def test_keep_equal_to_the_group_size_changes_nothing():
    inputs = group_inputs()
    result = apply_filter("consistency", *outcome_inputs(CORRECT, **inputs), keep=8)
    assert result.keep.all()
    assert "filter/consistency_dropped" not in result.metrics(CORRECT)  # no NaN mean over nothing
    rewards = torch.where(CORRECT, 1.0, -1.0)
    for method in ("grpo", "prpo", "pure"):
        kept = advantages_on_kept(method, result.keep, AdvantageInputs(outcome_rewards=rewards, **inputs))
        torch.testing.assert_close(kept.advantages,
                                   compute_advantages(method, outcome_rewards=rewards, **inputs))


def test_ties_drop_the_earlier_rollout_of_the_group():
    # Two groups interleaved in the batch, every score 0.5 (c = 0): n+ = n- = 2, r = 2, r+ = round(2 / 2) = 1,
    # so each group drops its first correct and its first wrong rollout, in batch order.
    group_ids = torch.tensor([7, 3, 7, 3, 7, 3, 7, 3])
    correct = torch.tensor([1, 0, 0, 1, 1, 1, 0, 0]).bool()
    inputs = {**batch_of([[(0.5, 3)]] * 8, 3), "group_ids": group_ids}
    keep = apply_filter("consistency", *outcome_inputs(correct, **inputs), keep=2).keep
    # group 7: rows 0 (correct), 2 (wrong), 4 (correct), 6 (wrong) -> drop 0 and 2
    # group 3: rows 1 (wrong), 3 (correct), 5 (correct), 7 (wrong) -> drop 3 and 1
    assert keep.tolist() == [False, False, False, False, True, True, True, True]


def test_step_penalty_applies_outside_the_step_range():
    # Both correct, keep 1: the one-step response has the higher score (0.9 against 0.8) but J = 1 < 2.
    inputs = {**batch_of([[(0.9, 4)], [(0.8, 2), (0.8, 2)]], 4), "group_ids": torch.zeros(2, dtype=torch.long)}
    correct = torch.ones(2, dtype=torch.bool)
    assert apply_filter("consistency", *outcome_inputs(correct, **inputs), keep=1).keep.tolist() == [True, False]
    result = apply_filter("consistency", *outcome_inputs(correct, **inputs), keep=1, step_penalty=0.5)
    assert result.keep.tolist() == [False, True]  # c = 0.8 - 0.5 = 0.3 < 0.6
    torch.testing.assert_close(result.scores["consistency"], torch.tensor([0.3, 0.6]))


def test_bad_inputs_and_options_are_refused():
    inputs = group_inputs()
    for keep in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="keep must be an integer >= 1"):
            apply_filter("consistency", *outcome_inputs(CORRECT, **inputs), keep=keep)
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['kep'\]"):
        apply_filter("consistency", *outcome_inputs(CORRECT, **inputs), kep=4)
    with pytest.raises(ValueError, match="needs token_scores"):
        apply_filter("consistency", *outcome_inputs(CORRECT, inputs["group_ids"], inputs["mask"]))
    bad = inputs["token_scores"].clone()
    bad[2, 1] = math.nan
    with pytest.raises(ValueError, match=r"token_scores\[2, 1\] = nan"):
        apply_filter("consistency", *outcome_inputs(CORRECT, **{**inputs, "token_scores": bad}))
    with pytest.raises(ValueError, match=r"takes the outcomes as a bool tensor of shape \(8,\), got torch.float32 \(8,\)"):
        apply_filter("consistency", AdvantageInputs(torch.where(CORRECT, 1.0, -1.0), **inputs), CORRECT.float())
    with pytest.raises(ValueError, match="unknown filter 'bogus'; known: consistency"):
        get_filter("bogus")


def test_registry_refuses_a_duplicate_and_presets_name_registered_filters():
    @register_filter("test_keep_all", uses_prm=False)
    def keep_all(inputs, correct, *, note: str = "x") -> FilterResult:
        return FilterResult(torch.ones_like(correct), {})

    try:
        assert get_filter("test_keep_all").options() == {"note": "x"}
        with pytest.raises(ValueError, match="already registered"):
            register_filter("test_keep_all", uses_prm=False)(keep_all)
    finally:
        FILTERS.pop("test_keep_all")
    presets = {name: entry.filter for name, entry in ADVANTAGES.items() if entry.filter is not None}
    assert presets == {"prof": "consistency", "prpo_prof": "consistency"}
    assert ADVANTAGES["prof"].fn is ADVANTAGES["grpo"].fn and ADVANTAGES["prpo_prof"].fn is ADVANTAGES["prpo"].fn
    assert all(FILTERS[name].uses_prm and ADVANTAGES[preset].uses_prm for preset, name in presets.items())


@st.composite
def filter_cases(draw):
    """Shuffled groups of 1-8 rollouts, outcomes, 1-3 segments of scores in eighths (ties are exact), keep 1-8."""
    sizes = draw(st.lists(st.integers(1, 8), min_size=1, max_size=4))
    groups = [g for g, size in enumerate(sizes) for _ in range(size)]
    order = draw(st.permutations(range(len(groups))))
    rows, correct = [], []
    for _ in groups:
        n = draw(st.integers(1, 3))
        rows.append([(draw(st.integers(0, 8)) / 8, draw(st.integers(1, 3))) for _ in range(n)])
        correct.append(draw(st.booleans()))
    return ([groups[i] for i in order], [correct[i] for i in order], [rows[i] for i in order],
            draw(st.integers(1, 8)), draw(st.sampled_from([0.0, 0.25])))


@settings(max_examples=150, deadline=None)
@given(filter_cases())
def test_vectorised_filter_matches_the_reference(case):
    groups, correct, rows, keep, penalty = case
    inputs = batch_of(rows, 9)
    result = apply_filter("consistency", *outcome_inputs(torch.tensor(correct), torch.tensor(groups), **inputs), keep=keep,
                          step_penalty=penalty)
    steps = [[score for score, _ in segments] for segments in rows]
    assert result.keep.tolist() == consistency_filter_rows(correct, groups, steps, keep, step_penalty=penalty)
    for g in set(groups):
        members = [i for i, x in enumerate(groups) if x == g]
        assert sum(result.keep[i].item() for i in members) == min(keep, len(members))


# ----------------------------------------------------------------------------- config


BASE = dict(output_dir="unused", use_cpu=True, report_to=[], num_generations=8, per_device_train_batch_size=8,
            prm={"type": "arithmetic"})


def test_config_presets_and_filter_key():
    assert PRPOConfig(method="prof", **BASE).filter_spec() == ("consistency", {})
    assert PRPOConfig(method="prpo_prof", **BASE).uses_prm()
    explicit = PRPOConfig(method="grpo", filter={"type": "consistency", "keep": 6}, **BASE)
    assert explicit.filter_spec() == ("consistency", {"keep": 6}) and explicit.uses_prm()
    assert PRPOConfig(method="grpo", **BASE).filter_spec() is None


@pytest.mark.parametrize(("spec", "key", "words"), [
    ({"type": "consistency", "keep": 0}, "filter.keep", "between 1 and num_generations=8"),
    ({"type": "consistency", "keep": 9}, "filter.keep", "got 9"),
    ({"type": "consistency", "keep": 2.5}, "filter.keep", "expected int or null, got float"),
    ({"type": "consistency", "keep": True}, "filter.keep", "expected int or null, got bool"),
    ({"keep": 4}, "filter.type", "is required"),
    ({"type": "consistensy"}, "filter.type", "did you mean 'consistency'"),
    ({"type": "consistency", "kep": 4}, "filter.kep", "did you mean 'keep'"),
])
def test_config_refuses_a_bad_filter(spec, key, words):
    with pytest.raises(ConfigError) as info:
        PRPOConfig(method="grpo", filter=spec, **BASE)
    assert info.value.key == key and words in str(info.value)


# ----------------------------------------------------------------------------- trainer


class LengthScores:
    """Segment score from its text length, in [0.1, 0.9]: varied, deterministic scores for a random model."""

    prm_id = "length"

    def score(self, problems: list[str], segments: list[list[str]]) -> list[list[float]]:
        return [[0.1 + 0.2 * (len(text) % 5) for text in row] for row in segments]


def even_length_is_correct(responses: list[str], golds: list[str]) -> list[bool]:
    return [len(response) % 2 == 0 for response in responses]


def prof_trainer(model_dir, tmp_path, **overrides) -> PRPOTrainer:
    data = Dataset.from_list([
        {"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}], "problem": f"What is {a} + {b}?",
         "answer": str(a + b), "prompt_id": f"p{a}{b}"} for a, b in ((3, 4), (12, 5))
    ])
    args = PRPOConfig(**{**dict(
        output_dir=str(tmp_path / "run"), method="prof", prm={"type": "arithmetic"}, num_generations=4,
        per_device_train_batch_size=8, max_completion_length=16, min_gap=3, max_steps=1, save_strategy="no",
        report_to=[], seed=0, activation_checkpointing=False, use_cpu=True, learning_rate=1e-3, samples_per_step=-1,
    ), **overrides})
    return PRPOTrainer(str(model_dir), args=args, train_dataset=data, prm=LengthScores(), grader=even_length_is_correct)


def test_dropped_rows_add_nothing_to_loss_gradient_or_token_count(tiny_causal_lm_dir, tmp_path):
    """Loss and gradient of a batch with row 1 dropped equal those of the batch without row 1 (KL on too)."""
    trainer = prof_trainer(tiny_causal_lm_dir, tmp_path, beta=0.05)
    model = trainer.model
    torch.manual_seed(0)
    completion_mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    batch = {
        "prompt_ids": torch.randint(0, 1000, (3, 4)), "prompt_mask": torch.ones(3, 4, dtype=torch.long),
        "completion_ids": torch.randint(0, 1000, (3, 5)), "completion_mask": completion_mask,
        "num_items_in_batch": completion_mask.sum(),
        "advantages": torch.randn(3, 5) * completion_mask + torch.tensor([[0.0], [5.0], [0.0]]),  # row 1: large
        "ref_per_token_logps": -torch.rand(3, 5) * 3,
    }
    trl_surface.drop_from_loss(batch, torch.tensor([True, False, True]), trainer.accelerator.gather)
    assert batch["num_items_in_batch"].item() == 4 + 2  # the kept rows' tokens only
    assert batch["tool_mask"].tolist() == [[1] * 5, [0] * 5, [1] * 5]
    kept = {key: value[[0, 2]] if value.dim() else value for key, value in batch.items() if key != "tool_mask"}
    kept["num_items_in_batch"] = torch.tensor(6)

    def loss_and_grad(inputs) -> tuple[float, torch.Tensor]:
        model.zero_grad()
        loss = trainer.compute_loss(model, inputs)
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    loss, grad = loss_and_grad(batch)
    loss_kept, grad_kept = loss_and_grad(kept)
    assert loss == pytest.approx(loss_kept, rel=1e-5)
    assert_close_scaled(grad, grad_kept)
    assert grad.abs().sum() > 0


def test_prof_trains_one_step_on_the_kept_half(tiny_causal_lm_dir, tmp_path):
    trainer = prof_trainer(tiny_causal_lm_dir, tmp_path)
    trainer.train()
    run = tmp_path / "run"
    step = next(row for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "reward" in row)
    assert step["filter/kept_frac"] == 0.5  # keep G / 2 = 2 of 4 per prompt
    assert step["filter/kept_correct"] + step["filter/kept_wrong"] == 4
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8
    ids = [s["prompt_id"] for s in samples]
    steps = [[seg["prm_score"] for seg in s["segments"]] for s in samples]
    expected = consistency_filter_rows([s["correct"] for s in samples], ids, steps, keep=2)
    assert [s["kept"] for s in samples] == expected
    for pid in set(ids):
        kept = [s for s in samples if s["prompt_id"] == pid and s["kept"]]
        rewards = torch.tensor([s["reward"] for s in kept])
        grpo = ((rewards - rewards.mean()) / (rewards.std() + 1e-6)).tolist()  # GRPO over the 2 kept only
        for sample, a in zip(kept, grpo):
            assert all(seg["advantage_mean"] == pytest.approx(a, abs=1e-5) for seg in sample["segments"])
    dropped = [s for s in samples if not s["kept"]]
    assert len(dropped) == 4 and all(seg["advantage_mean"] == 0.0 for s in dropped for seg in s["segments"])


def test_report_marks_dropped_samples():
    from prpo.training.report import sample_html

    sample = {"step": 1, "prompt_id": "p", "correct": True, "reward": 1.0, "length": 2, "answer": "7", "problem": "q",
              "segments": [{"text": "ab", "tokens": 2, "prm_score": 0.4, "advantage_mean": 0.0}]}
    assert "dropped by the filter" in sample_html({**sample, "kept": False})
    assert 'class="sample correct dropped"' in sample_html({**sample, "kept": False})
    assert "dropped" not in sample_html({**sample, "kept": True}) and "dropped" not in sample_html(sample)
