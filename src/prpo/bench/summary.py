"""Turn a benchmark results directory into a Markdown table with 95% intervals and PNG plots."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from prpo.bench.runner import EVAL_FILE
from prpo.metrics import METRICS_FILE, CollapseMonitor, read_jsonl

# Two-sided 95% quantiles of Student's t by degrees of freedom (normal beyond the table).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t95(df: int) -> float:
    """Student-t 97.5% quantile for ``df`` degrees of freedom (the nearest tabulated df at or below)."""
    if df < 1:
        return math.nan
    return _T95[max(d for d in _T95 if d <= df)] if df <= 30 else 1.96


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% t-interval over seeds (half-width NaN for one seed)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def load_runs(results: Path) -> dict[tuple[str, str], list[dict]]:
    """``(setting, method) -> [{"seed", "eval": rows, "train": rows}, ...]`` for every run evaluated after step 0.

    A run cut short counts up to its last evaluation: a method's final step is the last one that
    all of its runs reached.
    """
    runs: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for eval_path in sorted((results / "runs").glob(f"*/*/seed-*/{EVAL_FILE}")):
        folder = eval_path.parent
        metrics = folder / METRICS_FILE
        evals = read_jsonl(eval_path)
        if len(evals) < 2:  # stopped before its first evaluation after step 0
            continue
        runs[(folder.parent.parent.name, folder.parent.name)].append({
            "seed": int(folder.name.split("-")[1]),
            "eval": evals,
            "train": [r for r in read_jsonl(metrics) if "step_time" in r] if metrics.exists() else [],
        })
    if not runs:
        raise ValueError(f"{results}: no finished runs under runs/*/*/seed-*/{EVAL_FILE}")
    return runs


def curve(runs: list[dict], source: str, key: str) -> tuple[list[int], list[list[float]]]:
    """Steps present in every run, and the per-run values of ``key`` at those steps."""
    steps = sorted(set.intersection(*[{row["step"] for row in run[source] if key in row} for run in runs]))
    values = [[next(r[key] for r in run[source] if r["step"] == s and key in r) for run in runs] for s in steps]
    return steps, values


def paired_difference(group: list[dict], baseline: list[dict], key: str) -> tuple[float, float]:
    """Mean and 95% half-width of ``final(run) - final(baseline run of the same seed)`` over shared seeds.

    Runs of one seed start from the same policy with the same data order and sampling seed, so the
    paired difference removes the seed's share of the spread. ``final`` is the run's last evaluation.
    """
    final = {run["seed"]: run["eval"][-1][key] for run in baseline if key in run["eval"][-1]}
    diffs = [run["eval"][-1][key] - final[run["seed"]]
             for run in group if run["seed"] in final and key in run["eval"][-1]]
    return mean_ci(diffs) if diffs else (math.nan, math.nan)


def collapsed(run: dict, window: int = 3) -> bool:
    """Whether the collapse monitor of `prpo.metrics` fires at any step of the run's training metrics."""
    monitor = CollapseMonitor(window=window)
    return any(monitor.update(row) is not None for row in run["train"])


def summarise(results: Path) -> dict[str, dict]:
    """Per (setting, method): final held-out accuracies, steps to GRPO's final accuracy, lengths, collapse, step time."""
    runs = load_runs(results)
    table: dict[str, dict] = {}
    for (setting, method), group in sorted(runs.items()):
        steps, acc = curve(group, "eval", "heldout/accuracy")
        _, acc_long = curve(group, "eval", "heldout_long/accuracy")
        _, length = curve(group, "eval", "heldout/length")
        _, answered = curve(group, "eval", "heldout/final_answer_rate")
        _, sampled = curve(group, "eval", "heldout/sampled_accuracy")
        train_first = [statistics.fmean(r["accuracy"] for r in run["train"][:3]) for run in group if run["train"]]
        train_last = [statistics.fmean(r["accuracy"] for r in run["train"][-3:]) for run in group if run["train"]]
        step_times = [statistics.fmean(r["step_time"] for r in run["train"]) for run in group if run["train"]]
        table[f"{setting}/{method}"] = {
            "setting": setting, "method": method, "seeds": len(group), "steps": steps,
            "accuracy_curve": [statistics.fmean(v) for v in acc],
            "initial_accuracy": mean_ci(acc[0]), "final_accuracy": mean_ci(acc[-1]),
            "final_accuracy_long": mean_ci(acc_long[-1]),
            "initial_sampled_accuracy": mean_ci(sampled[0]) if sampled else (math.nan, math.nan),
            "final_sampled_accuracy": mean_ci(sampled[-1]) if sampled else (math.nan, math.nan),
            "train_accuracy_first": mean_ci(train_first) if train_first else (math.nan, math.nan),
            "train_accuracy_last": mean_ci(train_last) if train_last else (math.nan, math.nan),
            "final_length": statistics.fmean(length[-1]), "final_answer_rate": statistics.fmean(answered[-1]),
            "collapsed_seeds": sum(collapsed(run) for run in group),
            # How far each run ended below its own best held-out accuracy (0 when it ended at its best).
            "fall_from_best": mean_ci([max(run) - run[-1] for run in zip(*acc)]),
            "step_time": statistics.fmean(step_times) if step_times else math.nan,
        }
    for row in table.values():
        setting = row["setting"] if (row["setting"], "grpo") in runs else "clean"  # GRPO never reads the PRM
        grpo = table.get(f"{setting}/grpo")
        target = grpo["final_accuracy"][0] if grpo else math.nan
        reached = [s for s, a in zip(row["steps"], row["accuracy_curve"]) if a >= target]
        row["steps_to_grpo_final"] = reached[0] if reached else None
        baseline = runs.get((setting, "grpo"), [])
        group = runs[(row["setting"], row["method"])]
        row["vs_grpo"] = paired_difference(group, baseline, "heldout/accuracy")
        row["vs_grpo_sampled"] = paired_difference(group, baseline, "heldout/sampled_accuracy")
    return table


