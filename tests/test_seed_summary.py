"""`prpo.training.seed_summary` on hand-built run folders: per-seed numbers, the distribution, the registered choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prpo.training.seed_summary import choose, main, summarize


def make_run(folder: Path, before: list[bool], after: list[bool], seconds: int = 100, finished: bool = True) -> None:
    for phase, right in (("before", before), ("after", after)):
        (folder / "eval" / phase).mkdir(parents=True)
        (folder / "eval" / phase / "records.jsonl").write_text(
            "".join(json.dumps({"id": f"p{i}", "correct": ok}) + "\n" for i, ok in enumerate(right)))
    entry = {"commit": "abc", "dirty": False, "started": "2026-12-07T10:00:00+00:00",
             "finished": f"2026-12-07T10:{seconds // 60:02d}:{seconds % 60:02d}+00:00" if finished else None}
    (folder / "provenance.json").write_text(json.dumps([entry]))


def test_per_seed_numbers_and_distribution(tmp_path):
    # seed 0: 2/10 -> 6/10, 4 improved, 0 worsened: p = 1/16; seed 1: 2/10 -> 1/10 (fell)
    make_run(tmp_path / "seed-0", [True, True] + [False] * 8, [True, True, True, True, True, True] + [False] * 4, 90)
    make_run(tmp_path / "seed-1", [True, True] + [False] * 8, [True] + [False] * 9, 130)
    summary = summarize(tmp_path)
    setting = summary["settings"]["."]
    first, second = setting["runs"]
    assert (first["seed"], first["before"], first["after"], first["improved"], first["worsened"]) == (0, 0.2, 0.6, 4, 0)
    assert first["p_value"] == pytest.approx(1 / 16) and not first["significant"] and not first["fell"]
    assert first["change_points"] == pytest.approx(40.0) and first["wall_seconds"] == 90
    assert second["fell"] and second["p_value"] == 1.0
    assert setting["after_min"] == 0.1 and setting["after_max"] == 0.6 and setting["wall_median"] == 110
    assert setting["fell"] == 1 and setting["significant"] == 0 and not setting["goal_met"]
    assert "chosen" not in summary


def test_choice_is_the_best_worst_seed_then_median_then_time():
    def s(gain_min, gain_median, wall):
        return {"gain_min": gain_min, "gain_median": gain_median, "wall_median": wall}

    assert choose({"A": s(0.05, 0.2, 300), "B": s(0.10, 0.1, 400)}) == "B"
    assert choose({"A": s(0.10, 0.2, 300), "B": s(0.10, 0.1, 200)}) == "A"
    assert choose({"A": s(0.10, 0.2, 300), "B": s(0.10, 0.2, 200)}) == "B"


def test_candidates_folder_writes_its_summary_with_the_choice(tmp_path, capsys):
    for name, after in (("A", 5), ("B", 7)):
        for seed in (100, 101):
            make_run(tmp_path / name / f"seed-{seed}", [True] + [False] * 9, [True] * after + [False] * (10 - after))
    main([str(tmp_path), "--write"])
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["chosen"] == "B" and written["settings"]["B"]["seeds"] == [100, 101]
    assert "chosen by the registered rule: B" in capsys.readouterr().out


def test_an_unfinished_run_is_an_error(tmp_path):
    make_run(tmp_path / "seed-0", [True], [True], finished=False)
    with pytest.raises(ValueError, match="unfinished"):
        summarize(tmp_path)
