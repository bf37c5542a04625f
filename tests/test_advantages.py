"""Advantages: the paper's worked example, hand-computed baselines, and properties of every method."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prpo.advantages import (
    ADVANTAGES,
    AdvantageInputs,
    compute_advantages,
    get_method,
    outcome_location,
    outcome_rewards,
    register_advantage,
    run_advantages,
)
from prpo.reference import prpo_advantages_rows, pure_advantages_rows
from prpo.segmentation import scores_to_tokens

SIGMA0 = math.sqrt(1 / 24)


def _batch(segment_scores, segment_lengths, width):
    """Segment ids and token scores for rows given per-segment scores and token counts."""
    ids = torch.full((len(segment_scores), width), -1)
    for row, lengths in enumerate(segment_lengths):
        ids[row, : sum(lengths)] = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    return ids, scores_to_tokens(segment_scores, ids)


def test_worked_example_group_of_eight_two_correct():
    rewards = torch.tensor([1.0, 1.0, -1, -1, -1, -1, -1, -1])
    scores = [[0.9, 0.3, 0.95], [0.5, 0.5, 0.5]] + [[0.8, 0.1]] * 6
    ids, tokens = _batch(scores, [[2, 3, 1]] * 2 + [[4, 2]] * 6, width=7)
    adv = compute_advantages(
        "prpo", outcome_rewards=rewards, group_ids=torch.full((8,), 7), mask=ids >= 0, token_scores=tokens
    )
    # beta = R - mean R = 1 - (-0.5) = 1.5 for correct, -0.5 for wrong; Z = (s - 0.5) / sqrt(1/24).
    assert adv[0, [0, 2, 5]].tolist() == pytest.approx([3.46, 0.52, 3.70], abs=5e-3)
    assert adv[2, [0, 4]].tolist() == pytest.approx([0.97, -2.46], abs=5e-3)
    assert adv[1, :6].tolist() == pytest.approx([1.5] * 6, abs=1e-5)
    assert adv[0, 6].item() == 0.0 and adv[2, 6].item() == 0.0


def test_grpo_and_dr_grpo_hand_values():
    rewards = torch.tensor([1.0, -1.0, 0.5, 1.0, -1.0, 2.0])
    groups = torch.tensor([3, 3, 9, 3, 3, 9])  # interleaved groups, found by id
    mask = torch.ones(6, 2, dtype=torch.bool)
    mask[5, 1] = False
    grpo = compute_advantages("grpo", outcome_rewards=rewards, group_ids=groups, mask=mask)
    # Group 3: mean 0, sample std sqrt(4/3); group 9: mean 1.25, sample std sqrt(1.125).
    s3, s9 = math.sqrt(4 / 3), math.sqrt(1.125)
    expected = [1 / s3, -1 / s3, -0.75 / s9, 1 / s3, -1 / s3, 0.75 / s9]
    assert grpo[:, 0].tolist() == pytest.approx(expected, rel=1e-5)
    assert grpo[5, 1].item() == 0.0
    dr = compute_advantages("dr_grpo", outcome_rewards=rewards, group_ids=groups, mask=mask)
    assert dr[:, 0].tolist() == pytest.approx([1, -1, -0.75, 1, -1, 0.75])


def test_prm_avg_hand_values():
    ids, tokens = _batch([[1.0, 0.0], [0.5]], [[1, 3], [2]], width=4)
    adv = compute_advantages(
        "prm_avg", outcome_rewards=torch.tensor([1.0, 1.0]), group_ids=torch.tensor([0, 0]),
        mask=ids >= 0, token_scores=tokens,
    )
    # R' = (1 + 0.25, 1 + 0.5) -> mean 1.375, sample std 0.1768 -> -/+ 0.7071.
    assert adv[:, 0].tolist() == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2)], rel=1e-4)
    assert adv[1, 2:].tolist() == [0.0, 0.0]


def test_prpo_group_normalization_and_outcome_scale():
    ids, tokens = _batch([[1.0, 0.0], [0.5]], [[1, 3], [2]], width=4)
    kwargs = dict(outcome_rewards=torch.tensor([1.0, -1.0]), group_ids=torch.tensor([4, 4]), mask=ids >= 0, token_scores=tokens)
    adv = compute_advantages("prpo", normalization="group", outcome_scale="group", **kwargs)
    # Tokens of the group: 1, 0, 0, 0, .5, .5 -> mean 1/3, population std sqrt(1/9 + ... ) = 0.3727.
    values = torch.tensor([1, 0, 0, 0, 0.5, 0.5])
    mean, std = values.mean(), values.std(unbiased=False)
    beta = 1 / math.sqrt(2)  # (R - mean) / sample std = 1 / sqrt(2)
    expected0 = [((1 - mean) / std + beta).item()] + [((0 - mean) / std + beta).item()] * 3
    assert adv[0].tolist() == pytest.approx(expected0, rel=1e-4)
    assert adv[1].tolist() == pytest.approx([((0.5 - mean) / std - beta).item()] * 2 + [0, 0], rel=1e-4)


def test_pure_hand_values():
    # Group of two. Row 0: steps of 2 + 2 tokens, s = (.75, .75) -> r = (.5, .5), w = (.5, .5), x = (.25, .25), X = .5.
    # Row 1: steps of 1 + 2 tokens, s = (.25, .25) -> x = (-.25, -.25), X = -.5.
    ids, tokens = _batch([[0.75, 0.75], [0.25, 0.25]], [[2, 2], [1, 2]], width=4)
    kwargs = dict(outcome_rewards=torch.tensor([1.0, -1.0]), group_ids=torch.tensor([5, 5]), mask=ids >= 0,
                  token_scores=tokens, segment_ids=ids)
    adv = compute_advantages("pure", **kwargs)
    # Token baselines: b0 = X1 / L1 = -.5 / 3 = -1/6, b1 = X0 / L0 = .5 / 4 = 1/8.
    # Row 0 step ends: .25 + 2/6 = 7/12 at t = 1 and t = 3. Row 1: -.25 - 1/8 = -3/8 at t = 0, -.25 - 2/8 = -1/2 at t = 2.
    # Outcome v = (0, -1); leave-one-out: u = (0 - (-1), -1 - 0) = (1, -1), at the last token.
    # Row 0 rewards (0, 7/12, 0, 7/12 + 1) -> returns (13/6, 13/6, 19/12, 19/12).
    # Row 1 rewards (-3/8, 0, -1/2 - 1) -> returns (-15/8, -3/2, -3/2), padding 0.
    assert adv[0].tolist() == pytest.approx([13 / 6, 13 / 6, 19 / 12, 19 / 12], abs=1e-6)
    assert adv[1].tolist() == pytest.approx([-15 / 8, -3 / 2, -3 / 2, 0.0], abs=1e-6)
    # Marker segments end at a separator token: advantage 0 there, except at the response's last token.
    marked = compute_advantages("pure", separator_ends=True, **kwargs)
    assert marked[0].tolist() == pytest.approx([13 / 6, 0.0, 19 / 12, 19 / 12], abs=1e-6)
    assert marked[1].tolist() == pytest.approx([0.0, -3 / 2, -3 / 2, 0.0], abs=1e-6)


def test_pure_min_form_weights_and_singleton_group():
    # One response alone in its group: no baselines. Steps of 2 tokens with s = (1, 0) -> r = (1, -1),
    # w = softmax(-r / 0.1) = (1 / (1 + e^20), e^20 / (1 + e^20)): the worse step dominates (soft minimum).
    ids, tokens = _batch([[1.0, 0.0]], [[2, 2]], width=4)
    base = dict(group_ids=torch.tensor([0]), mask=ids >= 0, token_scores=tokens, segment_ids=ids)
    w1 = 1 / (1 + math.exp(20))
    x1, x2 = w1 * 1.0, (1 - w1) * -1.0
    correct = compute_advantages("pure", outcome_rewards=torch.tensor([1.0]), **base)  # v = 0
    assert correct[0].tolist() == pytest.approx([x1 + x2, x1 + x2, x2, x2], abs=1e-6)
    wrong = compute_advantages("pure", outcome_rewards=torch.tensor([-1.0]), **base)  # v = -1 at the last token
    assert wrong[0].tolist() == pytest.approx([x1 + x2 - 1, x1 + x2 - 1, x2 - 1, x2 - 1], abs=1e-6)
    # R in {0, 1}: the same outcome v once correct_reward / wrong_reward say so.
    again = compute_advantages("pure", outcome_rewards=torch.tensor([0.0]), correct_reward=1.0, wrong_reward=0.0, **base)
    torch.testing.assert_close(again, wrong)


def test_outcome_rewards_with_overlong_penalty():
    rewards = outcome_rewards(torch.tensor([True, False, True]), torch.tensor([100, 1500, 2000]), overlong_len=2048)
    assert rewards.tolist() == pytest.approx([1.0, -1 - 1500 / 2048, 1 - 2000 / 2048])
    assert outcome_rewards(torch.tensor([1, 0]), torch.tensor([5, 5]), correct_reward=2, wrong_reward=0).tolist() == [2, 0]


def test_bad_inputs_give_clear_errors():
    mask = torch.ones(2, 3, dtype=torch.bool)
    base = dict(outcome_rewards=torch.tensor([1.0, -1.0]), group_ids=torch.tensor([0, 0]), mask=mask)
    with pytest.raises(ValueError, match="unknown advantage method 'ppo'"):
        compute_advantages("ppo", **base)
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['mu0'\]"):
        compute_advantages("grpo", mu0=0.3, **base)
    with pytest.raises(ValueError, match="needs token_scores"):
        compute_advantages("prpo", **base)
    with pytest.raises(ValueError, match=r"token_scores\[0, 0\] = 1.5"):
        compute_advantages("prpo", token_scores=torch.full((2, 3), 1.5), **base)
    with pytest.raises(ValueError, match="= nan"):
        compute_advantages("prpo", token_scores=torch.full((2, 3), float("nan")), **base)
    with pytest.raises(ValueError, match="normalization"):
        compute_advantages("prpo", token_scores=torch.full((2, 3), 0.5), normalization="batch", **base)
    with pytest.raises(ValueError, match="integer"):
        compute_advantages("grpo", outcome_rewards=base["outcome_rewards"], group_ids=torch.tensor([0.0, 1.0]), mask=mask)
    with pytest.raises(ValueError, match="no valid tokens"):
        compute_advantages("prm_avg", token_scores=torch.full((2, 3), 0.5), **{**base, "mask": torch.tensor([[1, 1, 0], [0, 0, 0]])})


def test_users_can_register_a_method():
    @register_advantage("test_constant", uses_prm=False)
    def constant(inputs: AdvantageInputs, *, value: float = 1.0) -> torch.Tensor:
        return torch.where(inputs.mask, value, 0.0)

    try:
        adv = compute_advantages(
            "test_constant", outcome_rewards=torch.zeros(1), group_ids=torch.zeros(1, dtype=torch.long),
            mask=torch.tensor([[1, 0]]), value=2.5,
        )
        assert adv.tolist() == [[2.5, 0.0]]
        assert get_method("test_constant").options() == {"value": 1.0}
        inputs = AdvantageInputs(torch.zeros(1), torch.zeros(1, dtype=torch.long), torch.tensor([[True, False]]))
        assert run_advantages("test_constant", inputs).metrics == {}  # a bare tensor: no diagnostics
        with pytest.raises(ValueError, match="already registered"):
            register_advantage("test_constant", uses_prm=False)(constant)
    finally:
        ADVANTAGES.pop("test_constant")


# ----------------------------------------------------------------------------- properties


@st.composite
def _groups(draw, min_size=1):
    """A shuffled batch of groups with random sizes, rewards, lengths and segment scores."""
    n_groups = draw(st.integers(1, 4))
    sizes = draw(st.lists(st.integers(min_size, 5), min_size=n_groups, max_size=n_groups))
    group_ids = torch.tensor([g * 10 + 3 for g, size in enumerate(sizes) for _ in range(size)])
    batch = len(group_ids)
    rewards = torch.tensor(draw(st.lists(st.sampled_from([-1.0, 1.0, 0.0, 0.5]), min_size=batch, max_size=batch)))
    width = 12
    seg_lengths, seg_scores = [], []
    for _ in range(batch):
        lengths = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
        seg_lengths.append(lengths)
        seg_scores.append(draw(st.lists(st.floats(0, 1), min_size=len(lengths), max_size=len(lengths))))
    ids, tokens = _batch(seg_scores, seg_lengths, width)
    order = torch.tensor(draw(st.permutations(range(batch))))
    return dict(outcome_rewards=rewards[order], group_ids=group_ids[order], mask=ids[order] >= 0,
                token_scores=tokens[order], segment_ids=ids[order]), [seg_scores[i] for i in order]


def _call(method, batch):
    extra = {} if get_method(method).uses_prm else {"token_scores": None, "segment_ids": None}
    return compute_advantages(method, **{**batch, **extra})


@settings(max_examples=60, deadline=None)
@given(_groups(), st.data())
def test_permuting_rows_permutes_advantages(case, data):
    batch, _ = case
    perm = torch.tensor(data.draw(st.permutations(range(len(batch["group_ids"])))))
    for method in ["grpo", "dr_grpo", "prpo", "process_only", "prm_avg", "pure"]:
        full = _call(method, batch)
        permuted = _call(method, {key: value[perm] for key, value in batch.items()})
        torch.testing.assert_close(permuted, full[perm], atol=1e-5, rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(_groups())
def test_padding_is_zero_and_outputs_are_finite(case):
    batch, _ = case
    for method in ADVANTAGES:
        adv = _call(method, batch)
        assert torch.isfinite(adv).all(), method
        assert adv[~batch["mask"]].eq(0).all(), method


@settings(max_examples=60, deadline=None)
@given(_groups())
def test_beta_sums_to_zero_in_every_group_and_prpo_matches_reference(case):
    batch, seg_scores = case
    beta = outcome_location(batch["outcome_rewards"], batch["group_ids"])
    for group in batch["group_ids"].unique():
        assert beta[batch["group_ids"] == group].sum().item() == pytest.approx(0.0, abs=1e-5)
    adv = _call("prpo", batch)
    rows = prpo_advantages_rows(
        batch["outcome_rewards"].tolist(), batch["group_ids"].tolist(), seg_scores,
        [row[row >= 0].tolist() for row in batch["segment_ids"]],
    )
    for i, row in enumerate(rows):
        assert adv[i, : len(row)].tolist() == pytest.approx(row, abs=1e-4)


@settings(max_examples=60, deadline=None)
@given(_groups())
def test_prpo_with_neutral_scores_equals_dr_grpo(case):
    batch, _ = case
    neutral = {**batch, "token_scores": torch.where(batch["mask"], 0.5, 0.0)}
    torch.testing.assert_close(_call("prpo", neutral), _call("dr_grpo", batch))
    assert _call("process_only", neutral).eq(0).all()


@pytest.mark.parametrize("method", ["grpo", "dr_grpo", "prpo", "process_only", "prm_avg", "pure"])
def test_singleton_and_equal_reward_groups_are_finite(method):
    ids, tokens = _batch([[0.2], [0.9, 0.4], [0.6], [0.3]], [[3], [1, 2], [2], [3]], width=3)
    batch = dict(outcome_rewards=torch.tensor([1.0, -1.0, -1.0, -1.0]), group_ids=torch.tensor([0, 1, 1, 1]),
                 mask=ids >= 0, token_scores=tokens, segment_ids=ids)
    adv = _call(method, batch)
    assert torch.isfinite(adv).all()
    if method in {"grpo", "dr_grpo"}:
        assert adv.eq(0).all()


def test_garbage_scores_on_padding_still_give_exact_zeros():
    ids = torch.tensor([[0, 0, -1], [0, 1, 1]])
    scores = torch.tensor([[0.7, 0.7, float("nan")], [0.2, 0.9, 0.9]])
    adv = compute_advantages("prpo", outcome_rewards=torch.tensor([1.0, -1.0]), group_ids=torch.tensor([0, 0]),
                             mask=ids >= 0, token_scores=scores, segment_ids=ids)
    assert adv[0, 2].item() == 0.0 and torch.isfinite(adv).all()


@settings(max_examples=60, deadline=None)
@given(_groups(), st.booleans())
def test_pure_matches_reference(case, separator_ends):
    batch, seg_scores = case
    adv = compute_advantages("pure", separator_ends=separator_ends, **batch)
    rows = pure_advantages_rows(
        batch["outcome_rewards"].tolist(), batch["group_ids"].tolist(), seg_scores,
        [row[row >= 0].tolist() for row in batch["segment_ids"]], separator_ends=separator_ends,
    )
    for i, row in enumerate(rows):
        assert adv[i, : len(row)].tolist() == pytest.approx(row, abs=1e-4)
