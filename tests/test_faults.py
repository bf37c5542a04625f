"""Faults cost nothing: a PRM outage is waited out or stops the run with a checkpoint and the command
that resumes it (a real PRM server on 127.0.0.1, the tiny CPU config through `prpo train`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from prpo.cli import main as cli_main
from prpo.prm import ArithmeticPRM
from prpo.prm.server import background_server

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cpu-tiny.yaml"


def prm_server(healthy: int | None = None) -> tuple[Starlette, list[int]]:
    """The arithmetic PRM over HTTP; after ``healthy`` requests every answer is 503 (a PRM that went down)."""
    prm, seen = ArithmeticPRM(), []

    async def score(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append(len(body["segments"]))
        if healthy is not None and len(seen) > healthy:
            return JSONResponse({"error": "the PRM is restarting"}, status_code=503)
        return JSONResponse({"scores": prm.score(body["problems"], body["segments"])})

    return Starlette(routes=[Route("/score", score, methods=["POST"])]), seen


def run(model_dir: Path, out: Path, url: str, *extra: str) -> int:
    return cli_main(["train", str(CONFIG), "--model.model_name_or_path", str(model_dir), "--output_dir", str(out),
                     "--prm.type", "remote", "--prm.url", url, "--prm.max_outage_seconds", "1", *extra])


def steps(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if "reward" in row]


def test_an_outage_past_its_limit_stops_with_a_checkpoint_and_the_resume_command(tiny_causal_lm_dir, tmp_path, capsys):
    out = tmp_path / "run"
    app, seen = prm_server(healthy=1)  # step 1 is scored; step 2 meets a PRM that stays down
    with background_server(app) as url:
        code = run(tiny_causal_lm_dir, out, url)
    [message] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("prpo train: stopped: ")]
    assert code == 3 and len(seen) >= 3
    assert f"the PRM server {url}/score did not answer for 1 s" in message and "HTTP 503: the PRM is restarting" in message
    assert f"saved {out}/checkpoint-1 (step 1, the last completed)" in message
    assert f"continue with: prpo train {CONFIG} " in message and message.endswith("--resume")
    assert json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())["global_step"] == 1
    assert [row["step"] for row in steps(out)] == [1]

    app, seen = prm_server()
    with background_server(app) as url:
        assert run(tiny_causal_lm_dir, out, url, "--resume") == 0
    assert [row["step"] for row in steps(out)] == [1, 2]  # each step once
    assert (out / "eval_before_after.json").is_file() and len(seen) == 1


def test_an_outage_shorter_than_its_limit_changes_nothing(tiny_causal_lm_dir, tmp_path):
    """Two 503s at step 2, waited out: the run logs the same rewards and advantages as an undisturbed one."""
    app, _ = prm_server()
    with background_server(app) as url:
        assert run(tiny_causal_lm_dir, tmp_path / "calm", url, "--prm.max_outage_seconds", "30") == 0
    calm = steps(tmp_path / "calm")

    prm, seen = ArithmeticPRM(), []

    async def score(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append(len(body["segments"]))
        if len(seen) in (2, 3):
            return JSONResponse({"error": "the PRM is restarting"}, status_code=503)
        return JSONResponse({"scores": prm.score(body["problems"], body["segments"])})

    with background_server(Starlette(routes=[Route("/score", score, methods=["POST"])])) as url:
        assert run(tiny_causal_lm_dir, tmp_path / "outage", url, "--prm.max_outage_seconds", "30") == 0
    outage = steps(tmp_path / "outage")
    assert len(seen) == 4
    keys = ["reward", "accuracy", "advantages/mean", "advantages/std", "prm/score_mean", "kl", "loss"]
    for a, b in zip(calm, outage, strict=True):
        assert {k: a.get(k) for k in keys} == pytest.approx({k: b.get(k) for k in keys}, rel=1e-6, abs=1e-9)


def start_run(model_dir: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "prpo.cli", "train", str(CONFIG), "--model.model_name_or_path", str(model_dir),
           "--output_dir", str(out), "--max_steps", "4", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})


def wait_for_step(out: Path, proc: subprocess.Popen, step: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").is_file() and any(row["step"] >= step for row in steps(out)):
            return
        time.sleep(0.2)
    raise AssertionError(f"no step {step} logged in {timeout} s (exit {proc.poll()})")


def test_sigterm_finishes_the_step_saves_and_exits_0_then_resume_matches_an_uninterrupted_run(tiny_causal_lm_dir,
                                                                                           tmp_path):
    whole = tmp_path / "whole"
    assert cli_main(["train", str(CONFIG), "--model.model_name_or_path", str(tiny_causal_lm_dir), "--output_dir",
                     str(whole), "--max_steps", "4"]) == 0
    out = tmp_path / "preempted"
    proc = start_run(tiny_causal_lm_dir, out)
    wait_for_step(out, proc, 1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    stopped = [line for line in err.splitlines() if line.startswith("prpo train: stopped: ")]
    assert proc.returncode == 0 and len(stopped) == 1, err[-2000:]
    step = int(stopped[0].split("after step ")[1].split(";")[0])
    assert 1 <= step < 4 and f"saved {out}/checkpoint-{step} (the last completed step)" in stopped[0]
    assert stopped[0].endswith("--resume") and (out / f"checkpoint-{step}" / "trainer_state.json").is_file()
    assert [row["step"] for row in steps(out)] == list(range(1, step + 1))
    assert not (out / "final").exists()

    assert cli_main(["train", str(CONFIG), "--model.model_name_or_path", str(tiny_causal_lm_dir), "--output_dir",
                     str(out), "--max_steps", "4", "--resume"]) == 0
    assert [row["step"] for row in steps(out)] == [1, 2, 3, 4]  # each step once
    keys = ["reward", "advantages/mean", "prm/score_mean", "kl", "loss", "completions/mean_length"]
    for a, b in zip(steps(whole), steps(out), strict=True):
        assert {k: a.get(k) for k in keys} == pytest.approx({k: b.get(k) for k in keys}, rel=1e-5, abs=1e-7), a["step"]


def test_a_second_sigterm_exits_at_once(tiny_causal_lm_dir, tmp_path):
    out = tmp_path / "run"
    proc = start_run(tiny_causal_lm_dir, out, "--max_steps", "50")
    wait_for_step(out, proc, 1)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 143


def test_sigkill_while_a_checkpoint_is_written_resumes_from_the_last_whole_one(tiny_causal_lm_dir, tmp_path):
    """SIGKILL as checkpoint-2 appears (mid-save): --resume skips and removes the partial folder, logs each
    step once, and the numbers equal an uninterrupted run's."""
    every_step = ("--save_strategy", "steps", "--save_steps", "1")
    whole = tmp_path / "whole"
    assert cli_main(["train", str(CONFIG), "--model.model_name_or_path", str(tiny_causal_lm_dir), "--output_dir",
                     str(whole), "--max_steps", "4", *every_step]) == 0
    out = tmp_path / "killed"
    proc = start_run(tiny_causal_lm_dir, out, *every_step)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint-2").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert cli_main(["train", str(CONFIG), "--model.model_name_or_path", str(tiny_causal_lm_dir), "--output_dir",
                     str(out), "--max_steps", "4", *every_step, "--resume"]) == 0
    assert [row["step"] for row in steps(out)] == [1, 2, 3, 4]
    keys = ["reward", "advantages/mean", "prm/score_mean", "kl", "loss", "completions/mean_length"]
    for a, b in zip(steps(whole), steps(out), strict=True):
        assert {k: a.get(k) for k in keys} == pytest.approx({k: b.get(k) for k in keys}, rel=1e-5, abs=1e-7), a["step"]


