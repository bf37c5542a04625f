"""What a `prpo train` run shows its user: a progress bar with ETA, held-out accuracy before and after
training with 95% intervals, and the run report (curves PNG + credit-assignment HTML).

    trainer = PRPOTrainer(...)
    train_and_report(trainer, eval_task, max_new_tokens=96, batch_size=32, final_dir=run_dir / "final")

The held-out evaluation is greedy pass@1 on the `eval_task` problems (`prpo.evaluation.evaluate_model`),
run on the initial policy, then on the trained one. Every process evaluates all problems (ZeRO-3
needs every rank inside `generate`); the main process writes `eval/{before,after}/` (records and
summary), `eval_before_after.json` (what `prpo.training.report` shows) and the report. On `--resume` the
"before" result of the interrupted run is reused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from transformers import ProgressCallback

from prpo.evaluation.evaluate import EvalResult, evaluate_model, mcnemar_improvement, paired_correctness
from prpo.training.metrics import read_jsonl
from prpo.training.model_card import ModelCard, ModelCardCallback, name_adapter_base
from prpo.training.output_dir import last_complete_checkpoint
from prpo.training.preemption import Preempted, Preemption
from prpo.training.report import BEFORE_AFTER_FILE, accuracy_rows, build_report
from prpo.tasks import Task

EVAL_DIR = "eval"
# metrics shown beside the progress bar: (log key, label)
SHOWN = (("accuracy", "acc"), ("reward", "reward"), ("completions/mean_length", "len"), ("prm/score_mean", "prm"), ("kl", "kl"))


class TrainingProgress(ProgressCallback):
    """HF's training bar (steps, elapsed < remaining, s/it) with the step's key metrics beside it,
    instead of printing every log dict (metrics.jsonl has them all)."""

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            self.training_bar.set_description("PRPO steps")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        shown = {label: f"{logs[key]:.3g}" for key, label in SHOWN if isinstance(logs.get(key), (int, float))}
        if shown:
            self.training_bar.set_postfix(shown, refresh=True)


def held_out_accuracy(trainer, task: Task, *, max_new_tokens: int, batch_size: int, folder: Path) -> EvalResult:
    """Greedy evaluation of the trainer's current policy on `task`; the main process writes `folder`."""
    accelerator = trainer.accelerator
    model = accelerator.unwrap_model(trainer.model)
    result = evaluate_model(model, trainer.processing_class, task, max_new_tokens=max_new_tokens,
                            batch_size=batch_size, progress=accelerator.is_main_process)
    if accelerator.is_main_process:
        result.write(folder)
    return result


def summary_entry(summary: dict[str, Any]) -> dict[str, Any]:
    """The fields of an evaluation summary that `eval_before_after.json` keeps."""
    return {
        "accuracy": summary["accuracy"],
        "accuracy_ci95": summary["accuracy_ci95"],
        "correct": summary["correct"],
        "num_problems": summary["num_problems"],
        "no_final_answer_fraction": summary["no_final_answer_fraction"],
        "response_tokens_mean": summary["response_tokens"]["mean"],
        "wall_seconds": summary["wall_seconds"],
    }


def before_after_table(data: dict[str, Any], title: str) -> str:
    """Before/after accuracy with 95% Wilson intervals, the change and its exact one-sided McNemar test."""
    lines = [title, f"{'':8}{'accuracy':>10}  {'95% interval':>14}  {'correct':>9}"]
    phases, change = accuracy_rows(data)
    lines += [f"{name:8}{accuracy:>9.1f}%  {low:>6.1f}-{high:.1f}%  {counts:>9}" for name, accuracy, low, high, counts in phases]
    lines.append(f"{'change':8}{change:>+8.1f} points")
    test = data["mcnemar"]
    lines.append(f"one-sided exact McNemar test: p = {test['p_value']:.3g} "
                 f"({test['improved']} problems improved, {test['worsened']} worsened)")
    return "\n".join(lines)


def train_and_report(trainer, eval_task: Task | None, *, max_new_tokens: int, batch_size: int, final_dir: Path,
                     resume: bool = False, card: ModelCard | None = None) -> dict[str, Any] | None:
    """Evaluate (if `eval_task`), train, save the model to `final_dir`, evaluate again, print the table,
    write the report. With a `card`, every saved model folder gets it as README.md and LoRA adapters
    name `card.base_model` as their base (not the resolved cache path).

    Returns the before/after data (None without an eval task): each phase's `summary_entry` and
    `mcnemar` (`prpo.evaluation.mcnemar_improvement` on the paired problems).
    """
    run_dir = Path(trainer.args.output_dir)
    main = trainer.accelerator.is_main_process
    trainer.remove_callback(ProgressCallback)
    if not trainer.args.disable_tqdm:
        trainer.add_callback(TrainingProgress())
    if card is not None:
        name_adapter_base(trainer.model, card.base_model)
        trainer.add_callback(ModelCardCallback(card))
    data: dict[str, Any] | None = None
    if eval_task is not None:
        before_dir = run_dir / EVAL_DIR / "before"
        if resume and (before_dir / "summary.json").is_file():
            before = EvalResult(json.loads((before_dir / "summary.json").read_text(encoding="utf-8")),
                                read_jsonl(before_dir / "records.jsonl"))
        else:
            _say(main, f"held-out evaluation of the initial policy: {len(eval_task)} {eval_task.name} problems, greedy")
            before = held_out_accuracy(trainer, eval_task, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                       folder=before_dir)
    preemption = Preemption(trainer.accelerator)
    trainer.add_callback(preemption)
    trainer.train(resume_from_checkpoint=str(last_complete_checkpoint(run_dir)) if resume else None)
    if preemption.stopped_at is not None:
        raise Preempted(preemption.stopped_at, str(run_dir / f"checkpoint-{preemption.stopped_at}"))
    trainer.save_model(str(final_dir))
    if card is not None and main:
        card.write(final_dir)
    if eval_task is not None:
        _say(main, "held-out evaluation of the trained policy")
        after = held_out_accuracy(trainer, eval_task, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                  folder=run_dir / EVAL_DIR / "after")
        data = {"before": summary_entry(before.summary), "after": summary_entry(after.summary),
                "mcnemar": mcnemar_improvement(*paired_correctness(before.records, after.records))}
    if main:
        if data is not None:
            (run_dir / BEFORE_AFTER_FILE).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
            print(before_after_table(data, f"held-out accuracy ({eval_task.name}, greedy, "
                                           f"{data['after']['num_problems']} problems)"), flush=True)
        report = build_report(run_dir)
        print(f"report: {report}\ncurves: {report.parent / 'curves.png'}", flush=True)
    return data


def _say(main: bool, message: str) -> None:
    if main:
        print(message, file=sys.stderr, flush=True)
