"""Summarise `prpo train` runs over seeds from their raw files: held-out accuracy before and after, the exact
one-sided McNemar test per seed, the distribution over seeds, and the choice among candidate settings.

A folder holds either ``seed-S/`` run folders (one setting) or ``NAME/seed-S/`` (candidate settings). Every
number is recomputed from each run's ``eval/{before,after}/records.jsonl`` and ``provenance.json``, so the
committed ``summary.json`` can be rebuilt (tests/test_committed_results.py)::

    python -m prpo.training.seed_summary docs/quickstart-runs/test          # print the table
    python -m prpo.training.seed_summary docs/quickstart-runs/test --write  # and write summary.json

The choice (docs/quickstart.md, registered before the runs): the setting whose worst seed gains most; ties to
the higher median gain, then to the shorter median wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any

from prpo.evaluation.evaluate import SIGNIFICANCE
from prpo.evaluation.evaluate import mcnemar_improvement, paired_correctness
from prpo.provenance import describe, read_provenance
from prpo.training.metrics import read_jsonl

SUMMARY_FILE = "summary.json"


def seed_result(run: Path) -> dict[str, Any]:
    """One run's before/after accuracy, McNemar test and wall time, from its raw files."""
    before = read_jsonl(run / "eval" / "before" / "records.jsonl")
    after = read_jsonl(run / "eval" / "after" / "records.jsonl")
    right_before, right_after = paired_correctness(before, after)
    test = mcnemar_improvement(right_before, right_after)
    entries = read_provenance(run)
    if not entries or not all(entry.get("finished") for entry in entries):
        raise ValueError(f"{run}: provenance.json is missing or records an unfinished invocation")
    wall = sum((datetime.fromisoformat(e["finished"]) - datetime.fromisoformat(e["started"])).total_seconds()
               for e in entries)
    n = len(right_before)
    return {
        "seed": int(run.name.removeprefix("seed-")),
        "problems": n,
        "before": sum(right_before) / n,
        "after": sum(right_after) / n,
        "change_points": 100 * (sum(right_after) - sum(right_before)) / n,
        "p_value": test["p_value"],
        "improved": test["improved"],
        "worsened": test["worsened"],
        "significant": test["p_value"] < SIGNIFICANCE,
        "fell": sum(right_after) < sum(right_before),
        "wall_seconds": wall,
        "commit": describe(entries)[0],
    }


def setting_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The distribution over one setting's seeds, and whether it met the goal (all significant, none fell)."""
    after = [run["after"] for run in runs]
    gain = [run["after"] - run["before"] for run in runs]
    return {
        "seeds": [run["seed"] for run in runs],
        "after_min": min(after), "after_median": statistics.median(after), "after_max": max(after),
        "gain_min": min(gain), "gain_median": statistics.median(gain), "gain_max": max(gain),
        "significant": sum(run["significant"] for run in runs),
        "fell": sum(run["fell"] for run in runs),
        "wall_median": statistics.median(run["wall_seconds"] for run in runs),
        "goal_met": all(run["significant"] and not run["fell"] for run in runs),
        "runs": runs,
    }


def choose(settings: dict[str, dict[str, Any]]) -> str:
    """The registered rule: the largest worst-seed gain, then the largest median gain, then the shortest time."""
    return max(settings, key=lambda name: (settings[name]["gain_min"], settings[name]["gain_median"],
                                           -settings[name]["wall_median"]))


def summarize(folder: Path) -> dict[str, Any]:
    """Every setting under ``folder`` (``seed-S/`` directly: the setting "."), and the choice among several."""
    groups: dict[str, list[Path]] = {}
    for run in sorted(folder.glob("**/seed-*"), key=lambda p: (str(p.parent), int(p.name.removeprefix("seed-")))):
        if run.is_dir():
            groups.setdefault(str(run.parent.relative_to(folder)), []).append(run)
    if not groups:
        raise ValueError(f"{folder}: no seed-S run folders")
    settings = {name: setting_summary([seed_result(run) for run in runs]) for name, runs in groups.items()}
    summary: dict[str, Any] = {"settings": settings}
    if len(settings) > 1:
        summary["chosen"] = choose(settings)
    return summary


def table(summary: dict[str, Any]) -> str:
    """A markdown table of every seed, then each setting's distribution (and the choice)."""
    lines = ["| setting | seed | before | after | change | p (one-sided McNemar) | improved / worsened | wall |",
             "|---|---|---|---|---|---|---|---|"]
    for name, setting in summary["settings"].items():
        for run in setting["runs"]:
            lines.append(f"| {name} | {run['seed']} | {100 * run['before']:.0f}% | {100 * run['after']:.0f}% | "
                         f"{run['change_points']:+.0f} | {run['p_value']:.2g} | {run['improved']} / {run['worsened']} | "
                         f"{run['wall_seconds']:.0f} s |")
    lines.append("")
    for name, s in summary["settings"].items():
        lines.append(f"{name}: after {100 * s['after_min']:.0f} / {100 * s['after_median']:.1f} / "
                     f"{100 * s['after_max']:.0f}% (min / median / max), gain min {100 * s['gain_min']:+.0f}, median "
                     f"{100 * s['gain_median']:+.1f} points; {s['significant']} of {len(s['runs'])} seeds p < {SIGNIFICANCE}, "
                     f"{s['fell']} fell; goal {'met' if s['goal_met'] else 'not met'}; median wall {s['wall_median']:.0f} s")
    if "chosen" in summary:
        lines.append(f"chosen by the registered rule: {summary['chosen']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--write", action="store_true", help=f"write FOLDER/{SUMMARY_FILE}")
    args = parser.parse_args(argv)
    summary = summarize(args.folder)
    print(table(summary))
    if args.write:
        (args.folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