def _pct(mean_half: tuple[float, float]) -> str:
    mean, half = mean_half
    if math.isnan(mean):
        return "—"
    return f"{100 * mean:.1f} ± {100 * half:.1f}" if not math.isnan(half) else f"{100 * mean:.1f}"


def _signed(mean_half: tuple[float, float]) -> str:
    """A difference in points: ``+3.2 ± 1.5``, or — where there is nothing to compare."""
    mean, half = mean_half
    if math.isnan(mean):
        return "—"
    return f"{100 * mean:+.1f} ± {100 * half:.1f}" if not math.isnan(half) else f"{100 * mean:+.1f}"


def markdown(table: dict[str, dict]) -> str:
    """The results table (accuracies in %, mean ± 95% t-interval half-width over seeds;
    "minus GRPO" columns: the per-seed difference to GRPO's final accuracy, in points; "fall from
    best": how far each run's final greedy accuracy lies below its own best evaluation)."""
    lines = [
        "| setting | method | seeds | final step | greedy held-out start | greedy held-out final | sampled held-out start "
        "| sampled held-out final | training acc. first 3 steps | training acc. last 3 steps | longer chains final "
        "| minus GRPO, greedy (paired) | minus GRPO, sampled (paired) "
        "| steps to GRPO's final (greedy) | final length | final-answer rate | collapse | fall from best (greedy) "
        "| step time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table.values():
        reach = "—" if row["steps_to_grpo_final"] is None else str(row["steps_to_grpo_final"])
        collapse = f"yes ({row['collapsed_seeds']}/{row['seeds']})" if row["collapsed_seeds"] * 2 > row["seeds"] else (
            f"no ({row['collapsed_seeds']}/{row['seeds']})")
        lines.append(
            f"| {row['setting']} | {row['method']} | {row['seeds']} | {row['steps'][-1]} | {_pct(row['initial_accuracy'])} "
            f"| {_pct(row['final_accuracy'])} | {_pct(row['initial_sampled_accuracy'])} "
            f"| {_pct(row['final_sampled_accuracy'])} | {_pct(row['train_accuracy_first'])} "
            f"| {_pct(row['train_accuracy_last'])} | {_pct(row['final_accuracy_long'])} "
            f"| {_signed(row['vs_grpo'])} | {_signed(row['vs_grpo_sampled'])} | {reach} "
            f"| {row['final_length']:.1f} | {100 * row['final_answer_rate']:.0f}% | {collapse} "
            f"| {_pct(row['fall_from_best'])} | {row['step_time']:.2f} |"
        )
    clean = {r["method"]: r for r in table.values() if r["setting"] == "clean"}
    if "prpo" in clean and "grpo" in clean and clean["grpo"]["step_time"] > 0:
        lines += ["", f"PRPO/GRPO step-time ratio (clean runs): {clean['prpo']['step_time'] / clean['grpo']['step_time']:.2f}"]
    return "\n".join(lines) + "\n"


def plot(results: Path, out_dir: Path) -> list[Path]:
    """Held-out accuracy and response length against step, one line per method with a 95% band, per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load_runs(results)
    written = []
    for setting in sorted({s for s, _ in runs}):
        fig, axes = plt.subplots(1, 4, figsize=(21, 4.5))
        panels = [("eval", "heldout/accuracy", "held-out accuracy, greedy (trained lengths)"),
                  ("eval", "heldout/sampled_accuracy", "held-out accuracy, sampled T=1 (trained lengths)"),
                  ("eval", "heldout_long/accuracy", "held-out accuracy (longer chains)"),
                  ("train", "completions/mean_length", "training response length (tokens)")]
        for ax, (source, key, title) in zip(axes, panels):
            for (run_setting, method), group in sorted(runs.items()):
                if run_setting != setting:
                    continue
                steps, values = curve(group, source, key)
                if not steps:
                    continue
                stats = [mean_ci(v) for v in values]
                means = [m for m, _ in stats]
                halves = [0.0 if math.isnan(h) else h for _, h in stats]
                ax.plot(steps, means, label=method)
                ax.fill_between(steps, [m - h for m, h in zip(means, halves)],
                                [m + h for m, h in zip(means, halves)], alpha=0.15)
            ax.set_title(title)
            ax.set_xlabel("RL step")
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.suptitle(f"prpo bench ({setting} PRM): mean over seeds, 95% interval")
        fig.tight_layout()
        path = out_dir / f"bench-{setting}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_summary(results: Path) -> Path:
    """``summary.md`` (table), ``summary.json`` and the PNG plots in ``results``."""
    table = summarise(results)
    (results / "summary.json").write_text(json.dumps(table, indent=2) + "\n")
    plots = plot(results, results)
    text = markdown(table) + "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n"
    path = results / "summary.md"
    path.write_text(text)
    return path
