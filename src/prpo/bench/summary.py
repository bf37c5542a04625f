"""Turn a benchmark results directory into a Markdown table with 95% intervals and PNG plots.

Collapse, as fixed before any run (docs/bench.md): a run has collapsed at the first held-out
evaluation where its greedy accuracy lies `COLLAPSE_ACCURACY_DROP` (15 points) or more below its
best so far, or its final-answer rate or mean response length lies `COLLAPSE_RELATIVE_DROP` (30%)
or more below its best (highest) so far. The in-training monitor (`prpo.training.metrics.CollapseMonitor`,
final-answer rate down 30% while the training length moves 30% either way) is scored against it:
hits, misses, false alarms.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from prpo.bench.runner import EVAL_FILE
from prpo.bench.stats import compare, ended_collapsed, mean_ci, wilson
from prpo.training.metrics import METRICS_FILE, SAMPLES_FILE, CollapseMonitor, find_jsonl, read_jsonl
from prpo.provenance import describe, read_provenance

COLLAPSE_ACCURACY_DROP = 0.15
COLLAPSE_RELATIVE_DROP = 0.30


def load_runs(results: Path) -> dict[tuple[str, str, str], list[dict]]:
    """``(level, quality, method) -> [{"seed", "eval": rows, "train": rows}, ...]`` for every run evaluated after step 0.

    A run cut short counts up to its last evaluation: a method's final step is the last one that
    all of its runs reached.
    """
    runs: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for eval_path in sorted((results / "runs").glob(f"*/*/*/seed-*/{EVAL_FILE}")):
        folder = eval_path.parent
        metrics = folder / METRICS_FILE
        evals = read_jsonl(eval_path)
        if len(evals) < 2:  # stopped before its first evaluation after step 0
            continue
        key = (folder.parent.parent.parent.name, folder.parent.parent.name, folder.parent.name)
        runs[key].append({
            "seed": int(folder.name.split("-")[1]),
            "eval": evals,
            "train": [r for r in read_jsonl(metrics) if "step_time" in r] if find_jsonl(metrics) else [],
        })
    if not runs:
        raise ValueError(f"{results}: no finished runs under runs/*/*/*/seed-*/{EVAL_FILE}")
    return runs


def level_order(results: Path, runs: dict) -> list[str]:
    """Levels easiest first, as bench.json lists them (else by name)."""
    path = results / "bench.json"
    listed = json.loads(path.read_text()).get("levels", []) if path.exists() else []
    present = {level for level, _, _ in runs}
    return [level for level in listed if level in present] + sorted(present - set(listed))


def curve(runs: list[dict], source: str, key: str) -> tuple[list[int], list[list[float]]]:
    """Steps present in every run, and the per-run values of ``key`` at those steps."""
    steps = sorted(set.intersection(*[{row["step"] for row in run[source] if key in row} for run in runs]))
    values = [[next(r[key] for r in run[source] if r["step"] == s and key in r) for run in runs] for s in steps]
    return steps, values


def final(key: str) -> Callable[[dict], float | None]:
    """A run's value of ``key`` at its last evaluation (None when absent)."""
    return lambda run: run["eval"][-1].get(key)


def auc(run: dict) -> float:
    """Area under the greedy held-out accuracy curve, per step: trapezoids over the evaluations / step range.

    E.g. evaluations 0.4, 0.5, 0.6 at steps 0, 5, 10: (0.45 * 5 + 0.55 * 5) / 10 = 0.5.
    """
    rows = [r for r in run["eval"] if "heldout/accuracy" in r]
    span = rows[-1]["step"] - rows[0]["step"]
    area = sum((b["step"] - a["step"]) * (a["heldout/accuracy"] + b["heldout/accuracy"]) / 2
               for a, b in zip(rows, rows[1:]))
    return area / span if span else rows[0]["heldout/accuracy"]


def paired_difference(group: list[dict], baseline: list[dict], measure: Callable[[dict], float | None]) -> tuple[float, float]:
    """Mean and 95% half-width of ``measure(run) - measure(baseline run of the same seed)`` over shared seeds.

    Runs of one seed start from the same policy with the same data order and sampling seed, so the
    paired difference removes the seed's share of the spread.
    """
    base = {run["seed"]: measure(run) for run in baseline}
    diffs = [measure(run) - base[run["seed"]] for run in group
             if base.get(run["seed"]) is not None and measure(run) is not None]
    return mean_ci(diffs) if diffs else (math.nan, math.nan)


