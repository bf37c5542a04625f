"""The quickstart flow of `prpo train`: held-out accuracy before/after, run files, curves and HTML report.

A tiny random Qwen2 with the real Qwen tokenizer runs configs/cpu-tiny.yaml (arithmetic task,
arithmetic PRM, PRPO, 2 steps, 4 held-out problems) through the CLI, the same path as `make demo`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prpo.cli import main as cli_main
from prpo.commands.train import end_block
from prpo.commands.eval import main as eval_main
from prpo.evaluation.evaluate import accuracy_interval
from prpo.training.run import before_after_table

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def tiny_run(tiny_causal_lm_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("quickstart") / "run"
    code = cli_main(["train", str(CONFIGS / "cpu-tiny.yaml"), "--model.model_name_or_path", str(tiny_causal_lm_dir),
                     "--output_dir", str(run)])
    assert code == 0
    return run


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tiny_quickstart_writes_metrics_samples_and_held_out_accuracy(tiny_run, capsys):
    steps = [row for row in _rows(tiny_run / "metrics.jsonl") if "reward" in row]
    assert [row["step"] for row in steps] == [1, 2]
    assert all("prm/score_mean" in row and "kl" in row for row in steps)
    samples = _rows(tiny_run / "samples.jsonl")
    assert {s["step"] for s in samples} == {1, 2}
    data = json.loads((tiny_run / "eval_before_after.json").read_text())
    for phase in ("before", "after"):
        entry = data[phase]
        assert entry["num_problems"] == 4
        assert entry["accuracy"] == entry["correct"] / 4
        assert entry["accuracy_ci95"] == pytest.approx(list(accuracy_interval(entry["correct"], 4)))
        records = _rows(tiny_run / "eval" / phase / "records.jsonl")
        assert len(records) == 4 and sum(r["correct"] for r in records) == entry["correct"]
        assert all(r["num_tokens"] <= 24 for r in records)  # max_completion_length bounds the evaluation too
    before = {r["id"]: r["correct"] for r in _rows(tiny_run / "eval" / "before" / "records.jsonl")}
    after = {r["id"]: r["correct"] for r in _rows(tiny_run / "eval" / "after" / "records.jsonl")}
    improved = sum(after[i] and not before[i] for i in before)
    worsened = sum(before[i] and not after[i] for i in before)
    assert data["mcnemar"]["improved"] == improved and data["mcnemar"]["worsened"] == worsened
    assert 0 < data["mcnemar"]["p_value"] <= 1
    assert (tiny_run / "final" / "config.json").is_file()


def test_a_second_run_into_the_same_folder_is_refused_before_it_starts(tiny_run, tiny_causal_lm_dir, capsys):
    metrics = (tiny_run / "metrics.jsonl").read_text()
    code = cli_main(["train", str(CONFIGS / "cpu-tiny.yaml"), "--model.model_name_or_path", str(tiny_causal_lm_dir),
                     "--output_dir", str(tiny_run)])
    err = capsys.readouterr().err
    assert code == 1 and f"output_dir {tiny_run} holds a run (steps 1-2 logged" in err and "--resume" in err
    assert "--overwrite" in err and (tiny_run / "metrics.jsonl").read_text() == metrics  # nothing touched


def test_tiny_quickstart_records_its_provenance(tiny_run):
    from prpo.provenance import code_version, read_provenance

    [entry] = read_provenance(tiny_run)
    assert entry["commit"] == code_version()["commit"] and entry["versions"]["trl"]
    assert entry["finished"] >= entry["started"]


def test_tiny_quickstart_report_shows_curves_and_scored_segments(tiny_run):
    assert (tiny_run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tiny_run / "report.html").read_text()
    assert "Held-out accuracy" in page and "data:image/png;base64," in page
    data = json.loads((tiny_run / "eval_before_after.json").read_text())
    low, high = data["after"]["accuracy_ci95"]
    assert f"{100 * low:.1f}–{100 * high:.1f}%" in page
    assert f"<b>p = {data['mcnemar']['p_value']:.3g}</b>" in page
    samples = _rows(tiny_run / "samples.jsonl")
    shown = [s for s in samples if s["step"] in (1, 2)]
    segments = [seg for s in shown for seg in s["segments"]]
    assert segments and all(seg["prm_score"] in (0.1, 0.5, 0.9) for seg in segments)
    first = shown[0]["segments"][0]
    assert f'0: s={first["prm_score"]:.2f}, A={first["advantage_mean"]:+.2f}' in page


@pytest.fixture(scope="module")
def tiny_lora_run(tiny_causal_lm_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("quickstart-lora") / "run"
    code = cli_main(["train", str(CONFIGS / "cpu-tiny.yaml"), "--model.model_name_or_path", str(tiny_causal_lm_dir),
                     "--model.use_peft", "true", "--model.lora_r", "2", "--save_strategy", "steps", "--save_steps", "2",
                     "--output_dir", str(run)])
    assert code == 0
    return run


def test_lora_run_folders_carry_the_card_and_the_configured_base(tiny_lora_run, tiny_causal_lm_dir):
    for folder in (tiny_lora_run / "checkpoint-2", tiny_lora_run / "final"):
        adapter = json.loads((folder / "adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == str(tiny_causal_lm_dir)  # as configured, not a cache path
        card = (folder / "README.md").read_text()
        assert f"base_model: {tiny_causal_lm_dir}" in card and "library_name: peft" in card
        assert card.count("- prpo\n") == 1 and "A LoRA adapter trained from" in card
        assert "with PRPO" in card and "arXiv 2601.07182" in card and "on the `arithmetic` task" in card
        assert "A seconds-long CPU run used by the tests" in card  # what the run is: the config's header
        assert "max_steps: 2" in card  # the resolved config


def test_lora_run_evaluates_as_base_plus_adapter(tiny_lora_run, tmp_path, monkeypatch):
    monkeypatch.setenv("PRPO_CACHE_DIR", str(tmp_path / "cache"))
    for model in (tiny_lora_run, tiny_lora_run / "final", tiny_lora_run / "checkpoint-2"):
        out = tmp_path / model.name
        assert eval_main([str(model), "--benchmark", "arithmetic", "--limit", "2", "--max-new-tokens", "4",
                          "--device", "cpu", "--output", str(out)]) == 0
        assert json.loads((out / "summary.json").read_text())["num_problems"] == 2
    # the run directory is its final/: two merges (final/, checkpoint-2/), not three
    assert len(list((tmp_path / "cache" / "models").glob("merged-*/config.json"))) == 2


def test_before_after_table_has_intervals_and_the_change():
    data = {"before": {"accuracy": 0.25, "accuracy_ci95": [0.1, 0.5], "correct": 16, "num_problems": 64},
            "after": {"accuracy": 0.5, "accuracy_ci95": [0.38, 0.62], "correct": 32, "num_problems": 64},
            "mcnemar": {"p_value": 106 / 16384, "improved": 12, "worsened": 2}}
    table = before_after_table(data, "held-out accuracy")
    lines = table.splitlines()
    assert lines[0] == "held-out accuracy"
    assert "25.0%" in lines[2] and "10.0-50.0%" in lines[2] and "16/64" in lines[2]
    assert "50.0%" in lines[3] and "38.0-62.0%" in lines[3] and "32/64" in lines[3]
    assert lines[4].split() == ["change", "+25.0", "points"]
    assert lines[5] == "one-sided exact McNemar test: p = 0.00647 (12 problems improved, 2 worsened)"


@pytest.mark.parametrize("after, p_value, improved, worsened, verdict", [
    (0.5, 106 / 16384, 12, 2, "training improved the model significantly (p < 0.05)"),
    (0.3, 0.31, 6, 4, "no significant improvement (p = 0.31 >= 0.05): this run does not show that training helped"),
    (0.2, 0.95, 6, 12, "training made the model worse on these problems: no improvement"),
])
def test_the_run_ends_with_one_block_that_says_whether_training_helped(after, p_value, improved, worsened, verdict):
    data = {"before": {"accuracy": 0.25}, "after": {"accuracy": after},
            "mcnemar": {"p_value": p_value, "improved": improved, "worsened": worsened}}
    lines = end_block(data, 3, 292.4, Path("runs/quickstart/report.html")).splitlines()
    assert lines[0] == "== prpo train done: seed 3, 4 min 52 s =="
    assert lines[1].startswith(f"held-out accuracy 25.0% -> {100 * after:.1f}% ({100 * (after - 0.25):+.1f} points), "
                               f"one-sided McNemar p = {p_value:.2g} ({improved} problems improved, {worsened} worsened)")
    assert lines[2] == verdict and lines[3] == "report: runs/quickstart/report.html"
    assert end_block(None, 0, 61, Path("r.html")).splitlines() == ["== prpo train done: seed 0, 1 min 1 s ==",
                                                                   "report: r.html"]


def test_compact_template_puts_our_system_line_before_the_one_shot():
    from prpo.tasks import get_template

    messages = get_template("arithmetic_compact").messages("How many?")
    assert messages[0] == {"role": "system", "content": "Solve with one equation per line, then write Answer: N."}
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == "3 + 4 = 7\n7 * 2 = 14\nAnswer: 14" and messages[-1]["content"] == "How many?"
