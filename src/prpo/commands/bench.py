"""`prpo bench`: the controlled benchmark of the advantage methods (see `prpo.bench`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prpo.bench.runner import DEFAULT_FAMILY, EVAL_SPLITS, METHODS, SIZES
from prpo.bench.prm import QUALITIES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prpo bench",
        description="Warm-start a small policy from scratch on a task family, then run RL on every difficulty "
        "level with every advantage method, PRM quality and seed under identical budgets; write raw JSONL, "
        "a Markdown table and PNG plots (docs/bench.md).",
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu",
                        help="cpu: the headline matrix for 2 cores (time in docs/bench.md); gpu: sized for one H100/H200-class GPU; "
                        "smoke: seconds, for CI")
    parser.add_argument("--family", default=DEFAULT_FAMILY,
                        help="task family MODULE:NAME or path/to/file.py:NAME (interface: prpo.bench.family)")
    parser.add_argument("--levels", nargs="+", default=None, help="difficulty levels to run (default: all of the family's)")
    parser.add_argument("--prm", nargs="+", choices=QUALITIES, default=["clean"], dest="qualities",
                        help="PRM qualities: clean (default), noisy (verdicts flipped at random), biased (uncheckable "
                        "lines and answerless stops rated good); noisy and biased only for methods that read the PRM")
    parser.add_argument("--output", type=Path, default=Path("results/bench"), help="results directory")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="advantage methods to compare")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per method (default: the preset's)")
    parser.add_argument("--jobs", type=int, default=None, help="parallel worker processes (default: the preset's)")
    parser.add_argument("--rl-steps", type=int, default=None,
                        help="RL steps per run (default: the preset's); e.g. a longer horizon for collapse")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="learning rate of every method instead of the preset's (e.g. one value of a grid)")
    parser.add_argument("--method-lr", nargs="+", default=[], metavar="METHOD=LR",
                        help="a method's own learning rate (a tuned baseline), e.g. grpo=1e-4 prpo=2e-4")
    parser.add_argument("--eval-split", choices=EVAL_SPLITS, default="test",
                        help="held-out problems: the test split (default), or validation problems drawn from the "
                        "train split and kept out of training, for choosing settings (docs/bench.md)")
    parser.add_argument("--choose-lr", nargs="+", type=Path, metavar="FOLDER",
                        help="print each method's learning rate chosen by the registered rule from these "
                        "results folders (one per --learning-rate, on --levels' first level) and exit")
    parser.add_argument("--summary-only", action="store_true",
                        help="rebuild the table, the paired exact tests and the plots from existing runs")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from prpo.advantages import get_method
    from prpo.bench.summary import code_provenance, write_summary

    for method in args.methods:
        try:
            get_method(method)
        except ValueError as error:
            raise SystemExit(f"prpo bench: --methods: {error}") from None
    if args.seeds is not None and args.seeds < 1:
        raise SystemExit("prpo bench: --seeds must be at least 1")
    if args.rl_steps is not None and args.rl_steps < 1:
        raise SystemExit("prpo bench: --rl-steps must be at least 1")
    if args.choose_lr:
        import json

        from prpo.bench.summary import choose_learning_rates

        chosen = choose_learning_rates(args.choose_lr, (args.levels or ["medium"])[0])
        print(json.dumps(chosen, indent=2))
        print("--method-lr " + " ".join(f"{method}={row['chosen']:g}" for method, row in chosen.items()))
        return 0
    learning_rates = {} if args.learning_rate is None else {method: args.learning_rate for method in args.methods}
    for item in args.method_lr:
        method, _, value = item.partition("=")
        try:
            learning_rates[method] = float(value)
        except ValueError:
            raise SystemExit(f"prpo bench: --method-lr {item!r}: expected METHOD=LR, e.g. grpo=1e-4") from None
    if not args.summary_only:
        from prpo.bench.runner import run_bench

        try:
            run_bench(args.size, args.output, family=args.family, levels=args.levels, qualities=args.qualities,
                      methods=args.methods, seeds=args.seeds, jobs=args.jobs, rl_steps=args.rl_steps,
                      learning_rates=learning_rates, eval_split=args.eval_split)
        except (ValueError, RuntimeError) as error:
            raise SystemExit(f"prpo bench: {error}") from None
    path = write_summary(args.output)
    print(path.read_text())
    line, warnings = code_provenance(args.output)
    print(line)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"results in {args.output}")
    return 0
