"""Run the benchmark matrix: every method x seed x PRM setting, same rollouts budget, same hyperparameters.

Layout of a results directory::

    warmstart/                              the warm-started policy every run starts from
    runs/SETTING/METHOD/seed-S/metrics.jsonl  PRPOTrainer's per-step metrics
    runs/SETTING/METHOD/seed-S/eval.jsonl     held-out accuracy every `eval_every` steps
    bench.json                              the size preset and the matrix that ran
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm
from transformers import PrinterCallback, TrainerCallback
from transformers.utils import logging as hf_logging

from prpo.bench.data import bench_task
from prpo.bench.policy import SIZES as POLICY_SIZES
from prpo.bench.policy import PolicySize, load_char_tokenizer
from prpo.metrics import read_jsonl

METHODS = ("grpo", "dr_grpo", "prpo", "process_only", "prm_avg", "pure")
SETTINGS = ("clean", "noisy")
EVAL_FILE = "eval.jsonl"


@dataclass(frozen=True)
class BenchSize:
    """Everything that scales with the hardware; methods and seeds share it."""

    policy: PolicySize
    warm_problems: int
    warm_epochs: float
    error_rate: float
    misconception_rate: float
    rl_steps: int
    prompts_per_step: int
    num_generations: int
    learning_rate: float
    max_completion_length: int
    eval_every: int
    eval_problems: int
    seeds: int
    noise: float
    jobs: int
    use_cpu: bool
    rl_warmup_steps: int = 5  # learning-rate warm-up of RL, so Adam's first, noisy steps stay small
    warm_batch_size: int = 64
    warm_learning_rate: float = 3e-3
    k: int = 5
    min_gap: int = 4
    train_steps: tuple[int, int] = (2, 3)
    long_steps: tuple[int, int] = (4, 5)


SIZES = {
    "smoke": BenchSize(  # a seconds-long end-to-end check of the whole pipeline (tests)
        policy=POLICY_SIZES["smoke"], warm_problems=64, warm_epochs=1, error_rate=0.05, misconception_rate=0.65,
        rl_steps=2, prompts_per_step=2, num_generations=4, learning_rate=1e-3, max_completion_length=16,
        eval_every=1, eval_problems=4, seeds=2, noise=0.15, jobs=1, use_cpu=True,
    ),
    "cpu": BenchSize(  # about 25 minutes on 2 cores: 50 runs, two at a time, one thread each
        policy=POLICY_SIZES["cpu"], warm_problems=6000, warm_epochs=10, error_rate=0.05, misconception_rate=0.65,
        rl_steps=30, prompts_per_step=16, num_generations=8, learning_rate=2e-4, max_completion_length=48,
        eval_every=10, eval_problems=200, seeds=5, noise=0.15, jobs=2, use_cpu=True, warm_batch_size=32,
        warm_learning_rate=3e-3,
    ),
    "gpu": BenchSize(  # one H100/H200: every run of the matrix at once, one CPU thread each
        policy=POLICY_SIZES["gpu"], warm_problems=6000, warm_epochs=16, error_rate=0.05, misconception_rate=0.65,
        rl_steps=30, prompts_per_step=32, num_generations=8, learning_rate=1e-4, max_completion_length=48,
        eval_every=5, eval_problems=300, seeds=5, noise=0.15, jobs=16, use_cpu=False, warm_batch_size=128,
        warm_learning_rate=2e-3,
    ),
}


@dataclass(frozen=True)
class RunSpec:
    """One RL run of the matrix."""

    method: str
    seed: int
    setting: str  # "clean" or "noisy"
    noise: float
    init: str  # warm-started policy folder
    output_dir: str
    size: BenchSize = field(repr=False)


class HeldOutEval(TrainerCallback):
    """Held-out accuracy every ``every`` steps: greedy on the trained chain length and on longer chains,
    and sampled (temperature 1) on the trained length."""

    def __init__(self, path: Path, tasks: dict, every: int, max_new_tokens: int):
        self.path, self.tasks, self.every, self.max_new_tokens = path, tasks, every, max_new_tokens

    def evaluate(self, model, tokenizer, step: int) -> None:
        from prpo.evaluation import evaluate_model

        row: dict[str, float | int] = {"step": step}
        for name, task in self.tasks.items():
            result = evaluate_model(
                model, tokenizer, task, max_new_tokens=self.max_new_tokens, batch_size=len(task), progress=False
            ).summary
            row[f"{name}/accuracy"] = result["accuracy"]
            row[f"{name}/length"] = result["response_tokens"]["mean"]
            row[f"{name}/final_answer_rate"] = 1 - result["no_final_answer_fraction"]
        # The sampling policy RL optimises: mean accuracy of 2 samples per problem at temperature 1.
        sampled = evaluate_model(model, tokenizer, self.tasks["heldout"], samples=2, temperature=1.0, seed=step,
                                 max_new_tokens=self.max_new_tokens, batch_size=2 * len(self.tasks["heldout"]),
                                 progress=False).summary
        row["heldout/sampled_accuracy"] = sampled["accuracy"]
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self.evaluate(model, processing_class, 0)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.evaluate(model, processing_class, state.global_step)


def heldout_tasks(size: BenchSize) -> dict:
    """Test-split problems never seen in training: the trained chain length and longer chains."""
    return {
        "heldout": bench_task("test", size.eval_problems, size.train_steps, seed=0),
        "heldout_long": bench_task("test", size.eval_problems, size.long_steps, seed=0),
    }


def run_one(spec: RunSpec, threads: int) -> str:
    """Train one (method, seed, setting) from its warm start and record metrics and held-out accuracy."""
    import torch

    from prpo.config import PRPOConfig
    from prpo.trainer import PRPOTrainer

    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()
    size = spec.size
    out = Path(spec.output_dir)
    if (out / EVAL_FILE).exists():  # a rerun starts the run over, never appends to a half-written one
        for name in (EVAL_FILE, "metrics.jsonl", "samples.jsonl"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    train = bench_task("train", size.prompts_per_step * size.rl_steps, size.train_steps, seed=1000 + spec.seed)
    args = PRPOConfig(
        output_dir=str(out), method=spec.method, seed=spec.seed, data_seed=spec.seed,
        prm={"type": "arithmetic", "noise": spec.noise, "seed": spec.seed},
        num_generations=size.num_generations,
        per_device_train_batch_size=size.prompts_per_step * size.num_generations,
        max_completion_length=size.max_completion_length, max_prompt_length=64,
        k=size.k, min_gap=size.min_gap, learning_rate=size.learning_rate, warmup_steps=size.rl_warmup_steps,
        max_steps=size.rl_steps,
        temperature=1.0, save_strategy="no", report_to=[], logging_steps=1, samples_per_step=4,
        activation_checkpointing=False, use_cpu=size.use_cpu, bf16=False, disable_tqdm=True,
        dataloader_num_workers=0,
    )
    tokenizer = load_char_tokenizer(spec.init)
    evaluator = HeldOutEval(out / EVAL_FILE, heldout_tasks(size), size.eval_every, 2 * size.max_completion_length)
    trainer = PRPOTrainer(
        spec.init, args, train.to_dataset(tokenizer), processing_class=tokenizer, grader=train.grade,
        callbacks=[evaluator],
    )
    trainer.remove_callback(PrinterCallback)  # the runner's progress bar reports; metrics go to metrics.jsonl
    trainer.train()
    return str(out)


def _warm_start(seed: int, size: BenchSize, folder: str, threads: int) -> str:
    import torch

    from prpo.bench.warmstart import warm_start

    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()
    return str(warm_start(folder, size=size.policy, seed=seed, problems=size.warm_problems, epochs=size.warm_epochs,
                          error_rate=size.error_rate,
                          misconception_rate=size.misconception_rate, learning_rate=size.warm_learning_rate,
                          batch_size=size.warm_batch_size, use_cpu=size.use_cpu, progress=True))


def matrix(size: BenchSize, methods: Sequence[str], seeds: Sequence[int], results: Path,
           settings: Sequence[str] = SETTINGS) -> list[RunSpec]:
    """Clean PRM for every method; the noisy PRM for the methods that use one."""
    from prpo.advantages import get_method

    specs = []
    for setting, noise in (("clean", 0.0), ("noisy", size.noise)):
        if setting not in settings:
            continue
        for method in methods:
            if setting == "noisy" and (noise == 0.0 or not get_method(method).uses_prm):
                continue
            for seed in seeds:
                specs.append(RunSpec(method, seed, setting, noise, str(results / "warmstart"),
                                     str(results / "runs" / setting / method / f"seed-{seed}"), size))
    return specs


def complete(spec: RunSpec) -> bool:
    """Whether the run's held-out evaluations already reach its last step (an interrupted run is not)."""
    path = Path(spec.output_dir) / EVAL_FILE
    try:
        rows = read_jsonl(path) if path.exists() else []
    except ValueError:  # a line cut short by a kill: the run starts over
        return False
    return bool(rows) and rows[-1].get("step") == spec.size.rl_steps


