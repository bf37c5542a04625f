"""One and two processes give the hand-computed advantages and metrics of a step; a killed run resumed from
its checkpoint matches an uninterrupted one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_trainer_step import EXPECTED_ADVANTAGES, EXPECTED_METRICS, LENGTHS

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}

# The hand-built step of tests/test_trainer_step.py: 8 responses to 2 prompts, interleaved so that every group
# has rows on both processes. Each process grades and scores its own half; the advantages and metrics must be
# the hand-computed ones whatever the split.
SCRIPT = r'''
import json, sys
sys.path.insert(0, sys.argv[3])
from accelerate.utils import gather_object
from prpo.training.trainer import PRPOTrainer
from test_trainer_step import WordPRM, answer_grader, run_step, step_config, step_dataset

model_dir, out_path = sys.argv[1], sys.argv[2]
trainer = PRPOTrainer(model_dir, args=step_config(out_path + ".run"), train_dataset=step_dataset(), prm=WordPRM(),
                      grader=answer_grader)
rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes
local = list(range(rank * 8 // world, (rank + 1) * 8 // world))
advantages, metrics = run_step(trainer, local)
result = gather_object([{"row": i, "advantages": advantages[j].tolist()} for j, i in enumerate(local)])
if trainer.accelerator.is_main_process:
    json.dump({"rows": result, "metrics": metrics}, open(out_path, "w"))
'''


def _launch(script: Path, processes: int, model_dir: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes), "--cpu",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(script), str(model_dir), str(out), str(REPO / "tests")]
    proc = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("processes", [1, 2])
def test_one_and_two_processes_give_the_hand_computed_step(processes, tiny_causal_lm_dir, tmp_path):
    script = tmp_path / "advantages.py"
    script.write_text(SCRIPT)
    result = _launch(script, processes, tiny_causal_lm_dir, tmp_path / "out.json")
    rows = {r["row"]: r["advantages"] for r in result["rows"]}
    assert sorted(rows) == list(range(8))
    for row, expected in enumerate(EXPECTED_ADVANTAGES):
        values = torch.tensor(rows[row])
        torch.testing.assert_close(values[:LENGTHS[row]], torch.tensor(expected), rtol=1e-5, atol=1e-5)
        assert not values[LENGTHS[row]:].any()  # padding up to this process's own width
    for key, value in EXPECTED_METRICS.items():
        assert result["metrics"][key] == pytest.approx(value, rel=1e-6), key


def _train(run: Path, model_dir: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "prpo.cli", "train", str(REPO / "configs" / "cpu-tiny.yaml"),
           "--model.model_name_or_path", str(model_dir), "--output_dir", str(run), "--max_steps", "4",
           "--save_strategy", "steps", "--save_steps", "1", "--learning_rate", "1e-3", "--max_completion_length", "12",
           *extra]
    return subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]


def _step_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if "reward" in row]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights_and_metrics(tiny_causal_lm_dir, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _finish(_train(straight, tiny_causal_lm_dir))

    proc = _train(killed, tiny_causal_lm_dir)
    deadline = time.time() + 900
    while not (killed / "checkpoint-2" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    assert not (killed / "final").exists()
    _finish(_train(killed, tiny_causal_lm_dir, "--resume"))

    a, b = _step_rows(straight), _step_rows(killed)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    skip = ("time/", "step_time")
    for row_a, row_b in zip(a, b):
        for key, value in row_a.items():
            if not key.startswith(skip) and isinstance(value, float):
                assert row_b[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (row_a["step"], key)
    wa, wb = load_file(straight / "final" / "model.safetensors"), load_file(killed / "final" / "model.safetensors")
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-5, atol=1e-6)
    samples_steps = [json.loads(line)["step"] for line in (killed / "samples.jsonl").read_text().splitlines()]
    assert samples_steps == sorted(samples_steps) and set(samples_steps) == {1, 2, 3, 4}
