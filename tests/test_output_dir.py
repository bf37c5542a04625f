"""The run folder is checked before the first step: another run is never silently overwritten, an
unwritable folder or a full disk is refused naming the folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from prpo.provenance import record_finish, record_start
from prpo.training.output_dir import (
    OutputDirError,
    check_disk,
    checkpoint_bytes,
    existing_run,
    prepare_output_dir,
)


def a_run(folder: Path, steps: int = 3, finished: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 0.1}) + "\n" for s in range(1, steps + 1)))
    (folder / "checkpoint-2").mkdir()
    (folder / "notes.txt").write_text("the user's own file")
    record_start(folder)
    if finished:
        record_finish(folder)
    return folder


def test_a_folder_holding_a_run_is_refused_naming_resume_and_overwrite(tmp_path):
    run = a_run(tmp_path / "run")
    with pytest.raises(OutputDirError, match=r"output_dir .*run holds a run \(steps 1-3 logged, last checkpoint "
                                             r"checkpoint-2, finished 20.*\); continue it with --resume, or start over with --overwrite"):
        prepare_output_dir(run, resume=False, overwrite=False)
    assert "started, not finished (running, or killed)" in existing_run(a_run(tmp_path / "killed", finished=False))
    prepare_output_dir(run, resume=True, overwrite=False)  # resuming it is what the folder is for
    assert (run / "metrics.jsonl").is_file()
    with pytest.raises(OutputDirError, match="pass one"):
        prepare_output_dir(run, resume=True, overwrite=True)


def test_overwrite_removes_the_runs_files_and_nothing_else(tmp_path):
    run = a_run(tmp_path / "run")
    prepare_output_dir(run, resume=False, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"] and existing_run(run) is None


def test_a_new_or_empty_folder_is_fine_and_created(tmp_path):
    prepare_output_dir(tmp_path / "new" / "run", resume=False, overwrite=False)
    assert (tmp_path / "new" / "run").is_dir() and not list((tmp_path / "new" / "run").iterdir())


def test_a_folder_that_cannot_be_written_is_refused_naming_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputDirError, match=rf"output_dir {blocker}/run cannot be written: "):
        prepare_output_dir(blocker / "run", resume=False, overwrite=False)


def test_a_disk_without_room_for_a_checkpoint_is_refused(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    check_disk(tmp_path, 1024)
    with pytest.raises(OutputDirError, match=rf"output_dir {tmp_path}: its disk has .* GiB free, and one checkpoint"):
        check_disk(tmp_path, 10 * free + 2**40)


def test_checkpoint_size_counts_weights_and_adam_moments():
    model = torch.nn.Linear(100, 10)  # 1010 float32 weights, all trainable
    assert checkpoint_bytes(model) == int(1.1 * (4 * 1010 + 8 * 1010))
    model.weight.requires_grad_(False)  # 10 trainable
    assert checkpoint_bytes(model) == int(1.1 * (4 * 1010 + 8 * 10))
