"""Run directory files: `metrics.jsonl` (every logged step), `samples.jsonl` and the collapse warning.

`RunFiles` is a `TrainerCallback`: TRL's `log()` reaches it through `on_log`, so `metrics.jsonl`
holds exactly what TensorBoard / W&B receive through `report_to`. On `--resume` the rows written
after the restored checkpoint (by the interrupted run) are dropped, so the file reads as one run.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
LENGTH_KEY = "completions/mean_length"
COLLAPSE_WINDOW = 5  # steps averaged by the collapse warning (PRPOConfig.collapse_window)
COLLAPSE_DROP = 0.3  # relative fall of the answer rate and move of the length (PRPOConfig.collapse_drop)
FINAL_ANSWER_KEY = "final_answer_rate"


class CollapseMonitor:
    """Collapse signal: docs/algorithm.md section 6's premature collapse, and its mirror image under a gamed PRM.

    Baseline: the mean response length and final-answer rate of the first ``window`` steps. The
    signal fires when, over the last ``window`` steps, the final-answer rate has fallen below
    ``(1 - drop)`` times its baseline *and* the length has moved by ``drop`` times its baseline or
    more: shorter (the paper's early stop) or longer (filler to the length limit that a PRM rates
    well, seen in docs/bench.md's biased-PRM runs).
    """

    def __init__(self, window: int = COLLAPSE_WINDOW, drop: float = COLLAPSE_DROP):
        self.window, self.drop = window, drop
        self.lengths: list[float] = []
        self.answer_rates: list[float] = []

    def update(self, logs: Mapping[str, Any]) -> str | None:
        """Record one step's logs; returns the warning text when the signal fires, else None."""
        if LENGTH_KEY not in logs or FINAL_ANSWER_KEY not in logs:
            return None
        self.lengths.append(float(logs[LENGTH_KEY]))
        self.answer_rates.append(float(logs[FINAL_ANSWER_KEY]))
        if len(self.lengths) < 2 * self.window:
            return None
        w = self.window
        base_len, now_len = _mean(self.lengths[:w]), _mean(self.lengths[-w:])
        base_ans, now_ans = _mean(self.answer_rates[:w]), _mean(self.answer_rates[-w:])
        if now_ans < (1 - self.drop) * base_ans and abs(now_len - base_len) > self.drop * base_len:
            kind = "premature collapse" if now_len < base_len else "collapse into answerless filler"
            return (
                f"possible {kind}: mean response length {now_len:.1f} vs {base_len:.1f} and "
                f"final-answer rate {now_ans:.2f} vs {base_ans:.2f} over the first {w} steps"
            )
        return None


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def append_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps({k: _jsonable(v) for k, v in row.items()}, ensure_ascii=False) + "\n")


def find_jsonl(path: Path) -> Path | None:
    """``path``, else its gzip-compressed ``path.gz`` (how committed results keep large run files), else None."""
    if path.is_file():
        return path
    packed = path.with_name(path.name + ".gz")
    return packed if packed.is_file() else None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL run file, or of its ``.gz`` (`find_jsonl`); a bad line is an error naming the file and line."""
    found = find_jsonl(path)
    if found is None:
        raise FileNotFoundError(f"{path}: no such run file (nor {path.name}.gz)")
    path = found
    text = gzip.decompress(path.read_bytes()).decode("utf-8") if path.suffix == ".gz" else path.read_text(encoding="utf-8")
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {number}: not JSON ({err.msg})") from None
    return rows


def truncate_after_step(path: Path, step: int) -> None:
    """Keep the rows of a JSONL file whose ``step`` is at most ``step``; a last line cut short by a kill
    (no newline at its end) is dropped with them."""
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        logger.warning("%s: dropping its last line, cut short when the run was killed", path)
        path.write_text(text[:text.rfind("\n") + 1], encoding="utf-8")
    kept = [row for row in read_jsonl(path) if row["step"] <= step]
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept), encoding="utf-8")


class RunFiles(TrainerCallback):
    """Writes `metrics.jsonl` and `samples.jsonl` in the run directory (main process only)."""

    def __init__(self, output_dir: str | Path, *, collapse_window: int = COLLAPSE_WINDOW, collapse_drop: float = COLLAPSE_DROP):
        self.dir = Path(output_dir)
        self.monitor = CollapseMonitor(collapse_window, collapse_drop)
        self.collapse_warned = False

    @property
    def metrics_path(self) -> Path:
        return self.dir / METRICS_FILE

    @property
    def samples_path(self) -> Path:
        return self.dir / SAMPLES_FILE

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        truncate_after_step(self.metrics_path, state.global_step)
        truncate_after_step(self.samples_path, state.global_step)
        if self.metrics_path.exists():  # resumed: replay the kept steps into the collapse monitor
            for row in read_jsonl(self.metrics_path):
                self.monitor.update(row)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, **logs}
        warning = self.monitor.update(logs)
        if warning is not None:
            row["collapse_warning"] = True
            if not self.collapse_warned:
                logger.warning(warning)
                self.collapse_warned = True
        self.dir.mkdir(parents=True, exist_ok=True)
        append_jsonl(self.metrics_path, [row])

    def write_samples(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        append_jsonl(self.samples_path, rows)