def test_what_a_kill_leaves_is_never_what_resume_picks(tmp_path):
    from prpo.training.metrics import truncate_after_step
    from prpo.training.output_dir import OutputDirError, last_complete_checkpoint

    for step, state in ((1, {"global_step": 1}), (2, {"global_step": 2}), (3, None), (4, "cut")):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state == "cut":
            (folder / "trainer_state.json").write_text('{"global_step": 4, "log_hi')
        elif state is not None:
            (folder / "trainer_state.json").write_text(json.dumps(state))
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "checkpoint-2"]
    with pytest.raises(OutputDirError, match="nothing to resume, no complete checkpoint"):
        last_complete_checkpoint(tmp_path / "checkpoint-1")
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "lo')
    truncate_after_step(metrics, 2)
    assert metrics.read_text() == '{"step": 1}\n{"step": 2}\n'


def test_the_prm_load_script_loses_no_request():
    """speed/bench_prm_load.py on a small load: every request answered, each as if scored alone."""
    script = Path(__file__).resolve().parents[1] / "speed" / "bench_prm_load.py"
    done = subprocess.run([sys.executable, str(script), "--clients", "4", "--requests", "2", "--responses", "8",
                           "--windows", "0.01", "--deadline", "120"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    [row] = [line.split() for line in done.stdout.splitlines() if line.strip().startswith("10ms")]
    assert row[1] == "8/8" and row[2] == "yes", done.stdout
