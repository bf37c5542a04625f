"""Two processes give the advantages of one; a killed run resumed from its checkpoint matches an uninterrupted one."""

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

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}

# One fixed global batch of 8 responses to 2 prompts, interleaved so that every group has rows on
# both processes. Each process scores its own half; the advantages must not depend on the split.
SCRIPT = r'''
import json, sys
import torch
from accelerate.utils import gather_object
from prpo.config import PRPOConfig
from prpo.trainer import PRPOTrainer
from datasets import Dataset

model_dir, out_path = sys.argv[1], sys.argv[2]

class LengthPRM:
    prm_id = "length"
    def score(self, problems, segments):
        return [[0.1 + 0.2 * (len(t) % 5) for t in row] for row in segments]

problems = ["What is 3 + 4?", "What is 12 + 5?"]
data = Dataset.from_list([{"prompt": p, "problem": p, "answer": a, "prompt_id": f"q{i}"}
                          for i, (p, a) in enumerate(zip(problems, ["7", "17"]))])
args = PRPOConfig(output_dir=out_path + ".run", method="prpo", normalization="group", prm={"type": "arithmetic"},
                  segmenter="fixed", segment_length=3, num_generations=4, per_device_train_batch_size=4,
                  beta=0.0, max_completion_length=12, report_to=[], use_cpu=True, samples_per_step=0,
                  activation_checkpointing=False)
trainer = PRPOTrainer(model_dir, args=args, train_dataset=data, prm=LengthPRM(), grader=lambda r, g: [False] * len(r))
g = torch.Generator().manual_seed(0)
rows = 8
lengths = [12, 7, 9, 12, 3, 11, 5, 8]
ids = torch.randint(200, 5000, (rows, 12), generator=g)
group = [0, 1, 0, 1, 0, 1, 0, 1]
rewards = [1.0, -1.0, -1.0, 1.0, 1.0, 1.0, -1.0, -1.0]
rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes
local = list(range(rank * rows // world, (rank + 1) * rows // world))
width = max(lengths[i] for i in local)  # each process pads to its own longest response
completion_ids = torch.stack([ids[i, :width] for i in local])
reward = trainer.outcome_reward
reward.rewards = [rewards[i] for i in local]
reward.correct = [rewards[i] > 0 for i in local]
reward.texts = [trainer._tokenizer.decode(ids[i, :lengths[i]]) for i in local]
inputs = [{"prompt_id": f"q{group[i]}", "problem": problems[group[i]], "answer": "0", "prompt": ""} for i in local]
advantages = trainer.token_advantages(inputs, {"completion_ids": completion_ids}, [lengths[i] for i in local], "train")
result = gather_object([{"row": i, "advantages": advantages[j, :lengths[i]].tolist()} for j, i in enumerate(local)])
if trainer.accelerator.is_main_process:
    json.dump({"rows": result, "metrics": {k: v[-1] for k, v in trainer._metrics["train"].items() if not k.startswith("time/")}},
              open(out_path, "w"))
'''


def _launch(script: Path, processes: int, model_dir: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes), "--cpu",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(script), str(model_dir), str(out)]
    proc = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_two_processes_give_the_advantages_of_one(tiny_causal_lm_dir, tmp_path):
    script = tmp_path / "advantages.py"
    script.write_text(SCRIPT)
    one = _launch(script, 1, tiny_causal_lm_dir, tmp_path / "one.json")
    two = _launch(script, 2, tiny_causal_lm_dir, tmp_path / "two.json")
    by_row = lambda result: {r["row"]: r["advantages"] for r in result["rows"]}  # noqa: E731
    assert sorted(by_row(two)) == list(range(8))
    for row, values in by_row(one).items():
        torch.testing.assert_close(torch.tensor(by_row(two)[row]), torch.tensor(values), rtol=1e-5, atol=1e-6)
    assert any(abs(v) > 0.1 for values in by_row(one).values() for v in values)
    for key, value in one["metrics"].items():
        assert two["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


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