def collapse_step(evals: list[dict]) -> int | None:
    """The first evaluation step at which the run has collapsed (module docstring), else None."""
    best_acc = best_rate = best_len = -math.inf
    for row in evals:
        acc, rate, length = row["heldout/accuracy"], row["heldout/final_answer_rate"], row["heldout/length"]
        keep = 1 - COLLAPSE_RELATIVE_DROP
        if (acc <= best_acc - COLLAPSE_ACCURACY_DROP + 1e-9 or 0 < best_rate and rate <= keep * best_rate + 1e-9
                or length <= keep * best_len + 1e-9):
            return row["step"]
        best_acc, best_rate, best_len = max(best_acc, acc), max(best_rate, rate), max(best_len, length)
    return None


def monitor_fired(run: dict, window: int = 3) -> bool:
    """Whether the in-training collapse monitor of `prpo.training.metrics` fires at any step of the run."""
    monitor = CollapseMonitor(window=window)
    return any(monitor.update(row) is not None for row in run["train"])


def _train_mean(group: list[dict], key: str) -> tuple[float, float]:
    """Mean over steps of a training metric, then mean and 95% interval over runs (NaN when not logged)."""
    per_run = [statistics.fmean(r[key] for r in run["train"] if r.get(key) is not None)
               for run in group if any(r.get(key) is not None for r in run["train"])]
    return mean_ci(per_run) if per_run else (math.nan, math.nan)


def summarise(results: Path) -> dict[str, dict]:
    """Per (level, PRM quality, method): accuracies, paired differences to GRPO, sparsity of the outcome signal, collapse."""
    runs = load_runs(results)
    levels = level_order(results, runs)
    table: dict[str, dict] = {}
    for (level, quality, method), group in sorted(runs.items(), key=lambda kv: (levels.index(kv[0][0]), kv[0][1:])):
        steps, acc = curve(group, "eval", "heldout/accuracy")
        _, sampled = curve(group, "eval", "heldout/sampled_accuracy")
        _, length = curve(group, "eval", "heldout/length")
        _, answered = curve(group, "eval", "heldout/final_answer_rate")
        step_times = [statistics.fmean(r["step_time"] for r in run["train"]) for run in group if run["train"]]
        collapses = [collapse_step(run["eval"]) is not None for run in group]
        ended = [ended_collapsed(run) for run in group]
        fired = [monitor_fired(run) for run in group]
        table[f"{level}/{quality}/{method}"] = {
            "level": level, "quality": quality, "method": method, "seeds": len(group), "steps": steps,
            "accuracy_curve": [statistics.fmean(v) for v in acc],
            "initial_accuracy": mean_ci(acc[0]), "final_accuracy": mean_ci(acc[-1]),
            "initial_sampled_accuracy": mean_ci(sampled[0]), "final_sampled_accuracy": mean_ci(sampled[-1]),
            "auc": mean_ci([auc(run) for run in group]),
            "same_outcome_groups": _train_mean(group, "frac_groups_same_outcome"),
            "beta_zero_share": _train_mean(group, "beta_zero_token_share"),
            "clip_share": _train_mean(group, "clip_share"),
            "final_length": statistics.fmean(length[-1]), "final_answer_rate": statistics.fmean(answered[-1]),
            "collapses": sum(collapses), "collapse_interval": wilson(sum(collapses), len(group)),
            "ended_collapsed": sum(ended), "ended_collapsed_interval": wilson(sum(ended), len(group)),
            "monitor": {"hits": sum(c and f for c, f in zip(collapses, fired)),
                        "misses": sum(c and not f for c, f in zip(collapses, fired)),
                        "false_alarms": sum(f and not c for c, f in zip(collapses, fired))},
            "fall_from_best": mean_ci([max(run) - run[-1] for run in zip(*acc)]),
            "step_time": statistics.fmean(step_times) if step_times else math.nan,
        }
    for row in table.values():
        baseline = runs.get((row["level"], "clean", "grpo"), [])  # GRPO never reads the PRM
        grpo = table.get(f"{row['level']}/clean/grpo")
        target = grpo["final_accuracy"][0] if grpo else math.nan
        reached = [s for s, a in zip(row["steps"], row["accuracy_curve"]) if a >= target]
        row["steps_to_grpo_final"] = reached[0] if reached else None
        group = runs[(row["level"], row["quality"], row["method"])]
        row["vs_grpo"] = paired_difference(group, baseline, final("heldout/accuracy"))
        row["vs_grpo_sampled"] = paired_difference(group, baseline, final("heldout/sampled_accuracy"))
        row["vs_grpo_auc"] = paired_difference(group, baseline, auc)
    return table


