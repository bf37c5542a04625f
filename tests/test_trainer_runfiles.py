"""Run files of a training run: the collapse monitor's rule and non-finite values in metrics.jsonl."""

from __future__ import annotations

import json

from prpo.training.metrics import CollapseMonitor, RunFiles


def feed(monitor: CollapseMonitor, lengths: list[float], rates: list[float]) -> list[str | None]:
    return [monitor.update({"completions/mean_length": n, "final_answer_rate": r}) for n, r in zip(lengths, rates)]


def test_collapse_fires_only_when_answers_are_lost_and_the_length_moves():
    # window 2, drop 0.3: baseline = mean of the first 2 steps; fires when the last 2 steps' answer rate is below
    # 0.7 x baseline and their length 30% or more away from it.
    warnings = feed(CollapseMonitor(window=2, drop=0.3), [100, 100, 80, 60, 60], [0.8, 0.8, 0.6, 0.5, 0.5])
    # step 4: lengths (80 + 60) / 2 = 70, not < 70; step 5: 60 < 70 and rates 0.5 < 0.56
    assert warnings[:4] == [None] * 4
    assert warnings[4] == ("possible premature collapse: mean response length 60.0 vs 100.0 and final-answer rate "
                           "0.50 vs 0.80 over the first 2 steps")
    # shorter responses that still answer: no warning
    assert feed(CollapseMonitor(window=2, drop=0.3), [100, 100, 50, 50], [0.8, 0.8, 0.8, 0.8]) == [None] * 4
    # answers lost at the same length: no warning
    assert feed(CollapseMonitor(window=2, drop=0.3), [100, 100, 100, 100], [0.8, 0.8, 0.1, 0.1]) == [None] * 4
    # answers lost while the responses fill up (a gamed PRM, docs/bench.md): step 4 has length
    # (47 + 56) / 2 = 51.5, more than 37 + 0.3 x 37 = 48.1, and answer rate 0.25 < 0.7 x 1.0
    warnings = feed(CollapseMonitor(window=2, drop=0.3), [37, 37, 47, 56, 56], [1.0, 1.0, 0.5, 0.0, 0.0])
    assert warnings[:3] == [None] * 3
    assert warnings[3] == ("possible collapse into answerless filler: mean response length 51.5 vs 37.0 and "
                           "final-answer rate 0.25 vs 1.00 over the first 2 steps")
    # answers lost, longer by less than 30% (45 < 48.1): no warning
    assert feed(CollapseMonitor(window=2, drop=0.3), [37, 37, 45, 45], [1.0, 1.0, 0.0, 0.0]) == [None] * 4
    # rows without the two metrics (e.g. the final train summary) are not steps
    monitor = CollapseMonitor(window=1, drop=0.3)
    assert monitor.update({"train_loss": 1.0}) is None and monitor.lengths == []


def test_run_files_mark_the_collapse_and_write_non_finite_values_as_null(tmp_path):
    class State:
        is_world_process_zero, global_step = True, 0

    files = RunFiles(tmp_path, collapse_window=1, collapse_drop=0.5)
    state = State()
    for step, (length, rate) in enumerate([(100.0, 1.0), (40.0, 0.2)], 1):
        state.global_step = step
        files.on_log(None, state, None, logs={"completions/mean_length": length, "final_answer_rate": rate,
                                              "loss": float("nan") if step == 2 else 0.5})
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row.get("collapse_warning") for row in rows] == [None, True]
    assert rows[1]["loss"] is None  # a NaN becomes null, which the trainer tests treat as a failure
