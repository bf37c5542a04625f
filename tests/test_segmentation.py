"""Entropy and segmentation: hand-computed cases, the greedy spec, and the per-row reference."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prpo.reference import entropy_segments_row
from prpo.segmentation import (
    SEGMENTERS,
    SegmentInputs,
    entropy_segments,
    fixed_segments,
    get_segmenter,
    marker_segments,
    num_segments,
    register_segmenter,
    response_lengths,
    scores_to_tokens,
    segment_spans,
    token_entropy,
    token_offsets,
)


# ----------------------------------------------------------------------------- token_entropy


@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000, None])
def test_token_entropy_matches_categorical(temperature, chunk_size):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 101) * 4
    expected = torch.distributions.Categorical(logits=logits / temperature).entropy()
    got = token_entropy(logits, temperature=temperature, chunk_size=chunk_size)
    assert got.shape == (3, 5)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_token_entropy_hand_values_and_extremes():
    uniform = torch.zeros(1, 1, 8)
    assert token_entropy(uniform).item() == pytest.approx(math.log(8), abs=1e-6)
    # Two equal logits and the rest masked: log 2, no NaN from 0 * -inf.
    masked = torch.full((1, 1, 6), float("-inf"))
    masked[..., 1] = masked[..., 4] = 3.0
    assert token_entropy(masked, chunk_size=2).item() == pytest.approx(math.log(2), abs=1e-6)
    # Huge logits stay finite (logsumexp); a one-hot distribution has entropy 0.
    peaked = torch.tensor([[[1e4, 0.0, -1e4]]])
    assert token_entropy(peaked).item() == pytest.approx(0.0, abs=1e-6)
    half = token_entropy(torch.randn(2, 3, 50).to(torch.bfloat16))
    assert half.dtype == torch.float32 and torch.isfinite(half).all()


def test_token_entropy_rejects_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        token_entropy(torch.zeros(1, 1, 3), temperature=0)
    with pytest.raises(ValueError, match="chunk_size"):
        token_entropy(torch.zeros(1, 1, 3), chunk_size=0)


# ----------------------------------------------------------------------------- entropy_segments


def test_entropy_segments_hand_example():
    # L = 30, m = 5: candidates 5..25. Spikes at 12 (0.9), 14 (0.95, accepted first), 20 (0.8),
    # 8 (0.8, tie with 20 -> 8 first, but |8-14| >= 5 so both are accepted), 26 (outside [m, L-m]).
    entropy = torch.zeros(1, 32)
    entropy[0, 14], entropy[0, 12], entropy[0, 20], entropy[0, 8], entropy[0, 26] = 0.95, 0.9, 0.8, 0.8, 5.0
    mask = torch.zeros(1, 32, dtype=torch.bool)
    mask[0, :30] = True
    ids = entropy_segments(entropy, mask, k=5, min_gap=5)
    # 12 is within 5 of 14: skipped. Accepted: 14, 8, 20; then zeros (ties -> smallest t) at 25.
    expected = [0] * 8 + [1] * 6 + [2] * 6 + [3] * 5 + [4] * 5 + [-1] * 2
    assert ids[0].tolist() == expected
    assert segment_spans(ids) == [[(0, 8), (8, 14), (14, 20), (20, 25), (25, 30)]]


def test_entropy_segments_short_and_empty_rows():
    entropy = torch.rand(3, 25)
    mask = torch.zeros(3, 25, dtype=torch.bool)
    mask[0, :19] = True  # L < 2m: one segment
    mask[1, :20] = True  # L = 2m: the only candidate is t = m
    ids = entropy_segments(entropy, mask, k=5, min_gap=10)
    assert ids[0, :19].eq(0).all() and ids[0, 19:].eq(-1).all()
    assert ids[1, :10].eq(0).all() and ids[1, 10:20].eq(1).all()
    assert ids[2].eq(-1).all()
    assert num_segments(ids).tolist() == [1, 2, 0]
    assert entropy_segments(entropy, mask, k=0, min_gap=3)[1, :20].eq(0).all()


def test_entropy_segments_validates_inputs():
    with pytest.raises(ValueError, match="not right-padded"):
        entropy_segments(torch.rand(1, 4), torch.tensor([[1, 0, 1, 1]]), k=1, min_gap=1)
    with pytest.raises(ValueError, match="shape"):
        entropy_segments(torch.rand(2, 4), torch.ones(2, 5), k=1, min_gap=1)
    with pytest.raises(ValueError, match="min_gap"):
        entropy_segments(torch.rand(1, 4), torch.ones(1, 4), k=1, min_gap=0)
    with pytest.raises(ValueError, match="NaN"):
        entropy_segments(torch.full((1, 4), float("nan")), torch.ones(1, 4), k=1, min_gap=1)


@st.composite
def _batches(draw):
    batch = draw(st.integers(1, 6))
    width = draw(st.integers(1, 70))
    k = draw(st.integers(0, 7))
    min_gap = draw(st.integers(1, 12))
    # Few distinct values, so ties are common and the tie rule is exercised.
    values = draw(st.lists(st.integers(0, 6), min_size=batch * width, max_size=batch * width))
    lengths = draw(st.lists(st.integers(0, width), min_size=batch, max_size=batch))
    entropy = torch.tensor(values, dtype=torch.float32).view(batch, width) / 3
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    return entropy, mask, k, min_gap


@settings(max_examples=300, deadline=None)
@given(_batches())
def test_entropy_segments_follow_the_spec(case):
    entropy, mask, k, min_gap = case
    ids = entropy_segments(entropy, mask, k=k, min_gap=min_gap)
    for row in range(entropy.shape[0]):
        length = int(mask[row].sum())
        row_ids = ids[row].tolist()
        # Same as the line-by-line reference, and -1 exactly on padding.
        assert row_ids[:length] == entropy_segments_row(entropy[row].tolist(), length, k, min_gap)
        assert all(s == -1 for s in row_ids[length:])
        spans = segment_spans(ids[row : row + 1])[0]
        assert len(spans) <= k + 1
        assert sum(end - start for start, end in spans) == length
        if length >= min_gap:
            assert all(end - start >= min_gap for start, end in spans)
        # Greedy: every skipped candidate conflicts with an accepted boundary of higher rank,
        # or k boundaries of higher rank were already accepted.
        accepted = [start for start, _ in spans[1:]]
        rank = lambda t: (-entropy[row, t].item(), t)  # noqa: E731
        for t in range(min_gap, length - min_gap + 1):
            if t in accepted:
                continue
            before = [b for b in accepted if rank(b) < rank(t)]
            assert len(before) == k or any(abs(t - b) < min_gap for b in before)


# ----------------------------------------------------------------------------- other segmenters


def test_marker_segments_split_after_each_marker():
    pieces = [["Step", " 1", ".\n\n", "Step", " 2", "\n", "\n", "Answer", ":", " 3", "\n\n"], ["one", " step"]]
    texts, offsets = token_offsets(pieces)
    assert texts[0] == "Step 1.\n\nStep 2\n\nAnswer: 3\n\n"
    assert offsets[1] == [(0, 3), (3, 8)]
    mask = torch.zeros(2, 11, dtype=torch.bool)
    mask[0, :] = True
    mask[1, :2] = True
    ids = marker_segments(offsets, texts, mask)
    # The marker closes its step; a marker split over two tokens still starts the next token;
    # a trailing marker opens no empty segment.
    assert ids[0].tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert ids[1].tolist() == [0, 0] + [-1] * 9
    assert marker_segments(offsets, texts, mask, marker=" ")[1, :2].tolist() == [0, 1]
    with pytest.raises(ValueError, match="marker"):
        marker_segments(offsets, texts, mask, marker="")


def test_fixed_segments():
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]])
    assert fixed_segments(mask, 2).tolist() == [[0, 0, 1, 1, 2, -1], [0, 0, -1, -1, -1, -1]]


def test_segmenter_registry_dispatches_with_the_inputs_each_entry_needs():
    mask = torch.tensor([[1] * 11, [1, 1] + [0] * 9], dtype=torch.bool)
    pieces = [["Step", " 1", ".\n\n", "Step", " 2", "\n", "\n", "Answer", ":", " 3", "\n\n"], ["one", " step"]]
    entropy = torch.zeros(2, 11)
    entropy[0, 4] = 1.0
    texts, offsets = token_offsets(pieces)
    expected = {
        "entropy": entropy_segments(entropy, mask, k=1, min_gap=3),
        "marker": marker_segments(offsets, texts, mask),
        "fixed": fixed_segments(mask, 4),
    }
    options = {"entropy": {"k": 1, "min_gap": 3}, "marker": {"marker": "\n\n"}, "fixed": {"segment_length": 4}}
    for name, segmenter in SEGMENTERS.items():
        inputs = SegmentInputs(mask, entropy if segmenter.needs_entropy else None,
                               pieces if segmenter.needs_text else None)
        assert segmenter.fn(inputs, **options[name]).tolist() == expected[name].tolist(), name
        assert set(segmenter.options()) == set(options[name])
    assert [n for n, s in SEGMENTERS.items() if s.separator_ends] == ["marker"]
    with pytest.raises(ValueError, match="segmenter 'entropy' needs the sampling entropy"):
        get_segmenter("entropy").fn(SegmentInputs(mask))
    with pytest.raises(ValueError, match="unknown segmenter 'spikes'; known: entropy, fixed, marker"):
        get_segmenter("spikes")
    with pytest.raises(ValueError, match="already registered"):
        register_segmenter("fixed")(lambda inputs: inputs.mask.long())


# ----------------------------------------------------------------------------- spans and scores


def test_scores_to_tokens_round_trip_with_spans():
    ids = torch.tensor([[0, 0, 1, 2, 2, -1], [0, 1, 1, 1, -1, -1]])
    assert segment_spans(ids) == [[(0, 2), (2, 3), (3, 5)], [(0, 1), (1, 4)]]
    tokens = scores_to_tokens([[0.1, 0.5, 0.9], [0.2, 0.7]], ids)
    torch.testing.assert_close(tokens, torch.tensor([[0.1, 0.1, 0.5, 0.9, 0.9, 0], [0.2, 0.7, 0.7, 0.7, 0, 0]]))
    # Reading the token scores back at each span start recovers the segment scores.
    for row, spans in enumerate(segment_spans(ids)):
        assert [tokens[row, s].item() for s, _ in spans] == pytest.approx([[0.1, 0.5, 0.9], [0.2, 0.7]][row])


def test_scores_to_tokens_rejects_wrong_counts():
    ids = torch.tensor([[0, 1, 1], [0, 0, -1]])
    with pytest.raises(ValueError, match="row 1: 2 scores for 1 segments"):
        scores_to_tokens([[0.1, 0.2], [0.3, 0.4]], ids)
    with pytest.raises(ValueError, match="rows"):
        scores_to_tokens([[0.1, 0.2]], ids)


def test_scores_to_tokens_accepts_a_padded_tensor():
    ids = torch.tensor([[0, 1, 1], [0, 0, -1]])
    padded = torch.tensor([[0.1, 0.2, 0.9], [0.3, 0.8, 0.8]])
    torch.testing.assert_close(scores_to_tokens(padded, ids), torch.tensor([[0.1, 0.2, 0.2], [0.3, 0.3, 0.0]]))
    with pytest.raises(ValueError, match="1 columns for up to 2 segments"):
        scores_to_tokens(padded[:, :1], ids)


def test_scores_to_tokens_over_many_row_blocks_matches_elementwise():
    # 300 x 1000 tokens span three row blocks of the gather (GATHER_BLOCK_ELEMENTS = 2**17).
    gen = torch.Generator().manual_seed(0)
    entropy = torch.rand(300, 1000, generator=gen)
    mask = torch.arange(1000) < torch.randint(0, 1001, (300, 1), generator=gen)
    ids = entropy_segments(entropy, mask, k=5, min_gap=10)
    scores = torch.rand(300, 6, generator=gen)
    tokens = scores_to_tokens(scores, ids)
    expected = torch.where(ids >= 0, scores.gather(1, ids.clamp(min=0)), 0.0)
    assert torch.equal(tokens, expected)


def test_response_lengths_counts_and_rejects_gaps():
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0]])
    assert response_lengths(mask).tolist() == [3, 1, 0, 2]
    for bad, row in [([[1, 1, 1], [0, 1, 1]], 1), ([[0, 0, 1]], 0), ([[1, 0, 1]], 0)]:
        with pytest.raises(ValueError, match=f"mask row {row} is not right-padded"):
            response_lengths(torch.tensor(bad))
    assert response_lengths(torch.ones(2, 0)).tolist() == [0, 0]
