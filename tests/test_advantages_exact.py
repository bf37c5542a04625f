"""Equal values give exactly 0: group statistics at the rounding level, for every registered method."""

from __future__ import annotations

import pytest
import torch

from prpo.advantages import ADVANTAGES, compute_advantages, group_deviation, outcome_location, process_advantage
from prpo.reference import prpo_advantages_rows

# Not exact in binary; the last is a reward with the paper's overlong penalty (L = 1000, L_pen = 2048).
VALUES = [0.7, 1 / 3, -1 - 1000 / 2048]


def _equal_group(value: float, score: float, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Groups of 8 and 7 responses (interleaved ids), all with equal reward and equal token scores."""
    lengths = [7, 3, 5, 7, 1, 6, 7, 2, 7, 4, 7, 5, 3, 7, 6]
    mask = torch.arange(7)[None, :] < torch.tensor(lengths)[:, None]
    segments = torch.where(mask, torch.arange(7)[None, :] // 3, -1)  # 1 to 3 segments of 3 tokens
    scores = torch.where(mask, torch.tensor(score, dtype=dtype), torch.tensor(float("nan"), dtype=dtype))
    return dict(outcome_rewards=torch.full((15,), value, dtype=dtype), group_ids=torch.tensor([5, 2] * 7 + [5]),
                mask=mask, token_scores=scores, segment_ids=segments)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", VALUES)
def test_group_statistics_of_equal_values_are_exact(value, dtype):
    rewards = torch.full((15,), value, dtype=dtype)
    deviation, std = group_deviation(rewards, torch.tensor([0, 1] * 7 + [0]), unbiased=True)
    assert deviation.eq(0).all() and std.eq(0).all()
    # The old float32 path: mean(0.7f x 8) is one rounding step away, so R - mean = 6e-8 and GRPO's A = 0.056.
    for scale in ("none", "group"):
        assert outcome_location(rewards[:8], torch.zeros(8, dtype=torch.long), scale=scale).eq(0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("score", VALUES[:2])
def test_group_normalised_z_of_equal_scores_is_exact(score, dtype):
    # The case: one response of 7 tokens all scored 0.7 gave Z = 0.0563 on every token.
    mask = torch.ones(1, 7, dtype=torch.bool)
    z = process_advantage(torch.full((1, 7), score, dtype=dtype), mask, torch.tensor([3]), normalization="group")
    assert z.eq(0).all() and z.dtype == torch.float32


def _options(method: str) -> list[dict[str, object]]:
    """Every value of the options that pick a group statistic (normalisation, outcome scale)."""
    known = ADVANTAGES[method].options()
    grid = [{}]
    if "normalization" in known:
        grid = [{"normalization": n} for n in ("fixed_prior", "group")]
    if "outcome_scale" in known:
        grid = [{**g, "outcome_scale": s} for g in grid for s in ("none", "group")]
    return grid


# Groups whose rewards and token scores are all equal: every method that centres on the group gives 0
# (the fixed prior centres on mu0 = 0.5, so its scores are 0.5). PURE adds returns-to-go to a
# leave-one-out baseline; for it, identical responses have a total return equal to the baseline.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("method", sorted(ADVANTAGES))
def test_every_method_gives_exact_zero_on_equal_groups(method, value, dtype):
    entry = ADVANTAGES[method]
    batch = _equal_group(value, 0.5, dtype)
    for options in _options(method):
        group_scores = (0.5, 0.7, 1 / 3) if options.get("normalization") == "group" else (0.5,)
        for score in group_scores:
            inputs = {**batch, "token_scores": torch.where(batch["mask"], score, batch["token_scores"])}
            if not entry.uses_prm:
                inputs = {**inputs, "token_scores": None, "segment_ids": None}
            if method == "pure":
                full = [0] * 15  # 15 identical responses of 7 tokens
                same = {**inputs, **{key: inputs[key][full] for key in ("mask", "segment_ids", "token_scores")}}
                adv = compute_advantages(method, **same, **options)
                assert adv[:, 0].abs().max().item() < 1e-6, (options, adv[:, 0])
                continue
            adv = compute_advantages(method, **inputs, **options)
            assert adv.eq(0).all(), (method, options, score, adv[adv != 0][:3])


def test_prm_avg_equal_scores_with_different_lengths():
    # mean_{t < L} P = 0.7 exactly for every length (float64 sums of float32 are exact).
    batch = _equal_group(-1.0, 0.7, torch.float32)
    adv = compute_advantages("prm_avg", **batch)
    assert adv.eq(0).all()


def test_genuine_small_differences_survive():
    # 0.7 and the next float32 above it: a real difference of one float32 step (6e-8) is kept.
    low = torch.tensor(0.7)
    high = torch.nextafter(low, torch.tensor(1.0))
    beta = outcome_location(torch.stack([low, high]), torch.tensor([0, 0]))
    step = (high.double() - low.double()).item()
    assert beta.tolist() == pytest.approx([-step / 2, step / 2], rel=1e-6)


def test_reference_twin_gives_exact_zero_too():
    value = -1 - 1000 / 2048
    rows = prpo_advantages_rows([value] * 3 + [0.7] * 3, [1, 1, 1, 2, 2, 2], [[0.5, 0.5]] * 6, [[0, 0, 1]] * 6)
    assert rows == [[0.0, 0.0, 0.0]] * 6
