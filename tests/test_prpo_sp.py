"""Sign-preserving PRPO (docs/algorithm.md s.9): every property the section lists, hand values, and the per-row reference.

``A[i, t] = beta_i + clip(Z[i, t], -|beta_i|, |beta_i|)``; in a group whose outcomes are all equal,
``A = uniform_group_scale * Z``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_advantages import _batch, _groups

from prpo.advantages import AdvantageInputs, compute_advantages, outcome_location, run_advantages
from prpo.reference import prpo_sp_advantages_rows

SIGMA0 = math.sqrt(1 / 24)


def z_of(score: float) -> float:
    return (score - 0.5) / SIGMA0


@settings(max_examples=80, deadline=None)
@given(_groups(), st.sampled_from([0.0, 1.0, 0.5]))
def test_matches_the_per_row_reference(case, scale):
    batch, seg_scores = case
    adv = compute_advantages("prpo_sp", uniform_group_scale=scale, **batch)
    rows = prpo_sp_advantages_rows(batch["outcome_rewards"].tolist(), batch["group_ids"].tolist(), seg_scores,
                                   [row[row >= 0].tolist() for row in batch["segment_ids"]], uniform_group_scale=scale)
    for i, row in enumerate(rows):
        assert adv[i, : len(row)].tolist() == pytest.approx(row, abs=1e-4)
        assert adv[i, len(row):].eq(0).all()  # padding


@settings(max_examples=80, deadline=None)
@given(_groups())
def test_the_outcome_sets_the_sign_and_bounds_the_size(case):
    batch, _ = case
    adv = compute_advantages("prpo_sp", **batch).double()
    beta = outcome_location(batch["outcome_rewards"], batch["group_ids"]).double()[:, None].expand_as(adv)
    valid = batch["mask"]
    tol = 1e-6
    assert (adv * beta)[valid].min().item() >= -tol  # A * beta >= 0
    assert ((adv.abs() - 2 * beta.abs())[valid] <= tol).all()  # |A| <= 2 |beta|
    assert adv[valid & (beta == 0)].eq(0).all()  # lambda = 0: A = 0 where beta = 0
    assert adv[~valid].eq(0).all()


@settings(max_examples=60, deadline=None)
@given(_groups())
def test_equals_prpo_where_the_clip_does_not_bind(case):
    batch, _ = case
    beta = outcome_location(batch["outcome_rewards"], batch["group_ids"])
    # scores with |Z| <= |beta| on every token: Z = beta * u with |u| <= 1, i.e. s = 0.5 + sigma0 * beta * u
    u = torch.rand(batch["mask"].shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    scores = (0.5 + SIGMA0 * beta[:, None] * u * 0.999).clamp(0, 1)
    inside = {**batch, "token_scores": torch.where(batch["mask"], scores, 0.0)}
    mixed = beta != 0  # all-same groups differ by design (A = 0 there, PRPO's process-only Z)
    sp, prpo = compute_advantages("prpo_sp", **inside), compute_advantages("prpo", **inside)
    torch.testing.assert_close(sp[mixed], prpo[mixed], atol=1e-5, rtol=1e-5)


def one_group(scores_per_row: list[list[float]], lengths: list[list[int]], rewards: list[float]) -> dict:
    ids, tokens = _batch(scores_per_row, lengths, width=max(sum(row) for row in lengths))
    return dict(outcome_rewards=torch.tensor(rewards), group_ids=torch.zeros(len(rewards), dtype=torch.long),
                mask=ids >= 0, token_scores=tokens, segment_ids=ids)


def test_praise_buys_a_wrong_response_nothing_and_fault_costs_a_correct_one_nothing():
    # G = 4, one correct: beta = 1 - (-0.5) = 1.5 for the correct one, -1 - (-0.5) = -0.5 for the wrong ones.
    batch = one_group([[0.9, 0.9], [0.9, 0.1], [0.5], [0.1]], [[2, 2], [2, 2], [3], [3]], [-1.0, 1.0, -1.0, -1.0])
    adv = compute_advantages("prpo_sp", **batch)
    assert adv[0, :4].tolist() == [0.0] * 4  # wrong, praised everywhere (Z = +1.96): -0.5 + 0.5 = 0
    prpo = compute_advantages("prpo", **batch)
    assert prpo[0, :4].min().item() > 1.4  # PRPO pushes it up: -0.5 + 1.96
    # correct, faulted in its second segment (Z = -1.96): 1.5 - 1.5 = 0 there, 1.5 + 1.5 = 3 where praised
    assert adv[1, :4].tolist() == pytest.approx([3.0, 3.0, 0.0, 0.0])
    assert adv[2, :3].tolist() == pytest.approx([-0.5] * 3)  # neutral (Z = 0): beta alone
    assert adv[3, :3].tolist() == pytest.approx([-1.0] * 3)  # wrong, faulted: 2 beta


def test_answer_segments_are_balanced():
    # G = 8, 3 correct: beta = +1.25 (correct), -0.75 (wrong). Every response ends with an answer segment scored
    # 0.9 when right and 0.1 when wrong (|Z| = 1.96 >= |beta|: the clip binds): there A = 2 beta, summing to
    # 3 * 2.5 + 5 * (-1.5) = 0. PRPO's fixed prior adds 1.96 (n+ - n-) = -3.92 against answering.
    correct = [True] * 3 + [False] * 5
    scores = [[0.6, 0.9 if ok else 0.1] for ok in correct]
    batch = one_group(scores, [[3, 2]] * 8, [1.0 if ok else -1.0 for ok in correct])
    answer = slice(3, 5)
    sp = compute_advantages("prpo_sp", **batch)[:, answer]
    assert sp[:3].flatten().tolist() == pytest.approx([2.5] * 6) and sp[3:].flatten().tolist() == pytest.approx([-1.5] * 10)
    assert sp[:, 0].double().sum().item() == pytest.approx(0.0, abs=1e-6)
    prpo = compute_advantages("prpo", **batch)[:, answer]
    assert prpo[:, 0].double().sum().item() == pytest.approx(z_of(0.9) * (3 - 5), rel=1e-5)


@pytest.mark.parametrize("scale", [0.0, 1.0, 0.25])
def test_all_same_groups_get_lambda_times_z(scale):
    # group 0: all wrong (beta = 0 everywhere); group 1: mixed
    ids, tokens = _batch([[0.9], [0.2, 0.7], [0.8], [0.3]], [[2], [1, 1], [2], [2]], width=2)
    batch = dict(outcome_rewards=torch.tensor([-1.0, -1.0, 1.0, -1.0]), group_ids=torch.tensor([0, 0, 1, 1]),
                 mask=ids >= 0, token_scores=tokens, segment_ids=ids)
    adv = compute_advantages("prpo_sp", uniform_group_scale=scale, **batch)
    assert adv[0].tolist() == pytest.approx([scale * z_of(0.9)] * 2, abs=1e-5)
    assert adv[1].tolist() == pytest.approx([scale * z_of(0.2), scale * z_of(0.7)], abs=1e-5)
    assert adv[2].tolist() == pytest.approx([2.0, 2.0])  # beta = 1, Z = 1.47 clipped to 1
    assert adv[3].tolist() == pytest.approx([-1.0 - 0.2 / SIGMA0 * 1] * 2, abs=1e-5)  # Z = -0.98, inside the bound


def test_a_zero_beta_in_a_mixed_group_gets_nothing():
    # rewards 1, 0, -1: the middle one's beta is 0 although the group's outcomes differ; lambda does not apply
    batch = one_group([[0.9], [0.9], [0.9]], [[2], [2], [2]], [1.0, 0.0, -1.0])
    adv = compute_advantages("prpo_sp", uniform_group_scale=1.0, **batch)
    assert adv[1].tolist() == [0.0, 0.0]
    assert adv[0].tolist() == pytest.approx([2.0, 2.0]) and adv[2].tolist() == [0.0, 0.0]


def test_clip_share_counts_the_tokens_the_outcome_overruled():
    batch = one_group([[0.9, 0.9], [0.9, 0.1], [0.5], [0.1]], [[2, 2], [2, 2], [3], [3]], [-1.0, 1.0, -1.0, -1.0])
    metrics = run_advantages("prpo_sp", AdvantageInputs(**batch)).metrics
    # |beta| = 0.5, 1.5, 0.5, 0.5; |Z| = 1.96 except row 2 (0): the clip binds on rows 0, 1 (4 + 4) and 3 (3)
    assert metrics["clip_share"] == pytest.approx(11 / 14)
    assert metrics["beta_zero_token_share"] == 0.0
    # sign Z = sign beta on row 1's first segment (2) and row 3 (3); row 2 has Z = 0: 5 of 14
    assert metrics["sign_agreement"] == pytest.approx(5 / 14)


def test_selectable_from_yaml_python_and_the_bench(tmp_path):
    from prpo.bench.runner import METHODS
    from prpo.training.config import ConfigError, PRPOConfig
    from prpo.training.run_config import build_config

    run = build_config({"model": {"model_name_or_path": "m"}, "task": {"name": "arithmetic"}, "method": "prpo_sp",
                        "prm": {"type": "arithmetic"}, "advantage_options": {"uniform_group_scale": 1.0},
                        "output_dir": str(tmp_path), "use_cpu": True})
    assert run.training.advantage_kwargs()["uniform_group_scale"] == 1.0
    with pytest.raises(ConfigError, match="advantage_options.lambda"):
        PRPOConfig(output_dir=str(tmp_path), method="prpo_sp", prm={"type": "arithmetic"}, use_cpu=True,
                   advantage_options={"lambda": 1.0})
    assert "prpo_sp" in METHODS


def test_the_uniform_preset_is_prpo_sp_with_lambda_one():
    from prpo.advantages import get_method

    ids, tokens = _batch([[0.9], [0.2, 0.7], [0.8], [0.3]], [[2], [1, 1], [2], [2]], width=2)
    batch = dict(outcome_rewards=torch.tensor([-1.0, -1.0, 1.0, -1.0]), group_ids=torch.tensor([0, 0, 1, 1]),
                 mask=ids >= 0, token_scores=tokens, segment_ids=ids)
    torch.testing.assert_close(compute_advantages("prpo_sp_uniform", **batch),
                               compute_advantages("prpo_sp", uniform_group_scale=1.0, **batch))
    assert "uniform_group_scale" not in get_method("prpo_sp_uniform").options()
    with pytest.raises(ValueError, match=r"'prpo_sp_uniform' does not take option\(s\) \['uniform_group_scale'\]"):
        compute_advantages("prpo_sp_uniform", uniform_group_scale=0.0, **batch)
