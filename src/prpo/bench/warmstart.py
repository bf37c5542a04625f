"""Supervised warm start of the benchmark policy with TRL's `SFTTrainer` (loss on the solution only)."""

from __future__ import annotations

import random
from pathlib import Path

from datasets import Dataset
from transformers import PrinterCallback
from trl import SFTConfig, SFTTrainer

from prpo.bench.policy import PolicySize, build_policy, char_tokenizer
from prpo.bench.family import TaskFamily


def warm_start_rows(family: TaskFamily, problems: int, seed: int) -> list[dict[str, str]]:
    """Prompt/completion rows for supervised warm start: ``problems`` train problems spread evenly over
    the family's levels, each with a solution carrying the family's systematic errors."""
    from prpo.tasks.templates import get_template

    rng, rows = random.Random(seed), []
    for level in family.levels:
        task = family.task("train", problems // len(family.levels), level, seed)
        template = get_template(task.template)
        rows += [{"prompt": template.text(e.problem), "completion": family.warm_solution(e, rng)} for e in task.examples]
    return rows


def warm_start(
    output_dir: str | Path,
    family: TaskFamily,
    *,
    size: PolicySize,
    seed: int,
    problems: int,
    epochs: float,
    learning_rate: float = 3e-3,
    batch_size: int = 64,
    use_cpu: bool = True,
    progress: bool = False,
) -> Path:
    """Train a fresh policy on the family's solutions with systematic errors (`warm_start_rows`);
    save it with its tokenizer to ``output_dir``. One warm start serves every level of the family."""
    output_dir = Path(output_dir)
    tokenizer = char_tokenizer()
    model = build_policy(size, tokenizer, seed)
    rows = warm_start_rows(family, problems, seed)
    args = SFTConfig(
        output_dir=str(output_dir / "sft"),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=20,
        weight_decay=0.0,
        logging_steps=20,
        save_strategy="no",
        report_to=[],
        seed=seed,
        use_cpu=use_cpu,
        bf16=False,
        max_length=size.max_positions,
        dataset_num_proc=None,
        disable_tqdm=not progress,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    trainer.model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
