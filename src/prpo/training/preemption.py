"""Preemption: SIGTERM (what SLURM and Kubernetes send before taking the machine) ends the run cleanly.

The first SIGTERM lets the current step finish; at its end the run saves a checkpoint, writes its
files and stops (`Preempted`), and `prpo train` exits 0 naming the command that resumes it. A second
SIGTERM exits at once (status 143). With several processes every one stops after the same step: the
request is reduced across processes at each step's end, so a signal that reached one rank first
stops all of them there.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import torch
from transformers import TrainerCallback


class Preempted(Exception):
    """The run stopped at a SIGTERM after ``step``, with ``checkpoint`` saved."""

    def __init__(self, step: int, checkpoint: str):
        super().__init__(f"stopped by SIGTERM after step {step}; saved {checkpoint}")
        self.step, self.checkpoint = step, checkpoint


class Preemption(TrainerCallback):
    """Turns SIGTERM into "save after this step and stop"; ``stopped_at`` is the step it stopped after."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.requested = False
        self.stopped_at: int | None = None
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            os._exit(128 + signum)  # a second SIGTERM: now
        self.requested = True
        print("prpo train: SIGTERM: finishing this step, then saving a checkpoint and stopping "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        flag = torch.tensor(float(self.requested), device=self.accelerator.device)
        if self.accelerator.reduce(flag, reduction="sum").item() > 0:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
