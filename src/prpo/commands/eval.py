"""`prpo eval MODEL --benchmark NAME`: benchmark accuracy of a model, written to records.jsonl and summary.json."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

BENCHMARKS = ("math500", "gsm8k", "aime24", "amc23", "arithmetic")
PARTIAL_FILE = "completions.partial.jsonl"  # an interrupted run resumes from it (same --output)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prpo eval",
        description="Evaluate a model on a math benchmark: greedy pass@1, or mean@N and unbiased pass@k with --samples N.",
    )
    parser.add_argument("model", help="hub id, local HF folder, run directory or checkpoint-N folder, or `smollm2` (offline)")
    parser.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--data-file", help=".jsonl/.json benchmark file (default: $PRPO_DATA_DIR/<file>, else the hub)")
    data.add_argument("--dataset-id", help="Hugging Face dataset id")
    parser.add_argument("--data-dir", help="folder of the default benchmark files (sets the tasks' data_dir)")
    parser.add_argument("--split", help="dataset split (default: test for built-in data; a file is one split)")
    parser.add_argument("--limit", type=int, help="evaluate the first N problems only")
    parser.add_argument("--template", help="prompt template (default: the benchmark's)")
    parser.add_argument("--samples", type=int, default=1, help="responses per problem; N > 1 needs --temperature > 0 (default 1)")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy (default 0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default 1.0)")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="default 1024")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per HF generate call (default 16)")
    parser.add_argument("--stop", action="append", default=[], help="extra stop string (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--backend", choices=("auto", "hf", "vllm"), default="auto", help="auto (default): vLLM if installed and a GPU is present, else HF")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto", help="default: the checkpoint's")
    parser.add_argument("--device", help="torch device for the HF backend (default: cuda if available, else cpu)")
    parser.add_argument("--output", help="output folder (default: eval-results/<model>-<benchmark>-<time>)")
    parser.add_argument("--overwrite", action="store_true", help="replace the results already in --output")
    return parser


def default_output(model: str, benchmark: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model.rstrip("/").split("/")[-1]) or "model"
    return Path("eval-results") / f"{slug}-{benchmark}-{time.strftime('%Y%m%d-%H%M%S')}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output = Path(args.output) if args.output else default_output(args.model, args.benchmark)
    if (output / "summary.json").exists() and not args.overwrite:
        print(f"prpo eval: error: {output} already holds results; choose another --output or pass --overwrite", file=sys.stderr)
        return 2
    if args.overwrite:
        (output / PARTIAL_FILE).unlink(missing_ok=True)
    try:
        return _run(args, output)
    except (ValueError, FileNotFoundError) as err:
        print(f"prpo eval: error: {err}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, output: Path) -> int:
    from prpo.evaluation.evaluate import evaluate
    from prpo.evaluation.generation import Sampling, make_generator
    from prpo.tasks import load_task

    Sampling(args.max_new_tokens, args.temperature, args.top_p, args.samples)  # checks the settings before loading

    options = {"data_dir": args.data_dir} if args.data_dir and args.benchmark != "arithmetic" else {}
    split = args.split or (None if args.data_file or args.dataset_id else "test")
    task = load_task(
        args.benchmark, data_file=args.data_file, dataset_id=args.dataset_id, split=split,
        limit=args.limit, template=args.template, **options,
    )
    print(f"prpo eval: {args.benchmark}: {len(task)} problems; loading {args.model}", file=sys.stderr, flush=True)
    generator = make_generator(
        args.model, backend=args.backend, dtype=args.dtype, device=args.device,
        batch_size=args.batch_size, stop=args.stop, seed=args.seed,
    )
    partial = output / PARTIAL_FILE
    result = evaluate(
        generator, task, samples=args.samples, temperature=args.temperature, top_p=args.top_p,
        max_new_tokens=args.max_new_tokens, seed=args.seed, model_name=args.model, partial_file=partial,
    )
    result.write(output)
    partial.unlink()
    print(result.table())
    print(f"\nrecords: {output / 'records.jsonl'}\nsummary: {output / 'summary.json'}")
    return 0
