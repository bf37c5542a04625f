"""Token entropy and response segmentation (docs/algorithm.md sections 1-2).

Segment ids are a LongTensor[B, T]: ``0..r`` on the valid tokens of a row, ``-1`` on padding.
Every segmenter here returns that format, so the PRM and the advantages never care which one
produced the cut. Segmenters live in a registry (`SEGMENTERS`, `register_segmenter`) with one
signature, ``fn(SegmentInputs, *, options) -> ids``, and metadata saying what they read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from prpo.registry import Registry, keyword_options


# Segmenter defaults (docs/algorithm.md s.2), written once here: the registry's options and the config read them.
K = 5  # entropy segmenter: at most k spikes
MIN_GAP = 10  # entropy segmenter: spikes at least min_gap tokens apart (and from the ends)
MARKER = "\n\n"  # marker segmenter: a new step after each marker
SEGMENT_LENGTH = 64  # fixed segmenter: tokens per segment
ENTROPY_BLOCK_ELEMENTS = 1 << 24  # float32 elements of one vocabulary block (64 MiB)
GATHER_BLOCK_ELEMENTS = 1 << 17  # int64 index elements per block of `scores_to_tokens` (1 MiB)


def token_entropy(logits: Tensor, temperature: float = 1.0, chunk_size: int | None = None) -> Tensor:
    """Entropy (nats) of ``softmax(logits / temperature)`` over the last dim: Tensor[B, T].

    ``H = logsumexp(z) - sum_v softmax(z)_v z_v`` with ``z = logits / temperature``, computed on
    ``z - m`` (``m`` the running max) to avoid cancellation: ``s0 = sum e^(z-m)``,
    ``s1 = sum e^(z-m) (z-m)``, ``H = log s0 - s1 / s0``. When the rows times the vocabulary exceed
    one block, the vocabulary is processed in chunks, rescaling the sums when ``m`` grows, so only
    a float32 ``[B, T, chunk_size]`` block is alive at a time. ``chunk_size=None`` picks the widest
    chunk within ``ENTROPY_BLOCK_ELEMENTS``. Logits of ``-inf`` (masked vocabulary) contribute nothing.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    vocab = logits.shape[-1]
    rows = max(1, logits.numel() // max(vocab, 1))
    if chunk_size is None:
        chunk_size = max(1, ENTROPY_BLOCK_ELEMENTS // rows)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    lowest = torch.finfo(torch.float32).min
    shape = logits.shape[:-1]
    m = torch.full(shape, lowest, dtype=torch.float32, device=logits.device)
    s0 = torch.zeros(shape, dtype=torch.float32, device=logits.device)
    s1 = torch.zeros(shape, dtype=torch.float32, device=logits.device)
    for start in range(0, vocab, chunk_size):
        z = (logits[..., start : start + chunk_size].float() / temperature).clamp_(min=lowest)
        m_new = torch.maximum(m, z.amax(dim=-1))
        rescale = torch.exp(m - m_new)
        shifted = z - m_new.unsqueeze(-1)
        p = torch.exp(shifted)
        s1 = rescale * (s1 + (m - m_new) * s0) + (p * shifted).sum(dim=-1)
        s0 = s0 * rescale + p.sum(dim=-1)
        m = m_new
    return torch.log(s0) - s1 / s0


def response_lengths(mask: Tensor) -> Tensor:
    """``L_i`` of a right-padded mask[B, T]; raises if a row's valid tokens are not a prefix.

    The valid tokens form a prefix exactly when their count equals the position of the first
    padding token (T when there is none): one count and one argmin, no [B, T] temporaries.
    """
    mask = mask.bool()
    if mask.dim() != 2:
        raise ValueError(f"mask must be 2-D [B, T], got shape {tuple(mask.shape)}")
    if mask.shape[1] == 0:
        return torch.zeros(mask.shape[0], dtype=torch.long, device=mask.device)
    counts = mask.view(torch.uint8).sum(dim=1, dtype=torch.int32)  # rows are far below 2**31 tokens
    # The first padding position (argmin of the 0/1 bytes, no int64 copy of the mask), or T.
    lengths = torch.where(mask[:, -1], mask.shape[1], mask.view(torch.uint8).argmin(dim=1))
    gaps = counts != lengths
    if gaps.any():
        raise ValueError(f"mask row {int(gaps.nonzero()[0])} is not right-padded (a valid token follows padding)")
    return lengths


def _ids_from_boundaries(boundaries: Tensor, mask: Tensor) -> Tensor:
    """Segment ids from a bool[B, T] of segment starts (position 0 implied): cumsum, -1 on padding."""
    ids = boundaries.long().cumsum(dim=1)
    return ids.masked_fill_(~mask.bool(), -1)


def entropy_segments(entropy: Tensor, mask: Tensor, k: int = K, min_gap: int = MIN_GAP) -> Tensor:
    """Cut each response at up to ``k`` entropy spikes at least ``min_gap`` apart (docs/algorithm.md s.2).

    Candidates are ``m <= t <= L_i - m``; they are accepted greedily by decreasing entropy (ties to
    the smaller t) when ``|t - b| >= m`` for every accepted ``b``. A spike token starts a new
    segment. Returns LongTensor[B, T]: ids ``0..r`` on valid tokens, -1 on padding.

    Greedy acceptance equals "take the best candidate still compatible with the accepted set", so
    the batch runs k rounds of an argmax. Rows are cut into blocks wider than the ``2m - 1``
    window: one pass takes every block's max, and each round only the blocks a pick's window
    touches are recomputed, for all rows at once.
    """
    if entropy.shape != mask.shape:
        raise ValueError(f"entropy {tuple(entropy.shape)} and mask {tuple(mask.shape)} differ in shape")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if min_gap < 1:
        raise ValueError(f"min_gap must be >= 1, got {min_gap}")
    mask = mask.bool()
    lengths = response_lengths(mask)
    batch, width = entropy.shape
    device = entropy.device
    block = max(64, 1 << (2 * min_gap - 1).bit_length())
    n_blocks = max(1, -(-width // block))
    # A private copy: each pick writes -inf over its window (b - m, b + m).
    extra = n_blocks * block - width
    work = torch.nn.functional.pad(entropy.float(), (0, extra), value=float("-inf")) if extra else entropy.float().clone()
    blocks = work.view(batch, n_blocks, block)
    last = lengths - min_gap  # the last candidate position of each row
    offsets = torch.arange(block, device=device)
    window = torch.arange(-min_gap + 1, min_gap, device=device)
    rows = torch.arange(batch, device=device)

    # Only candidates stay finite: -inf before m, and after L - m in the block holding L - m and the
    # next one (a pick's window reaches at most one block further; later blocks are never read).
    work[:, :min_gap] = float("-inf")
    tail = (last // block).clamp(0, n_blocks - 1)
    tail = torch.stack([tail, (tail + 1).clamp(max=n_blocks - 1)], dim=1)
    tail_values = blocks[rows[:, None], tail]
    tail_values.masked_fill_(tail.unsqueeze(2) * block + offsets > last[:, None, None], float("-inf"))
    blocks[rows[:, None], tail] = tail_values
    starts = torch.arange(n_blocks, device=device) * block
    block_max = blocks.amax(dim=2).masked_fill_(starts > last.unsqueeze(1), float("-inf"))

    def refresh(blk: Tensor) -> None:
        block_max.scatter_(1, blk, blocks[rows[:, None], blk].amax(dim=2))

    delta = torch.zeros(batch, width, dtype=torch.long, device=device)
    count = torch.zeros(batch, dtype=torch.long, device=device)
    for _ in range(k):
        # Every row takes part; a row with no candidate left "picks" position 0, whose window
        # holds no candidate, and adds nothing to its ids.
        best_block = block_max.argmax(dim=1)
        best = block_max.gather(1, best_block.unsqueeze(1)).squeeze(1)
        found = best > float("-inf")
        any_nan, any_found = torch.stack([torch.isnan(best).any(), found.any()]).tolist()  # one sync
        if any_nan:
            raise ValueError(f"entropy has NaN at a candidate position of row {int(torch.isnan(best).nonzero()[0])}")
        if not any_found:
            break
        picked = best_block * block + blocks[rows, best_block].argmax(dim=1)
        picked = torch.where(found, picked, 0)
        work[rows.unsqueeze(1), (picked.unsqueeze(1) + window).clamp(0, n_blocks * block - 1)] = float("-inf")
        delta[rows, picked] += found.long()
        count += found.long()
        touched = torch.stack([(picked - min_gap + 1).clamp(min=0) // block, (picked + min_gap - 1) // block], dim=1)
        refresh(touched.clamp(max=n_blocks - 1))
    short = (lengths < width).nonzero().flatten()
    delta[short, lengths[short]] -= count[short] + 1
    return delta.cumsum_(dim=1)


def fixed_segments(mask: Tensor, length: int) -> Tensor:
    """Segments of ``length`` tokens: ``S[i, t] = t // length`` on valid tokens, -1 on padding."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    response_lengths(mask)
    positions = torch.arange(mask.shape[1], device=mask.device).expand(mask.shape[0], -1)
    return (positions // length).masked_fill(~mask.bool(), -1)


def marker_segments(
    offsets: Sequence[Sequence[tuple[int, int]]],
    texts: Sequence[str],
    mask: Tensor,
    marker: str = MARKER,
) -> Tensor:
    """Segments that start after each step ``marker`` in the decoded text.

    ``offsets[i][t] = (start, end)`` are the character offsets of token t in ``texts[i]``. For each
    marker occurrence ending at character p, the token holding character p starts a new segment, so
    the marker stays with the step it closes unless one token spans both. A marker at the very end
    opens no empty segment. Returns LongTensor[B, T], -1 on padding.
    """
    if not marker:
        raise ValueError("marker must be a non-empty string")
    lengths = response_lengths(mask)
    if len(offsets) != mask.shape[0] or len(texts) != mask.shape[0]:
        raise ValueError(f"got {len(offsets)} offset rows and {len(texts)} texts for {mask.shape[0]} mask rows")
    boundaries = torch.zeros(mask.shape, dtype=torch.bool)
    for row, (row_offsets, text) in enumerate(zip(offsets, texts)):
        length = int(lengths[row])
        if len(row_offsets) < length:
            raise ValueError(f"row {row}: {len(row_offsets)} offsets for {length} valid tokens")
        cuts, pos = [], text.find(marker)
        while pos != -1:
            cuts.append(pos + len(marker))
            pos = text.find(marker, pos + len(marker))
        if not cuts or length == 0:
            continue
        starts = torch.tensor([start for start, _ in row_offsets[:length]], dtype=torch.long)
        cuts_t = torch.tensor(cuts)
        holder = torch.searchsorted(starts, cuts_t, side="right") - 1
        boundaries[row, holder[(holder > 0) & (cuts_t < row_offsets[length - 1][1])]] = True
    return _ids_from_boundaries(boundaries.to(mask.device), mask)


def token_offsets(token_texts: Sequence[Sequence[str]]) -> tuple[list[str], list[list[tuple[int, int]]]]:
    """Texts and character offsets from per-token decoded strings (``tokenizer.batch_decode([[id], ...])``)."""
    texts, offsets = [], []
    for pieces in token_texts:
        row, cursor = [], 0
        for piece in pieces:
            row.append((cursor, cursor + len(piece)))
            cursor += len(piece)
        texts.append("".join(pieces))
        offsets.append(row)
    return texts, offsets


def num_segments(segment_ids: Tensor) -> Tensor:
    """Segments per row: ``max id + 1`` (0 for an empty row)."""
    return segment_ids.amax(dim=1).clamp(min=-1) + 1


def segment_spans(segment_ids: Tensor) -> list[list[tuple[int, int]]]:
    """Token spans ``[start, end)`` of every segment, per row, in order."""
    ids = segment_ids.cpu()
    valid = ids >= 0
    starts = valid.clone()
    starts[:, 1:] &= ids[:, 1:] != ids[:, :-1]
    lengths = valid.sum(dim=1).tolist()
    spans = []
    for row, length in enumerate(lengths):
        cuts = starts[row].nonzero().flatten().tolist() + [length]
        spans.append(list(zip(cuts[:-1], cuts[1:])))
    return spans


def scores_to_tokens(scores: Sequence[Sequence[float]] | Tensor, segment_ids: Tensor) -> Tensor:
    """Broadcast per-segment scores to tokens: ``P[i, t] = s[i, S[i, t]]``, 0 on padding.

    ``scores`` is one list per row with exactly one score per segment (else a clear error,
    docs/algorithm.md s.3), or a padded Tensor[B, K] whose columns past a row's segment count are ignored.
    """
    counts = num_segments(segment_ids).tolist()
    if len(scores) != len(counts):
        raise ValueError(f"got scores for {len(scores)} rows, segment ids have {len(counts)} rows")
    width = max(counts, default=0)
    # Column 0 holds the padding value, so padding (id -1) gathers a 0 without a second pass.
    table = torch.zeros(len(counts), width + 1)
    if isinstance(scores, Tensor):
        if scores.shape[1] < width:
            raise ValueError(f"scores tensor has {scores.shape[1]} columns for up to {width} segments")
        table[:, 1:] = scores[:, :width].float()
    else:
        for row, (row_scores, count) in enumerate(zip(scores, counts)):
            if len(row_scores) != count:
                raise ValueError(f"row {row}: {len(row_scores)} scores for {count} segments")
        for row, row_scores in enumerate(scores):
            table[row, 1 : len(row_scores) + 1] = torch.tensor(list(row_scores), dtype=torch.float32)
    table = table.to(segment_ids.device)
    out = torch.empty(segment_ids.shape, device=segment_ids.device)
    # Row blocks keep the shifted int64 index small (at most GATHER_BLOCK_ELEMENTS), so it is
    # reused from the allocator's free memory instead of being a fresh [B, T] tensor each call.
    step = max(1, GATHER_BLOCK_ELEMENTS // max(segment_ids.shape[1], 1))
    for row in range(0, segment_ids.shape[0], step):
        rows = slice(row, row + step)
        torch.gather(table[rows], 1, segment_ids[rows] + 1, out=out[rows])
    return out


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class SegmentInputs:
    """What a segmenter may read: the response mask[B, T], the sampling entropy[B, T], the per-token texts."""

    mask: Tensor
    entropy: Tensor | None = None
    token_texts: Sequence[Sequence[str]] | None = None


@dataclass(frozen=True)
class Segmenter:
    """A registered segmenter and what it needs.

    ``needs_entropy`` / ``needs_text``: the trainer fills ``SegmentInputs.entropy`` / ``token_texts``.
    ``separator_ends``: every segment but the last ends at a step-separator token (PURE gives it no
    advantage, as its reference code does at "\\n\\n").
    """

    name: str
    fn: Callable[..., Tensor]
    needs_entropy: bool
    needs_text: bool
    separator_ends: bool

    def options(self) -> dict[str, object]:
        """Keyword options the segmenter takes, with their defaults (filled from the same-named config fields)."""
        return keyword_options(self.fn)


SEGMENTERS: Registry[Segmenter] = Registry("segmenter")


def register_segmenter(
    name: str, *, needs_entropy: bool = False, needs_text: bool = False, separator_ends: bool = False
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Register ``fn(inputs: SegmentInputs, *, **options) -> LongTensor[B, T]`` (ids, -1 on padding) as ``name``."""

    def decorator(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        SEGMENTERS.add(Segmenter(name, fn, needs_entropy, needs_text, separator_ends))
        return fn

    return decorator


def get_segmenter(name: str) -> Segmenter:
    """The registered segmenter ``name``; a clear error listing the known ones otherwise."""
    return SEGMENTERS.lookup(name)


def _required(value, what: str, name: str):
    if value is None:
        raise ValueError(f"segmenter {name!r} needs {what}")
    return value


@register_segmenter("entropy", needs_entropy=True)
def _entropy(inputs: SegmentInputs, *, k: int = K, min_gap: int = MIN_GAP) -> Tensor:
    """`entropy_segments`: up to ``k`` entropy spikes at least ``min_gap`` tokens apart start new segments."""
    return entropy_segments(_required(inputs.entropy, "the sampling entropy", "entropy"), inputs.mask, k=k, min_gap=min_gap)


@register_segmenter("marker", needs_text=True, separator_ends=True)
def _marker(inputs: SegmentInputs, *, marker: str = MARKER) -> Tensor:
    """`marker_segments`: a new segment after each ``marker`` in the decoded text."""
    texts, offsets = token_offsets(_required(inputs.token_texts, "the per-token texts", "marker"))
    return marker_segments(offsets, texts, inputs.mask, marker=marker)


@register_segmenter("fixed")
def _fixed(inputs: SegmentInputs, *, segment_length: int = SEGMENT_LENGTH) -> Tensor:
    """`fixed_segments`: segments of ``segment_length`` tokens."""
    return fixed_segments(inputs.mask, segment_length)
