"""The run report: curves PNG and the HTML page with segments coloured by advantage."""

from __future__ import annotations

import json


from prpo.commands.report import main as report_main
from prpo.training.report import advantage_colour, build_report


def _run_dir(tmp_path):
    with (tmp_path / "metrics.jsonl").open("w") as out:
        for step in range(1, 6):
            out.write(json.dumps({"step": step, "accuracy": 0.1 * step, "reward": -1 + 0.2 * step, "kl": 0.001 * step,
                                  "completions/mean_length": 40 - step, "prm/score_mean": 0.5}) + "\n")
    segments = [{"text": "3 + 4 = 7\n", "tokens": 10, "prm_score": 0.9, "advantage_mean": 3.46},
                {"text": "7 * 2 = 15\n", "tokens": 11, "prm_score": 0.1, "advantage_mean": -0.46},
                {"text": "Answer: <15>", "tokens": 10, "prm_score": 0.1, "advantage_mean": -0.46}]
    with (tmp_path / "samples.jsonl").open("w") as out:
        for step in (1, 5):
            out.write(json.dumps({"step": step, "prompt_id": "p0", "problem": "Tom has 3 & 4", "answer": "14",
                                  "response": "".join(s["text"] for s in segments), "length": 31, "correct": False,
                                  "reward": -1.0, "segments": segments}) + "\n")
    return tmp_path


def test_report_shows_segments_scores_and_advantages(tmp_path):
    path = build_report(_run_dir(tmp_path))
    page = path.read_text()
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert page.count('class="seg"') == 6  # 3 segments at the first and the last step
    assert "0: s=0.90, A=+3.46" in page and "1: s=0.10, A=-0.46" in page
    assert "Answer: &lt;15&gt;" in page and "Tom has 3 &amp; 4" in page  # text is escaped
    assert advantage_colour(3.46) in page and advantage_colour(-0.46) in page
    assert "data:image/png;base64," in page


def test_advantage_colours_diverge():
    assert advantage_colour(0.0) == "rgb(255,255,255)"
    assert advantage_colour(3.0) == "rgb(64,255,64)" and advantage_colour(30.0) == "rgb(64,255,64)"
    assert advantage_colour(-1.5) == "rgb(255,159,159)"


def test_report_command_errors_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 1
    assert "metrics.jsonl is missing" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "accuracy": 0.5}\n{oops\n')
    assert report_main([str(tmp_path)]) == 1
    assert "line 2: not JSON" in capsys.readouterr().err
