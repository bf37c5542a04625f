"""Load on `prpo serve-prm`: several training processes scoring at once, on 127.0.0.1.

    python speed/bench_prm_load.py [--clients 8] [--requests 5] [--responses 64] [--windows 0 0.01 0.05]

For each batching window: a server with the rule-based arithmetic PRM (the same code path as any PRM:
requests queue, the batcher merges those that arrive within the window into one model call), then
`--clients` threads, each a `RemotePRM` client (one per training process), each sending `--requests`
requests of `--responses` responses one after another. Bounded in count and time (`--deadline`).
Prints per window: requests answered of those sent, whether every answer equals scoring that request
alone (no request lost or mixed with another), model calls, throughput (responses/s) and request
latency p50 / p99. Ratios of windows measured side by side in one run; absolute times move with the
machine's load.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import threading
import time

import torch

from prpo.prm import ArithmeticPRM, load_prm
from prpo.prm.server import background_server, create_app
from prpo.tasks import load_task


class CountingPRM(ArithmeticPRM):
    """The arithmetic PRM, counting the model calls the server's batcher makes."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def score(self, problems, segments):
        self.calls += 1
        return super().score(problems, segments)


def requests_of(clients: int, per_client: int, responses: int, seed: int = 0) -> list[list[tuple[list, list]]]:
    """Each client's requests: arithmetic problems with their reference steps, a step slipped at random."""
    rng = random.Random(seed)
    task = load_task("arithmetic", split="train", limit=256, seed=seed)
    out = []
    for _ in range(clients):
        batches = []
        for _ in range(per_client):
            problems, segments = [], []
            for _ in range(responses):
                example = task.examples[rng.randrange(len(task))]
                steps = [line + "\n" for line in example.meta["solution"].splitlines() if line.strip()] or ["Answer: 0"]
                if rng.random() < 0.3:
                    steps[rng.randrange(len(steps))] = "2 + 2 = 5\n"
                problems.append(example.problem)
                segments.append(steps)
            batches.append((problems, segments))
        out.append(batches)
    return out


def run_window(window: float, work: list, deadline: float) -> dict:
    prm = CountingPRM()
    expected = [[ArithmeticPRM().score(p, s) for p, s in batches] for batches in work]
    latencies: list[float] = []
    answered, mismatched, errors = 0, 0, []
    lock = threading.Lock()
    with background_server(create_app(prm, batch_window=window)) as url:
        def client(index: int) -> None:
            nonlocal answered, mismatched
            remote = load_prm({"type": "remote", "url": url, "max_outage_seconds": 10})
            for k, (problems, segments) in enumerate(work[index]):
                if time.monotonic() > deadline:
                    return
                start = time.perf_counter()
                try:
                    scores = remote.score(problems, segments)
                except Exception as err:  # noqa: BLE001 (counted and printed: the point is that none occur)
                    with lock:
                        errors.append(f"client {index} request {k}: {err}")
                    continue
                with lock:
                    latencies.append(time.perf_counter() - start)
                    answered += 1
                    mismatched += scores != expected[index][k]

        start = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(work))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - start
    sent = sum(len(batches) for batches in work)
    responses = sum(len(p) for batches in work for p, _ in batches)
    ordered = sorted(latencies)
    return {"window": window, "sent": sent, "answered": answered, "mismatched": mismatched, "errors": errors,
            "model_calls": prm.calls, "responses_per_s": responses / wall, "wall": wall,
            "p50": statistics.median(ordered) if ordered else float("nan"),
            "p99": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] if ordered else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=5, help="requests per client")
    parser.add_argument("--responses", type=int, default=64, help="responses per request")
    parser.add_argument("--windows", type=float, nargs="+", default=[0.0, 0.01, 0.05], help="batching windows (s)")
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds for the whole run, at most")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = requests_of(args.clients, args.requests, args.responses)
    deadline = time.monotonic() + args.deadline
    print(f"{args.clients} clients x {args.requests} requests x {args.responses} responses, loopback; "
          f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    print(f"{'window':>8} {'answered':>9} {'same as alone':>14} {'model calls':>12} {'responses/s':>12} "
          f"{'p50 (ms)':>9} {'p99 (ms)':>9}")
    for window in args.windows:
        row = run_window(window, work, deadline)
        same = "yes" if row["mismatched"] == 0 and not row["errors"] else f"NO ({row['mismatched']} differ)"
        print(f"{window * 1000:>6.0f}ms {row['answered']:>4}/{row['sent']:<4} {same:>14} {row['model_calls']:>12} "
              f"{row['responses_per_s']:>12.0f} {1000 * row['p50']:>9.1f} {1000 * row['p99']:>9.1f}")
        for error in row["errors"]:
            print(f"  error: {error}")


if __name__ == "__main__":
    main()
