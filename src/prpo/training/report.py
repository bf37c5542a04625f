"""A run's report: training curves as PNG and one self-contained HTML page of PRPO's credit assignment.

Reads only the run directory (`metrics.jsonl`, `samples.jsonl`, and `eval_before_after.json` when
`prpo train` wrote one), so `prpo report RUN_DIR` rebuilds it at any time.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

from prpo.training.metrics import METRICS_FILE, SAMPLES_FILE, read_jsonl

CURVES_FILE = "curves.png"
REPORT_FILE = "report.html"
BEFORE_AFTER_FILE = "eval_before_after.json"
CURVES = (
    ("accuracy", "accuracy (training rollouts)"),
    ("reward", "mean outcome reward"),
    ("completions/mean_length", "response length (tokens)"),
    ("kl", "KL to the initial policy"),
    ("prm/score_mean", "mean PRM segment score"),
    ("final_answer_rate", "final-answer rate"),
    ("beta_zero_token_share", "tokens with beta = 0 (all-same groups)"),
    ("clip_share", "tokens where the outcome overruled the PRM (prpo_sp)"),
)


def plot_curves(metrics: list[dict[str, Any]], path: Path) -> Path:
    """One panel per metric of CURVES present in the log, against the training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(key, title) for key, title in CURVES if any(key in row for row in metrics)]
    if not panels:
        raise ValueError("metrics.jsonl has none of the plotted metrics: " + ", ".join(k for k, _ in CURVES))
    columns = 3
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.4 * rows), squeeze=False)
    for ax, (key, title) in zip(axes.flat, panels):
        points = [(row["step"], row[key]) for row in metrics if row.get(key) is not None]
        ax.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def advantage_colour(value: float | None, scale: float = 3.0) -> str:
    """Diverging background: green for positive advantage, red for negative, white at 0."""
    if value is None:
        return "#ffffff"
    strength = min(abs(value) / scale, 1.0)
    fade = round(255 * (1 - 0.75 * strength))
    return f"rgb({fade},255,{fade})" if value >= 0 else f"rgb(255,{fade},{fade})"


def sample_html(sample: dict[str, Any]) -> str:
    """One response: each segment coloured by its mean advantage, with its PRM score and a boundary mark."""
    verdict = "correct" if sample.get("correct") else "wrong"
    dropped = sample.get("kept") is False  # the rollout filter (e.g. PROF's) left it out of the loss
    parts = []
    for index, segment in enumerate(sample.get("segments", [])):
        score = segment.get("prm_score")
        advantage = segment.get("advantage_mean")
        badge = f"s={score:.2f}" if score is not None else "no PRM"
        title = f"segment {index}: {segment.get('tokens', '?')} tokens, PRM score {badge}, mean advantage {advantage:+.2f}"
        parts.append(
            f'<span class="seg" style="background:{advantage_colour(advantage)}" title="{html.escape(title)}">'
            f'<sup class="badge">{index}: {badge}, A={advantage:+.2f}</sup>{html.escape(segment.get("text", ""))}</span>'
        )
    return (
        f'<div class="sample {verdict}{" dropped" if dropped else ""}"><div class="head">step {sample.get("step")} · '
        f'prompt {html.escape(str(sample.get("prompt_id")))} · <b>{verdict}</b>'
        f'{" · <b>dropped by the filter</b> (no gradient)" if dropped else ""}'
        f' · reward {sample.get("reward", 0):+.2f} · {sample.get("length")} tokens · gold '
        f'<code>{html.escape(str(sample.get("answer")))}</code></div>'
        f'<div class="problem">{html.escape(str(sample.get("problem", "")))}</div>'
        f'<pre class="response">{"".join(parts)}</pre></div>'
    )


def accuracy_rows(data: dict[str, Any]) -> tuple[list[tuple[str, float, float, float, str]], float]:
    """From `eval_before_after.json`: ``(phase, accuracy, interval low, interval high, "correct/problems")`` before
    and after (percentages), and the change in points."""
    rows = [(phase, 100 * data[phase]["accuracy"], 100 * data[phase]["accuracy_ci95"][0],
             100 * data[phase]["accuracy_ci95"][1], f"{data[phase]['correct']}/{data[phase]['num_problems']}")
            for phase in ("before", "after")]
    return rows, rows[1][1] - rows[0][1]