# Pairs tested in every level and PRM quality: (method, baseline); GRPO reads no PRM, so its clean runs are
# the baseline of every quality. The first two are the registered primary endpoints (docs/bench.md); the last is
# Hypothesis 2's at the hard level.
COMPARISONS = (("prpo", "grpo"), ("prpo_sp", "prpo"), ("process_only", "grpo"), ("prpo_sp", "grpo"),
               ("process_only", "prpo"), ("process_only", "prpo_sp"), ("prpo_sp_uniform", "prpo"))


def paired_tests(results: Path) -> list[dict]:
    """`prpo.bench.stats.compare` for each pair of `COMPARISONS` present, per level and PRM quality."""
    runs = load_runs(results)
    rows = []
    for level in level_order(results, runs):
        for quality in ("clean", "noisy", "biased"):
            for method, baseline in COMPARISONS:
                group = runs.get((level, quality, method))
                base = runs.get((level, quality if baseline not in ("grpo", "dr_grpo") else "clean", baseline))
                if group and base:
                    rows.append({"level": level, "quality": quality, "method": method, "baseline": baseline,
                                 **compare(group, base)})
    return rows


def markdown_of_tests(rows: list[dict]) -> str:
    """The paired exact tests as a table: the final greedy difference A - B (points, mean ± 95% t-interval,
    seeds up / down and the sign test's p, and whether it is established by the registered rule), McNemar
    of "ended collapsed" by seed (only A / only B), McNemar by problem of the final greedy answers."""
    lines = [("| level | PRM | A | B | seeds | final greedy A - B (points) | A > B / A < B (sign test p) | established "
              "| ended collapsed only A / only B (McNemar p) | problems right only A / only B (McNemar p) |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        sign, ended = row["final_greedy"], row["ended_collapsed"]
        problem = row.get("by_problem")
        by_problem = "—" if problem is None else f"{problem['only_a']} / {problem['only_b']} ({problem['p']:.3g})"
        lines.append(f"| {row['level']} | {row['quality']} | {row['method']} | {row['baseline']} | {row['seeds']['n']} "
                     f"| {_signed((sign['mean'], sign['half_width']))} "
                     f"| {sign['positive']} / {sign['negative']} ({sign['p']:.3g}) | {'yes' if sign['established'] else 'no'} "
                     f"| {ended['only_a']} / {ended['only_b']} ({ended['p']:.3g}) | {by_problem} |")
    return "\n".join(lines) + "\n"


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
    """The results table (accuracies in %, mean ± 95% t-interval half-width over seeds; "minus GRPO":
    the per-seed difference to clean GRPO of the same level, in points; AUC: mean greedy held-out
    accuracy under the curve; ended collapsed: `prpo.bench.stats.ended_collapsed` at the final
    evaluation; dipped: collapsed at some evaluation by the 2026-11-29 definition (`collapse_step`);
    both with 95% Wilson intervals; the monitor's hits / misses / false alarms against the dips)."""
    lines = [
        "| level | PRM | method | seeds | final step | greedy start | greedy final | sampled final | AUC "
        "| minus GRPO, greedy | minus GRPO, sampled | minus GRPO, AUC | steps to GRPO's final "
        "| all-same-outcome groups | tokens with beta = 0 | PRM overruled (prpo_sp clip) | final-answer rate "
        "| final length | ended collapsed (95% CI) | dipped (95% CI) | monitor hit / miss / false alarm "
        "| fall from best | step time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table.values():
        reach = "—" if row["steps_to_grpo_final"] is None else str(row["steps_to_grpo_final"])
        low, high = row["collapse_interval"]
        ended_low, ended_high = row["ended_collapsed_interval"]
        monitor = row["monitor"]
        lines.append(
            f"| {row['level']} | {row['quality']} | {row['method']} | {row['seeds']} | {row['steps'][-1]} "
            f"| {_pct(row['initial_accuracy'])} | {_pct(row['final_accuracy'])} | {_pct(row['final_sampled_accuracy'])} "
            f"| {_pct(row['auc'])} | {_signed(row['vs_grpo'])} | {_signed(row['vs_grpo_sampled'])} "
            f"| {_signed(row['vs_grpo_auc'])} | {reach} | {_pct(row['same_outcome_groups'])} "
            f"| {_pct(row['beta_zero_share'])} | {_pct(row['clip_share'])} | {100 * row['final_answer_rate']:.0f}% "
            f"| {row['final_length']:.1f} "
            f"| {row['ended_collapsed']}/{row['seeds']} ({100 * ended_low:.0f}-{100 * ended_high:.0f}%) "
            f"| {row['collapses']}/{row['seeds']} ({100 * low:.0f}-{100 * high:.0f}%) "
            f"| {monitor['hits']} / {monitor['misses']} / {monitor['false_alarms']} "
            f"| {_pct(row['fall_from_best'])} | {row['step_time']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _band(ax, steps: list[int], values: list[list[float]], label: str) -> None:
    """Mean over runs against step, with its 95% band."""
    stats = [mean_ci(v) for v in values]
    means = [m for m, _ in stats]
    halves = [0.0 if math.isnan(h) else h for _, h in stats]
    ax.plot(steps, means, label=label)
    ax.fill_between(steps, [m - h for m, h in zip(means, halves)], [m + h for m, h in zip(means, halves)], alpha=0.15)


def plot(results: Path, out_dir: Path, table: dict[str, dict]) -> list[Path]:
    """One figure per level (held-out greedy and sampled accuracy, all-same-outcome groups and tokens with
    beta = 0 per training step; one line per PRM quality and method), and the PRPO-GRPO summary plot of
    ``table`` (`summarise` of the same results)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load_runs(results)
    levels = level_order(results, runs)
    panels = [("eval", "heldout/accuracy", "held-out accuracy, greedy"),
              ("eval", "heldout/sampled_accuracy", "held-out accuracy, sampled T=1"),
              ("train", "frac_groups_same_outcome", "groups with all-same outcomes"),
              ("train", "beta_zero_token_share", "share of tokens with beta = 0")]
    written = []
    for level in levels:
        fig, axes = plt.subplots(1, len(panels), figsize=(22, 4.5))
        for ax, (source, key, title) in zip(axes, panels):
            for (run_level, quality, method), group in sorted(runs.items()):
                if run_level != level:
                    continue
                steps, values = curve(group, source, key)
                if steps:
                    _band(ax, steps, values, method if quality == "clean" else f"{method} ({quality} PRM)")
            ax.set_title(title)
            ax.set_xlabel("RL step")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"prpo bench, level {level}: mean over seeds, 95% interval")
        fig.tight_layout()
        written.append(out_dir / f"bench-{level}.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    written.append(plot_difference(table, levels, out_dir / "bench-prpo-minus-grpo.png"))
    return written


def plot_difference(table: dict[str, dict], levels: list[str], path: Path) -> Path:
    """PRPO minus GRPO (paired, final greedy accuracy and AUC) against difficulty, one line per PRM quality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in zip(axes, ("vs_grpo", "vs_grpo_auc"), ("final greedy accuracy", "area under the curve")):
        for quality in ("clean", "noisy", "biased"):
            points = [(i, table[f"{level}/{quality}/prpo"][key]) for i, level in enumerate(levels)
                      if f"{level}/{quality}/prpo" in table]
            if points:
                ax.errorbar([i for i, _ in points], [100 * m for _, (m, _) in points],
                            yerr=[0 if math.isnan(h) else 100 * h for _, (_, h) in points],
                            marker="o", capsize=4, label=f"{quality} PRM")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(levels)), levels)
        ax.set_xlabel("difficulty level (easiest first)")
        ax.set_ylabel("PRPO - GRPO (points, paired by seed)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def samples_digest(results: Path, shown: int = 4) -> str:
    """What each method learned, from the raw ``samples.jsonl``: per level, PRM quality and method, the last
    logged training step's first ``shown`` samples of seed 0 and of every run that ended collapsed
    (right or wrong, reward and the response with its lines joined by `` | ``). Empty when no run kept
    its samples (a folder of evaluations and metrics only)."""
    runs = load_runs(results)
    shown_any = False
    lines = ["# Training samples at each run's last logged step", "",
             "Seed 0 of every method, and every run that ended collapsed (`prpo.bench.stats.ended_collapsed`).", ""]
    for level in level_order(results, runs):
        for (run_level, quality, method), group in sorted(runs.items()):
            if run_level != level:
                continue
            lines += [f"## {level} / {quality} PRM / {method}", ""]
            for run in sorted(group, key=lambda r: r["seed"]):
                collapsed = ended_collapsed(run)
                path = results / "runs" / level / quality / method / f"seed-{run['seed']}" / SAMPLES_FILE
                if not (run["seed"] == 0 or collapsed) or not find_jsonl(path):
                    continue
                samples, shown_any = read_jsonl(path), True
                last = [row for row in samples if row["step"] == samples[-1]["step"]][:shown] if samples else []
                final_eval = run["eval"][-1]
                lines.append(f"seed {run['seed']}, step {last[0]['step'] if last else '—'}: final greedy "
                             f"{100 * final_eval['heldout/accuracy']:.0f}%, answers "
                             f"{100 * final_eval['heldout/final_answer_rate']:.0f}%, "
                             f"{'ended collapsed' if collapsed else 'not collapsed'}")
                lines += ["", "```"] + [f"{'right' if row['correct'] else 'wrong'} {row['reward']:+.1f}  "
                                        + row["response"].replace("\n", " | ") for row in last] + ["```", ""]
    return "\n".join(lines) + "\n" if shown_any else ""


def code_provenance(results: Path) -> tuple[str, list[str]]:
    """The commit(s) the runs of ``results`` came from (each run folder's provenance.json), and warnings:
    runs from several commits, with uncommitted changes, or with no provenance at all."""
    folders = sorted(path.parent for path in (results / "runs").glob(f"*/*/*/seed-*/{EVAL_FILE}"))
    entries = [entry for folder in folders for entry in read_provenance(folder)]
    line, warnings = describe(entries)
    missing = sum(1 for folder in folders if not read_provenance(folder))
    if missing:
        warnings.append(f"{missing} of {len(folders)} runs have no provenance.json (written before prpo recorded it)")
    return line, warnings


def write_summary(results: Path) -> Path:
    """``summary.md`` (table and paired tests), ``summary.json`` (``table``, ``tests``), ``samples.md``
    (`samples_digest`) and the PNG plots in ``results``."""
    table = summarise(results)
    tests = paired_tests(results)
    (results / "summary.json").write_text(json.dumps({"table": table, "tests": tests}, indent=2) + "\n")
    plots = plot(results, results, table)
    digest = samples_digest(results)
    if digest:  # a folder without samples keeps the digest it has
        (results / "samples.md").write_text(digest)
    text = (markdown(table) + "\nPaired exact tests (`prpo.bench.stats`):\n\n" + markdown_of_tests(tests) + "\n"
            + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n")
    path = results / "summary.md"
    path.write_text(text)
    return path


def choose_learning_rates(folders: Sequence[Path], level: str) -> dict[str, dict]:
    """The registered rule of docs/bench.md: for each method, the learning rate whose runs (one folder per
    rate, ``--learning-rate``) end with the highest mean final sampled accuracy on ``level``; ties go to
    the lower rate. Returns ``{method: {"chosen": lr, "sampled": {lr: mean final sampled accuracy}}}``."""
    scores: dict[str, dict[float, float]] = defaultdict(dict)
    for folder in folders:
        rates = json.loads((folder / "bench.json").read_text())["preset"]["learning_rates"]
        for (run_level, quality, method), group in load_runs(folder).items():
            if run_level == level and quality == "clean":
                scores[method][rates[method]] = statistics.fmean(run["eval"][-1]["heldout/sampled_accuracy"]
                                                                 for run in group)
    return {method: {"chosen": max(sorted(by_rate), key=lambda lr: by_rate[lr]), "sampled": dict(sorted(by_rate.items()))}
            for method, by_rate in scores.items()}
