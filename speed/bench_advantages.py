"""Segmentation (entropy given) + PRPO advantages on a 1024 x 2048 batch, vectorised vs per-row.

Prints the time per batch of both implementations, measured side by side in this run, their ratio,
and checks that they agree; then the advantage step alone (segments given) of PRPO and of
sign-preserving PRPO (`prpo_sp`) side by side, with their ratio.
Usage: python speed/bench_advantages.py [--rows 1024 --tokens 2048]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from prpo.advantages import compute_advantages
from prpo.reference import entropy_segments_row, prpo_advantages_rows
from prpo.segmentation import entropy_segments, scores_to_tokens


def make_batch(rows: int, tokens: int, group_size: int, k: int, seed: int) -> dict[str, torch.Tensor]:
    """Random entropies, right-padded lengths, +-1 rewards and per-segment PRM scores."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(tokens // 8, tokens + 1, (rows,), generator=gen)
    return dict(
        entropy=torch.rand(rows, tokens, generator=gen) * 3,
        mask=torch.arange(tokens)[None, :] < lengths[:, None],
        rewards=torch.where(torch.rand(rows, generator=gen) < 0.4, 1.0, -1.0),
        group_ids=torch.arange(rows) // group_size,
        segment_scores=torch.rand(rows, k + 1, generator=gen),
    )


def vectorised(batch: dict[str, torch.Tensor], k: int, min_gap: int) -> torch.Tensor:
    """The library path: entropy_segments -> scores_to_tokens -> compute_advantages('prpo')."""
    ids = entropy_segments(batch["entropy"], batch["mask"], k=k, min_gap=min_gap)
    return advantages("prpo", batch, ids)


def advantages(method: str, batch: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """scores_to_tokens -> compute_advantages(method) on given segments."""
    return compute_advantages(
        method, outcome_rewards=batch["rewards"], group_ids=batch["group_ids"], mask=batch["mask"],
        token_scores=scores_to_tokens(batch["segment_scores"], ids), segment_ids=ids,
    )


def per_row(batch: dict[str, torch.Tensor], k: int, min_gap: int) -> list[list[float]]:
    """The same spec, one row at a time in plain Python (prpo.reference)."""
    entropy, lengths = batch["entropy"].tolist(), batch["mask"].sum(dim=1).tolist()
    ids = [entropy_segments_row(row, length, k, min_gap) for row, length in zip(entropy, lengths)]
    return prpo_advantages_rows(
        batch["rewards"].tolist(), batch["group_ids"].tolist(), batch["segment_scores"].tolist(), ids
    )


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall time (s) over ``repeats`` runs, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--min-gap", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--reference-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    batch = make_batch(args.rows, args.tokens, args.group_size, args.k, seed=0)
    vectorised(batch, args.k, args.min_gap)  # warm-up
    fast_s, fast = timed(lambda: vectorised(batch, args.k, args.min_gap), args.repeats)
    slow_s, slow = timed(lambda: per_row(batch, args.k, args.min_gap), args.reference_repeats)

    worst = 0.0
    for i, row in enumerate(slow):
        worst = max(worst, (fast[i, : len(row)] - torch.tensor(row)).abs().max().item())
        assert fast[i, len(row) :].eq(0).all()
    assert worst < 1e-4, f"vectorised and per-row results differ by {worst}"

    print(f"batch {args.rows} x {args.tokens}, k={args.k}, m={args.min_gap}, torch threads={torch.get_num_threads()}")
    print(f"vectorised (segmentation + PRPO advantages): {fast_s * 1e3:8.1f} ms/batch (median of {args.repeats})")
    print(f"per-row Python reference:                    {slow_s * 1e3:8.1f} ms/batch (median of {args.reference_repeats})")
    print(f"speed-up: {slow_s / fast_s:.0f}x; results agree (max abs diff {worst:.2e})")

    ids = entropy_segments(batch["entropy"], batch["mask"], k=args.k, min_gap=args.min_gap)
    method_s = {}
    for _ in range(2):  # alternating A/B twice; the second pass is reported
        for method in ("prpo", "prpo_sp"):
            method_s[method], _ = timed(lambda m=method: advantages(m, batch, ids), args.repeats)
    print(f"advantages alone (segments given): prpo {method_s['prpo'] * 1e3:.1f} ms, "
          f"prpo_sp {method_s['prpo_sp'] * 1e3:.1f} ms, ratio prpo_sp / prpo = {method_s['prpo_sp'] / method_s['prpo']:.2f}")


if __name__ == "__main__":
    main()