def before_after_html(data: dict[str, Any]) -> str:
    """A `prpo train` run's held-out accuracy before and after training, with 95% intervals, and the
    exact one-sided McNemar test of the change (`prpo.evaluation.mcnemar_improvement`) when recorded."""
    phases, change = accuracy_rows(data)
    rows = [f"<tr><td>{name}</td><td>{accuracy:.1f}%</td><td>{low:.1f}–{high:.1f}%</td><td>{counts}</td></tr>"
            for name, accuracy, low, high, counts in phases]
    rows.append(f"<tr><td>change</td><td>{change:+.1f} points</td><td></td><td></td></tr>")
    test = data.get("mcnemar")
    verdict = "" if test is None else (
        f"<p>Exact one-sided McNemar test (sign test on the problems that changed): <b>p = {test['p_value']:.3g}</b>; "
        f"{test['improved']} problems went from wrong to right, {test['worsened']} from right to wrong.</p>")
    return ("<h2>Held-out accuracy</h2><table><tr><th></th><th>accuracy</th><th>95% interval</th><th>correct</th></tr>"
            + "".join(rows) + "</table>" + verdict)


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px}
.sample{border:1px solid #ddd;border-radius:6px;margin:1em 0;padding:.6em}
.sample.correct{border-left:6px solid #2a2}.sample.wrong{border-left:6px solid #c33}
.sample.dropped{opacity:.55;border-style:dashed}
.head{font-size:90%;color:#333}.problem{margin:.4em 0;color:#555}
.response{white-space:pre-wrap;font-size:95%;line-height:2.1}
.seg{border-left:2px solid #333;padding:1px 2px;margin-left:1px}
.badge{font-size:65%;color:#225;background:#eef;border-radius:3px;padding:0 3px;margin-right:3px}
"""


def build_report(run_dir: str | Path, *, samples_per_step: int = 4, steps_shown: int = 2) -> Path:
    """Write ``curves.png`` and ``report.html`` into ``run_dir``; returns the HTML path."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: {METRICS_FILE} is missing")
    metrics = [row for row in read_jsonl(metrics_path) if "step" in row]
    curves = plot_curves(metrics, run_dir / CURVES_FILE)
    samples_path = run_dir / SAMPLES_FILE
    samples = read_jsonl(samples_path) if samples_path.is_file() else []
    steps = sorted({s["step"] for s in samples})
    shown = sorted({steps[0], *steps[-(steps_shown - 1):]}) if steps else []
    body = [f"<h1>prpo run: {html.escape(run_dir.name)}</h1>"]
    before_after = run_dir / BEFORE_AFTER_FILE
    if before_after.is_file():
        body.append(before_after_html(json.loads(before_after.read_text(encoding="utf-8"))))
    image = base64.b64encode(curves.read_bytes()).decode()
    body.append(f'<h2>Training curves</h2><img src="data:image/png;base64,{image}" style="max-width:100%">')
    body.append(
        "<h2>Credit assignment</h2><p>Each response is cut into segments (a vertical bar starts one). A segment's "
        "badge gives its PRM score <i>s</i> and its mean token advantage <i>A</i>; its colour is <i>A</i>: green "
        "pushes those tokens up, red pushes them down. PRPO centres each response on its outcome (beta) and the "
        "PRM moves credit between its segments.</p>"
    )
    for step in shown:
        chosen = [s for s in samples if s["step"] == step][:samples_per_step]
        body.append(f"<h3>step {step}</h3>" + "".join(sample_html(s) for s in chosen))
    if not samples:
        body.append("<p>No samples.jsonl in this run (samples_per_step was 0).</p>")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>prpo report</title><style>{STYLE}</style></head>" \
           f"<body>{''.join(body)}</body></html>"
    path = run_dir / REPORT_FILE
    path.write_text(page, encoding="utf-8")
    return path
