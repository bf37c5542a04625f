"""Benchmark evaluation the way the field reports it: greedy pass@1, mean@N and unbiased pass@k.

    task = load_task("math500", data_file="data/math500.jsonl")  # a local copy of the file
    result = evaluate_model(model, tokenizer, task, max_new_tokens=1024)
    result.summary["accuracy"], result.records[0]["extracted_answer"]

`evaluate` runs any `prpo.evaluation.generation.Generator` (HF or vLLM); `evaluate_model` wraps an in-memory
model (the trainer's periodic evaluation). Grading is the task's (`prpo.grading`: math-verify in
time-bounded processes, or the arithmetic task's exact match). A response without a final answer,
or with one math-verify cannot parse, counts as wrong; both are counted in the summary.
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prpo.evaluation.generation import Completion, Generator, HFGenerator
from prpo.grading import extract_final_answer, grading_stats
from prpo.tasks import Example, Task

BREAKDOWNS = ("subject", "level")  # Example.meta fields reported separately when present


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021) from n samples of which c are correct.

    pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k / i)   (1 when n - c < k)
    """
    n, c, k = operator.index(n), operator.index(c), operator.index(k)
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_at_k_values(n: int) -> list[int]:
    """k = 1, 2, 4, ... up to n, and n itself."""
    ks = [1 << p for p in range(n.bit_length()) if 1 << p <= n]
    return ks if ks[-1] == n else [*ks, n]


def accuracy_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for an accuracy of correct/n (z = 1.96: 95%).

    p = c/n;  centre = (p + z^2/2n) / (1 + z^2/n);  half = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2)
    """
    if n < 1 or not 0 <= correct <= n:
        raise ValueError(f"accuracy_interval needs n >= 1 and 0 <= correct <= n, got correct={correct}, n={n}")
    return _wilson(correct / n, n, z)


def _wilson(p: float, n: int, z: float) -> tuple[float, float]:
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


SIGNIFICANCE = 0.05  # a before/after change counts as significant when the one-sided McNemar p is below this


def mcnemar_improvement(before: Sequence[bool], after: Sequence[bool]) -> dict[str, Any]:
    """Exact one-sided McNemar test that `after` is more often right than `before` on the same problems.

    Only discordant pairs count: `improved` (wrong -> right) and `worsened` (right -> wrong). Under
    no change each discordant pair is improved with probability 1/2 (a sign test), so with
    n = improved + worsened:  p = P(X >= improved), X ~ Binomial(n, 1/2) = sum_{k>=improved} C(n, k) / 2^n
    (1 when n = 0).
    """
    if len(before) != len(after):
        raise ValueError(f"mcnemar_improvement needs paired results, got {len(before)} before and {len(after)} after")
    improved = sum(not b and a for b, a in zip(before, after))
    worsened = sum(b and not a for b, a in zip(before, after))
    n = improved + worsened
    p_value = sum(math.comb(n, k) for k in range(improved, n + 1)) / 2**n
    return {"p_value": p_value, "improved": improved, "worsened": worsened}


def paired_correctness(before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]]) -> tuple[list[bool], list[bool]]:
    """Per-problem correctness of two evaluations' records (one sample each), paired by problem id."""
    right_before = {r["id"]: bool(r["correct"]) for r in before}
    right_after = {r["id"]: bool(r["correct"]) for r in after}
    if len(right_before) != len(before) or len(right_after) != len(after) or right_before.keys() != right_after.keys():
        raise ValueError("paired_correctness needs the same problems, one greedy sample each, before and after")
    return [right_before[i] for i in right_before], [right_after[i] for i in right_before]