def check_preset(results: Path, preset: dict) -> None:
    """Refuse to mix runs of another preset into ``results`` (its bench.json records the preset)."""
    path = results / "bench.json"
    if not path.exists():
        return
    before = json.loads(path.read_text()).get("preset", {})
    differ = sorted(key for key in preset.keys() | before.keys() if preset.get(key) != before.get(key))
    if differ:
        raise ValueError(f"{path}: its runs used another preset (differs in {', '.join(differ)}); "
                         "choose another --output")


def run_bench(size_name: str, results: Path, *, methods: Sequence[str] = METHODS, seeds: int | None = None,
              jobs: int | None = None, rl_steps: int | None = None, settings: Sequence[str] = SETTINGS) -> Path:
    """Warm-start one policy, then run the matrix from it in ``jobs`` worker processes.

    Every run starts from the same policy, so methods and seeds differ only in RL (the seed sets
    sampling and data order). Rerun into the same ``results`` and the existing warm start and every
    complete run are reused: an interrupted benchmark only runs what is missing.
    """
    size = SIZES[size_name] if rl_steps is None else replace(SIZES[size_name], rl_steps=rl_steps)
    seeds_list = list(range(seeds if seeds is not None else size.seeds))
    jobs = jobs or size.jobs
    threads = max(1, (os.cpu_count() or 1) // jobs)
    preset = json.loads(json.dumps(asdict(size)))
    check_preset(results, preset)
    results.mkdir(parents=True, exist_ok=True)
    specs = matrix(size, methods, seeds_list, results, settings)
    (results / "bench.json").write_text(json.dumps(
        {"size": size_name, "preset": preset, "methods": list(methods), "settings": list(settings),
         "seeds": seeds_list, "runs": len(specs)}, indent=2) + "\n")
    done = [spec for spec in specs if complete(spec)]
    specs = [spec for spec in specs if spec not in done]
    context = multiprocessing.get_context("spawn")
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        if not (results / "warmstart" / "tokenizer.json").exists():  # written last by warm_start
            print("warm start: supervised training of the initial policy", flush=True)
            pool.submit(_warm_start, 0, size, str(results / "warmstart"), os.cpu_count() or 1).result()
        print(f"warm start done after {time.perf_counter() - start:.0f} s; {len(specs)} RL runs to go"
              f" ({len(done)} already complete)", flush=True)
        futures = {pool.submit(run_one, spec, threads): spec for spec in specs}
        with tqdm(total=len(futures), desc="RL runs", unit="run") as bar:
            for future in as_completed(futures):
                future.result()
                spec = futures[future]
                bar.set_postfix_str(f"{spec.setting}/{spec.method}/seed-{spec.seed}")
                bar.update()
    print(f"benchmark matrix of {len(specs)} runs finished in {time.perf_counter() - start:.0f} s")
    return results
