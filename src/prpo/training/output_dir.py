"""The run folder, checked before the first step: writable, room for a checkpoint, and never another run's.

A folder that holds a run (`existing_run`: logged steps, a checkpoint, provenance) is refused unless
the command resumes it (``--resume``) or overwrites it on purpose (``--overwrite``, which removes that
run's files and nothing else). A folder that cannot be written, or whose disk cannot take one
checkpoint of this model (`checkpoint_bytes`), is refused before any training, not at the first save.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch

from prpo.provenance import PROVENANCE_FILE, read_provenance
from prpo.training.metrics import METRICS_FILE, SAMPLES_FILE, read_jsonl

RUN_FILES = (METRICS_FILE, SAMPLES_FILE, PROVENANCE_FILE, "eval_before_after.json", "config.yaml", "curves.png",
             "report.html")
RUN_FOLDERS = ("eval", "final")
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
logger = logging.getLogger(__name__)


class OutputDirError(ValueError):
    """The output folder cannot take this run; the message names the folder and what to do."""


def existing_run(folder: Path) -> str | None:
    """A description of the run ``folder`` holds (its logged steps, checkpoints, state), or None."""
    checkpoints = checkpoint_folders(folder)
    metrics = folder / METRICS_FILE
    steps = [row["step"] for row in read_jsonl(metrics) if "step" in row] if metrics.is_file() else []
    entries = read_provenance(folder) if (folder / PROVENANCE_FILE).is_file() else []
    if not (steps or checkpoints or entries):
        return None
    parts = [f"steps {min(steps)}-{max(steps)} logged" if steps else "no step logged"]
    if checkpoints:
        parts.append(f"last checkpoint {checkpoints[-1].name}")
    if entries:
        finished = entries[-1].get("finished")
        parts.append(f"finished {finished}" if finished else "started, not finished (running, or killed)")
    return ", ".join(parts)


def prepare_output_dir(folder: Path, *, resume: bool, overwrite: bool, main: bool = True) -> None:
    """Refuse a folder that holds another run (unless resumed or overwritten) or cannot be written.

    Every process checks; only the ``main`` one removes an overwritten run's files.
    """
    if resume and overwrite:
        raise OutputDirError("--resume continues the run in output_dir, --overwrite deletes it: pass one")
    found = existing_run(folder) if folder.is_dir() else None
    if found and not resume and not overwrite:
        raise OutputDirError(f"output_dir {folder} holds a run ({found}); continue it with --resume, or start "
                             "over with --overwrite (deletes that run's files)")
    if found and overwrite and main:
        for name in RUN_FILES:
            (folder / name).unlink(missing_ok=True)
        for path in [*folder.glob("checkpoint-*"), *(folder / name for name in RUN_FOLDERS)]:
            if path.is_dir():
                shutil.rmtree(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as err:
        raise OutputDirError(f"output_dir {folder} cannot be written: {err.strerror or err}") from None


def checkpoint_folders(folder: Path) -> list[Path]:
    """The ``checkpoint-N`` folders of ``folder``, by step."""
    found = [p for p in folder.glob("checkpoint-*") if p.is_dir() and CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT.match(p.name).group(1)))


def complete_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a whole checkpoint: transformers writes ``trainer_state.json`` last, so a folder
    whose state file is missing, cut short or names another step was being written when the run died."""
    match = CHECKPOINT.match(path.name)
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return match is not None and state.get("global_step") == int(match.group(1))


def last_complete_checkpoint(folder: Path) -> Path:
    """The checkpoint ``--resume`` continues from: the latest complete one. Incomplete ones after it (a kill
    while saving) are removed, naming each; no complete checkpoint at all is an error naming the folder."""
    found = checkpoint_folders(folder)
    complete = [p for p in found if complete_checkpoint(p)]
    if not complete:
        raise OutputDirError(f"output_dir {folder}: nothing to resume, no complete checkpoint "
                             f"({', '.join(p.name for p in found) or 'none'} found); start it with --overwrite")
    for path in found[found.index(complete[-1]) + 1:]:  # all incomplete: complete[-1] is the last complete one
        logger.warning("removing %s: a checkpoint cut short while it was written (no whole trainer_state.json)", path)
        shutil.rmtree(path)
    return complete[-1]


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """Bytes one checkpoint of ``model`` takes, about: the saved weights (the trainable ones alone for an
    adapter model), AdamW's two float32 moments per trainable weight, and a tenth more for the rest."""
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    adapter = hasattr(model, "peft_config")
    weights = 4 * trainable if adapter else sum(p.numel() * p.element_size() for p in params)
    return int(1.1 * (weights + 8 * trainable))


def check_disk(folder: Path, needed: int) -> None:
    """Refuse when the disk holding ``folder`` has less than ``needed`` bytes free."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OutputDirError(f"output_dir {folder}: its disk has {free / 2**30:.2f} GiB free, and one checkpoint "
                             f"of this model takes about {needed / 2**30:.2f} GiB; free space or choose another "
                             "output_dir")