@dataclasses.dataclass
class EvalResult:
    """`summary`: the metrics (summary.json); `records`: one per problem and sample (records.jsonl)."""

    summary: dict[str, Any]
    records: list[dict[str, Any]]

    def scalar_metrics(self, prefix: str = "eval/") -> dict[str, float]:
        """Flat numeric metrics for a training log: accuracy, pass@k, length and answer rates."""
        s = self.summary
        metrics = {
            "accuracy": s["accuracy"],
            "no_final_answer_fraction": s["no_final_answer_fraction"],
            "truncated_fraction": s["truncated_fraction"],
            "response_tokens_mean": s["response_tokens"]["mean"],
            **{f"pass@{k}": v for k, v in s["pass_at_k"].items()},
        }
        return {prefix + name: float(value) for name, value in metrics.items()}

    def write(self, folder: str | Path) -> None:
        """`records.jsonl` and `summary.json` in `folder` (created)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "records.jsonl").open("w", encoding="utf-8") as out:
            for record in self.records:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        (folder / "summary.json").write_text(json.dumps(self.summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def table(self) -> str:
        """The summary as a plain-text table."""
        s = self.summary
        low, high = s["accuracy_ci95"]
        decoding = "greedy" if s["temperature"] == 0 else f"T={s['temperature']}, top_p={s['top_p']}"
        rows = [
            (f"{s['benchmark']} ({s['num_problems']} problems)", f"{s['model']}, {decoding}, {s['samples']} sample(s)"),
            ("accuracy" if s["samples"] == 1 else f"mean@{s['samples']}", f"{100 * s['accuracy']:.1f}%  (95% CI {100 * low:.1f}-{100 * high:.1f}%)"),
        ]
        if s["samples"] > 1:
            rows += [(f"pass@{k}", f"{100 * v:.1f}%") for k, v in s["pass_at_k"].items()]
        tokens = s["response_tokens"]
        rows += [
            ("response tokens mean / median / max", f"{tokens['mean']:.0f} / {tokens['median']:.0f} / {tokens['max']}"),
            (f"truncated at {s['max_new_tokens']} tokens", f"{100 * s['truncated_fraction']:.1f}%"),
            ("no final answer", f"{100 * s['no_final_answer_fraction']:.1f}%"),
            ("unparsable answers (counted wrong)", str(s["unparsable_answers"])),
        ]
        for field in BREAKDOWNS:
            groups = s.get(f"by_{field}", {})
            if groups:
                rows.append((f"by {field}", ""))
            rows += [(f"  {value} ({group['problems']})", f"{100 * group['accuracy']:.1f}%") for value, group in groups.items()]
        rows.append(("wall time", f"{s['wall_seconds']:.0f} s (generation {s['generation_seconds']:.0f} s)"))
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def evaluate(
    generator: Generator,
    task: Task,
    *,
    samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 1024,
    limit: int | None = None,
    seed: int = 0,
    model_name: str = "",
    partial_file: Path | None = None,
    chunk: int = 64,
) -> EvalResult:
    """Generate `samples` responses per problem of `task` (its first `limit`), grade them, summarise.

    With `partial_file`, the completions of every `chunk` problems are appended to it as they finish,
    and problems already there (from an interrupted run with the same settings) are not generated again.
    """
    examples = task.examples[:limit]
    if not examples:
        raise ValueError(f"task {task.name!r}: nothing to evaluate (limit={limit})")
    started = time.perf_counter()
    prompts = [task.prompt(example, generator.tokenizer) for example in examples]
    settings = {"benchmark": task.name, "model": model_name, "samples": samples, "temperature": temperature,
                "top_p": top_p, "max_new_tokens": max_new_tokens, "seed": seed, "template": task.template}
    done = read_partial(partial_file, settings) if partial_file is not None else {}
    todo = [i for i, example in enumerate(examples) if example.id not in done]
    for start in range(0, len(todo), chunk):
        indices = todo[start : start + chunk]
        rows = generator.generate(
            [prompts[i] for i in indices], max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
            samples=samples, seed=seed + start,
        )
        finished = {examples[i].id: row for i, row in zip(indices, rows)}
        done.update(finished)
        if partial_file is not None:
            append_partial(partial_file, settings, finished)
    completions = [done[example.id] for example in examples]
    generated = time.perf_counter()
    responses = [c.text for row in completions for c in row]
    golds = [example.answer for example in examples for _ in range(samples)]
    before = grading_stats()
    correct = task.grade(responses, golds)
    after = grading_stats()
    records = []
    for index, (example, prompt, row) in enumerate(zip(examples, prompts, completions)):
        for sample, completion in enumerate(row):
            flat = index * samples + sample
            records.append(
                {
                    "id": example.id,
                    "sample": sample,
                    "prompt": prompt,
                    "response": completion.text,
                    "extracted_answer": extract_final_answer(completion.text),
                    "gold": example.answer,
                    "correct": bool(correct[flat]),
                    "num_tokens": completion.num_tokens,
                    "finish_reason": completion.finish_reason,
                    **{field: example.meta[field] for field in BREAKDOWNS if field in example.meta},
                }
            )
    summary = {
        "benchmark": task.name,
        "model": model_name,
        "num_problems": len(examples),
        "samples": samples,
        "temperature": temperature,
        "top_p": top_p,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "template": task.template,
        **summarise(examples, records, samples),
        "grading": {key: after[key] - before[key] for key in ("unparsed", "timeouts", "errors")},
        "generation_seconds": round(generated - started, 2),
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
    no_answer = sum(record["extracted_answer"] is None for record in records)
    summary["unparsable_answers"] = max(0, summary["grading"]["unparsed"] - no_answer)
    return EvalResult(summary, records)


def read_partial(path: Path, settings: dict[str, Any]) -> dict[str, list[Completion]]:
    """Completions saved by an interrupted evaluation with the same settings (none if the file is absent)."""
    if not path.exists():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        header = json.loads(lines[0])["settings"] if lines else None
        rows = [json.loads(line) for line in lines[1:] if line.strip()]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a partial evaluation file ({err}); delete it or pass --overwrite") from None
    if header != settings:
        raise ValueError(f"{path} holds completions made with other settings ({header}); delete it or pass --overwrite")
    return {row["id"]: [Completion(**c) for c in row["completions"]] for row in rows}


def append_partial(path: Path, settings: dict[str, Any], finished: dict[str, list[Completion]]) -> None:
    """Append finished problems' completions (the settings line first when the file is new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", encoding="utf-8") as out:
        if new:
            out.write(json.dumps({"settings": settings}) + "\n")
        for example_id, row in finished.items():
            out.write(json.dumps({"id": example_id, "completions": [dataclasses.asdict(c) for c in row]}) + "\n")


