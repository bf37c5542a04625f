"""Supervised warm start of the benchmark policy with TRL's `SFTTrainer` (loss on the solution only)."""

from __future__ import annotations

import random
from pathlib import Path

from datasets import Dataset
from transformers import PrinterCallback
from trl import SFTConfig, SFTTrainer

from prpo.bench.data import bench_task, warm_start_rows
from prpo.bench.policy import PolicySize, build_policy, char_tokenizer


def warm_start(
    output_dir: str | Path,
    *,
    size: PolicySize,
    seed: int,
    problems: int,
    epochs: float,
    error_rate: float,
    misconception_rate: float = 0.0,
    learning_rate: float = 3e-3,
    batch_size: int = 64,
    use_cpu: bool = True,
    progress: bool = False,
) -> Path:
    """Train a fresh policy on solutions with step errors (slips at ``error_rate``, dropped carries at
    ``misconception_rate``); save it with its tokenizer to ``output_dir``."""
    output_dir = Path(output_dir)
    tokenizer = char_tokenizer()
    model = build_policy(size, tokenizer, seed)
    task = bench_task("train", problems, steps=(2, 3), seed=seed)
    rows = warm_start_rows(task, random.Random(seed), error_rate, misconception_rate)
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
