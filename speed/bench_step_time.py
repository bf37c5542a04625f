"""Step time of the PRM methods (entropy segments + arithmetic PRM) against GRPO: same model, batch and seed.

Each round runs every method of `--methods` once, in an order rotated by one per round (GRPO, PRPO,
PRPO-SP, then PRPO, PRPO-SP, GRPO, ...), each a fresh `PRPOTrainer.train()` of `--steps` optimiser
steps; the first step of every run is a warm-up and is dropped. Prints the median step time of each
method, each one's ratio to the first method (PRPO / GRPO target: at most 1.10) and to the one before
it (PRPO-SP / PRPO: no slower within noise), and the mean time split of a step (generate, entropy,
segment, PRM, advantages, update, ...).

    python speed/bench_step_time.py --model smollm2 --rounds 3 --steps 4
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections import defaultdict

from prpo.advantages import get_method
from prpo.training.config import PRPOConfig
from prpo.models import resolve_model
from prpo.prm import load_prm
from prpo.tasks import load_task
from prpo.training.trainer import PRPOTrainer

def run(method: str, args: argparse.Namespace, model_path: str, task, output_dir: str) -> list[dict]:
    """One training run; the logged rows of its steps after the first."""
    uses_prm = get_method(method).uses_prm
    config = PRPOConfig(
        output_dir=output_dir, method=method, prm={"type": "arithmetic"} if uses_prm else None,
        num_generations=args.generations, per_device_train_batch_size=args.prompts * args.generations,
        max_completion_length=args.max_completion_length, max_steps=args.steps, save_strategy="no",
        report_to=[], seed=args.seed, samples_per_step=0, activation_checkpointing=False,
        use_cpu=args.device == "cpu", bf16=args.device != "cpu", min_gap=args.min_gap,
    )
    prm = load_prm({"type": "arithmetic"}) if uses_prm else None
    trainer = PRPOTrainer(model_path, args=config, train_dataset=task.to_dataset(), prm=prm, grader=task.grade)
    trainer.train()
    return [row for row in trainer.state.log_history if "step_time" in row][1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="model folder, hub id or the smollm2 alias")
    parser.add_argument("--methods", nargs="+", default=["grpo", "prpo", "prpo_sp"], help="the first is the baseline")
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
    methods = args.methods
    rows: dict[str, list[dict]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            shift = round_ % len(methods)
            for method in methods[shift:] + methods[:shift]:
                rows[method] += run(method, args, model_path, task, f"{tmp}/{method}-{round_}")

    median = {m: statistics.median(r["step_time"] for r in rows[m]) for m in methods}
    print(f"model {args.model}, {args.prompts} prompts x {args.generations} rollouts, "
          f"{args.max_completion_length} response tokens, {args.device}, "
          f"{args.rounds} rounds x {args.steps - 1} timed steps per method")
    for m in methods:
        print(f"{m:12s} median step time {median[m]:.3f} s over {len(rows[m])} steps")
    for before, m in zip(methods, methods[1:]):
        against = [methods[0], before] if before != methods[0] else [before]
        print("ratio " + ", ".join(f"{m} / {b} = {median[m] / median[b]:.3f}" for b in against))
    keys = sorted({k for m in methods for r in rows[m] for k in r if k.startswith("time/")})
    print(f"{'split (mean s/step)':24s}" + "".join(f"{m:>12s}" for m in methods))
    for key in keys:
        means = [statistics.fmean(r.get(key, 0.0) for r in rows[m]) for m in methods]
        print(f"{key:24s}" + "".join(f"{v:12.4f}" for v in means))


if __name__ == "__main__":
    main()