def summarise(examples: Sequence[Example], records: Sequence[dict[str, Any]], samples: int) -> dict[str, Any]:
    """Accuracy (+ Wilson 95% interval), pass@k, breakdowns and length statistics of graded records."""
    per_problem = [sum(r["correct"] for r in records[i * samples : (i + 1) * samples]) for i in range(len(examples))]
    total = len(records)
    accuracy = sum(per_problem) / total
    # Over problems. With N samples a problem's mean@N has variance <= p(1-p), so the same
    # interval is conservative for mean@N.
    interval = _wilson(accuracy, len(examples), 1.96)
    tokens = [r["num_tokens"] for r in records]
    summary: dict[str, Any] = {
        "accuracy": accuracy,
        "accuracy_ci95": list(interval),
        "correct": sum(per_problem),
        "pass_at_k": {k: statistics.fmean(pass_at_k(samples, c, k) for c in per_problem) for k in pass_at_k_values(samples)},
        "response_tokens": {
            "mean": statistics.fmean(tokens),
            "median": statistics.median(tokens),
            "p90": sorted(tokens)[min(total - 1, math.ceil(0.9 * total) - 1)],
            "max": max(tokens),
        },
        "truncated_fraction": sum(r["finish_reason"] == "length" for r in records) / total,
        "no_final_answer_fraction": sum(r["extracted_answer"] is None for r in records) / total,
    }
    if samples > 1:
        summary[f"mean@{samples}"] = accuracy
    for field in BREAKDOWNS:
        groups: dict[str, list[int]] = defaultdict(list)
        for example, c in zip(examples, per_problem):
            if field in example.meta:
                groups[str(example.meta[field])].append(c)
        if groups:
            summary[f"by_{field}"] = {
                value: {"problems": len(cs), "accuracy": sum(cs) / (len(cs) * samples)} for value, cs in sorted(groups.items())
            }
    return summary


def evaluate_model(model, tokenizer, task: Task, *, batch_size: int = 16, progress: bool = True,
                   **settings: Any) -> EvalResult:
    """`evaluate` (``settings``: its keyword arguments) with HF generation on an in-memory model, ``batch_size``
    sequences at a time; the model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        generator = HFGenerator(model, tokenizer, batch_size=batch_size, progress=progress)
        name = getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "")
        return evaluate(generator, task, model_name=str(name), **settings)
    finally:
        model.train(was_training)
