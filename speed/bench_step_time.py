"""Step time of PRPO (entropy segments + arithmetic PRM) against GRPO: same model, batch and seed.

Runs alternate A/B (GRPO, PRPO, then PRPO, GRPO, ...), each a fresh `PRPOTrainer.train()` of
`--steps` optimiser steps; the first step of every run is a warm-up and is dropped. Prints the
median step time of each method, the PRPO/GRPO ratio (target: at most 1.10) and the mean time
split of a step (generate, entropy, segment, PRM, advantages, update, ...).

    python speed/bench_step_time.py --model smollm2 --rounds 3 --steps 4
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections import defaultdict

from prpo.config import PRPOConfig
from prpo.models import resolve_model
from prpo.prm import load_prm
from prpo.tasks import load_task
from prpo.trainer import PRPOTrainer

METHODS = ("grpo", "prpo")


def run(method: str, args: argparse.Namespace, model_path: str, task, output_dir: str) -> list[dict]:
    """One training run; the logged rows of its steps after the first."""
    config = PRPOConfig(
        output_dir=output_dir, method=method, prm={"type": "arithmetic"} if method == "prpo" else None,
        num_generations=args.generations, per_device_train_batch_size=args.prompts * args.generations,
        max_completion_length=args.max_completion_length, max_steps=args.steps, save_strategy="no",
        report_to=[], seed=args.seed, samples_per_step=0, activation_checkpointing=False,
        use_cpu=args.device == "cpu", bf16=args.device != "cpu", min_gap=args.min_gap,
    )
    prm = load_prm({"type": "arithmetic"}) if method == "prpo" else None
    trainer = PRPOTrainer(model_path, args=config, train_dataset=task.to_dataset(), prm=prm, grader=task.grade)
    trainer.train()
    return [row for row in trainer.state.log_history if "step_time" in row][1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="model folder, hub id or the smollm2 alias")
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds (each runs both methods)")
    parser.add_argument("--steps", type=int, default=4, help="optimiser steps per run (the first is dropped)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--max-completion-length", type=int, default=128)
    parser.add_argument("--min-gap", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()

    model_path = resolve_model(args.model)
    task = load_task("arithmetic", limit=args.prompts * args.steps * 4)
    rows: dict[str, list[dict]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            order = METHODS if round_ % 2 == 0 else METHODS[::-1]
            for method in order:
                rows[method] += run(method, args, model_path, task, f"{tmp}/{method}-{round_}")

    median = {m: statistics.median(r["step_time"] for r in rows[m]) for m in METHODS}
    print(f"model {args.model}, {args.prompts} prompts x {args.generations} rollouts, "
          f"{args.max_completion_length} response tokens, {args.device}, "
          f"{args.rounds} A/B rounds x {args.steps - 1} timed steps per method")
    for m in METHODS:
        print(f"{m:5s} median step time {median[m]:.3f} s over {len(rows[m])} steps")
    print(f"ratio PRPO / GRPO = {median['prpo'] / median['grpo']:.3f} (target <= 1.10)")
    keys = sorted({k for m in METHODS for r in rows[m] for k in r if k.startswith("time/")})
    print(f"{'split (mean s/step)':24s}" + "".join(f"{m:>10s}" for m in METHODS))
    for key in keys:
        means = [statistics.fmean(r.get(key, 0.0) for r in rows[m]) for m in METHODS]
        print(f"{key:24s}" + "".join(f"{v:10.4f}" for v in means))


if __name__ == "__main__":
    main()
