"""Run the benchmark matrix: difficulty level x PRM quality x method x seed, same rollouts budget, same hyperparameters.

Layout of a results directory::

    warmstart/                                      the warm-started policy every run starts from
    runs/LEVEL/QUALITY/METHOD/seed-S/metrics.jsonl   PRPOTrainer's per-step metrics
    runs/LEVEL/QUALITY/METHOD/seed-S/eval.jsonl      held-out accuracy every `eval_every` steps
    runs/LEVEL/QUALITY/METHOD/seed-S/provenance.json commit, versions, threads, start and end (`prpo.provenance`)
    bench.json                                      the family, the size preset, the matrix that ran and, per
                                                    invocation, its provenance with start and end times

Results committed to a repository keep ``metrics.jsonl`` and ``samples.jsonl`` gzip-compressed
(``.jsonl.gz``); every reader takes either (`prpo.training.metrics.find_jsonl`).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm
from transformers import PrinterCallback, TrainerCallback
from transformers.utils import logging as hf_logging

from prpo.advantages import ADVANTAGES
from prpo.bench.policy import SIZES as POLICY_SIZES
from prpo.bench.policy import PolicySize, load_char_tokenizer
from prpo.training.metrics import read_jsonl
from prpo.prm import load_prm
from prpo.bench.prm import NOISE, QUALITIES
from prpo.provenance import PROVENANCE_FILE, now, provenance, record_finish, record_start, write_whole
from prpo.bench.family import load_family

METHODS = tuple(ADVANTAGES)  # every registered advantage method, in registration order
EVAL_SPLITS = ("test", "validation")
VALIDATION_SEED = 999_983  # validation problems: the train split with a seed no other draw of the benchmark uses
DEFAULT_FAMILY = "prpo.bench.arithmetic_family:ARITHMETIC"
EVAL_FILE = "eval.jsonl"


@dataclass(frozen=True)
class BenchSize:
    """Everything that scales with the hardware; levels, PRM qualities, methods and seeds share it."""

    policy: PolicySize
    warm_problems: int  # spread evenly over the family's levels
    warm_epochs: float
    rl_steps: int
    prompts_per_step: int
    num_generations: int
    learning_rate: float  # of every method without its own rate in `method_learning_rates`
    eval_every: int
    eval_problems: int
    seeds: int
    noise: float  # flip probability of the noisy PRM
    jobs: int
    use_cpu: bool
    rl_warmup_steps: int = 5  # learning-rate warm-up of RL, so Adam's first, noisy steps stay small
    warm_batch_size: int = 64
    warm_learning_rate: float = 3e-3
    k: int = 5
    min_gap: int = 4
    method_learning_rates: tuple[tuple[str, float], ...] = ()  # (method, rate): rates chosen per method


# The rates issue 24's registered rule chose for the cpu preset (validation problems, medium level; docs/bench.md).
CPU_TUNED_RATES = (("dr_grpo", 1e-4), ("grpo", 1e-4), ("prm_avg", 5e-5), ("process_only", 5e-5), ("prof", 1e-4),
                   ("prpo", 1e-4), ("prpo_prof", 5e-5), ("prpo_sp", 5e-5), ("prpo_sp_uniform", 5e-5), ("pure", 1e-4))


SIZES = {
    "smoke": BenchSize(  # a seconds-long end-to-end check of the whole pipeline (tests, CI)
        policy=POLICY_SIZES["smoke"], warm_problems=48, warm_epochs=1, rl_steps=2, prompts_per_step=2,
        num_generations=4, learning_rate=1e-3, eval_every=1, eval_problems=4, seeds=2, noise=NOISE, jobs=1,
        use_cpu=True,
    ),
    "cpu": BenchSize(  # the tuned headline matrix on 2 cores: 3 levels x 10 methods x 5 seeds, clean PRM (docs/bench.md)
        policy=POLICY_SIZES["cpu"], warm_problems=6000, warm_epochs=8, rl_steps=30, prompts_per_step=8,
        num_generations=8, learning_rate=1e-4, eval_every=10, eval_problems=100, seeds=5, noise=NOISE, jobs=2,
        use_cpu=True, warm_batch_size=32, method_learning_rates=CPU_TUNED_RATES,
    ),
    "gpu": BenchSize(  # one H100/H200: 16 runs at once on the GPU, one CPU thread each
        policy=POLICY_SIZES["gpu"], warm_problems=9000, warm_epochs=10, rl_steps=30, prompts_per_step=16,
        num_generations=8, learning_rate=1e-4, eval_every=10, eval_problems=200, seeds=5, noise=NOISE, jobs=16,
        use_cpu=False, warm_batch_size=128, warm_learning_rate=2e-3,
    ),
}


@dataclass(frozen=True)
class RunSpec:
    """One RL run of the matrix."""

    family: str  # MODULE:NAME or path.py:NAME
    level: str
    quality: str  # clean, noisy or biased PRM
    method: str
    seed: int
    init: str  # warm-started policy folder
    output_dir: str
    size: BenchSize = field(repr=False)
    eval_split: str = "test"  # held-out problems: the test split, or validation problems from the train split


class HeldOutEval(TrainerCallback):
    """Held-out accuracy every ``every`` steps, greedy and sampled (temperature 1, the policy RL optimises).

    Step 0 is the warm start itself, the same for every method and seed of a level: ``step0_cache`` is
    a file that holds its row, written by the first run that needs it (sampling is seeded by the step,
    so it is the row every run would compute) and read by the others.
    """

    def __init__(self, path: Path, task, every: int, max_new_tokens: int, step0_cache: Path | None = None):
        self.path, self.task, self.every, self.max_new_tokens = path, task, every, max_new_tokens
        self.step0_cache = step0_cache

    def evaluate(self, model, tokenizer, step: int) -> None:
        if step == 0 and self.step0_cache is not None and self.step0_cache.exists():
            self._append(json.loads(self.step0_cache.read_text()))
            return
        from prpo.evaluation.evaluate import evaluate_model

        greedy = evaluate_model(model, tokenizer, self.task, max_new_tokens=self.max_new_tokens,
                                batch_size=len(self.task), progress=False)
        # Mean accuracy of 2 samples per problem at temperature 1.
        sampled = evaluate_model(model, tokenizer, self.task, samples=2, temperature=1.0, seed=step,
                                 max_new_tokens=self.max_new_tokens, batch_size=2 * len(self.task),
                                 progress=False).summary
        summary = greedy.summary
        row = {"step": step, "heldout/accuracy": summary["accuracy"], "heldout/length": summary["response_tokens"]["mean"],
               "heldout/final_answer_rate": 1 - summary["no_final_answer_fraction"],
               "heldout/sampled_accuracy": sampled["accuracy"],
               "heldout/correct": [int(record["correct"]) for record in greedy.records]}  # per problem, in task order
        if step == 0 and self.step0_cache is not None:  # a reader never sees half a row
            write_whole(self.step0_cache, json.dumps(row) + "\n")
        self._append(row)

    def _append(self, row: dict) -> None:
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self.evaluate(model, processing_class, 0)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.evaluate(model, processing_class, state.global_step)


def prm_spec_of(spec: RunSpec) -> dict:
    """The run's PRM as a `load_prm` spec (type ``bench_family``): what the run records and what it loads."""
    return {"type": "bench_family", "family": spec.family, "quality": spec.quality, "noise": spec.size.noise,
            "seed": spec.seed}


def heldout_and_train(family, level, spec: RunSpec):
    """The held-out problems (``spec.eval_split``) and the RL training problems of one run.

    ``test``: the family's test split (seed 0), which RL never trains on. ``validation``: problems of
    the train split drawn with `VALIDATION_SEED`, and training problems drawn as usual with none of
    them (drawn with room to spare, in order), so choices made on validation never see the test split.
    """
    size = spec.size
    n_train = size.prompts_per_step * size.rl_steps
    if spec.eval_split == "test":
        return family.task("test", size.eval_problems, level, 0), family.task("train", n_train, level, 1000 + spec.seed)
    heldout = family.task("train", size.eval_problems, level, VALIDATION_SEED)
    reserved = {example.problem for example in heldout.examples}
    drawn = family.task("train", n_train + len(reserved), level, 1000 + spec.seed)
    kept = [example for example in drawn.examples if example.problem not in reserved][:n_train]
    if len(kept) < n_train:
        raise ValueError(f"level {level.name}: only {len(kept)} training problems outside the validation set, "
                         f"{n_train} needed")
    return heldout, replace(drawn, examples=kept)


def run_one(spec: RunSpec, threads: int) -> str:
    """Train one (level, PRM quality, method, seed) from its warm start; record metrics and held-out accuracy."""
    import torch

    from prpo.training.config import PRPOConfig
    from prpo.bench.family import level_named
    from prpo.training.trainer import PRPOTrainer

    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()
    # TRL reads a transformers attribute deprecated for v6, once per step: noise in a log of 100+ runs.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    size = spec.size
    family = load_family(spec.family)
    level = level_named(family, spec.level)
    out = Path(spec.output_dir)
    if (out / EVAL_FILE).exists():  # a rerun starts the run over, never appends to a half-written one
        for name in (EVAL_FILE, "metrics.jsonl", "samples.jsonl", PROVENANCE_FILE):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    record_start(out)
    heldout, train = heldout_and_train(family, level, spec)
    prm_spec = prm_spec_of(spec)
    args = PRPOConfig(
        output_dir=str(out), method=spec.method, seed=spec.seed, data_seed=spec.seed, prm=prm_spec,
        num_generations=size.num_generations,
        per_device_train_batch_size=size.prompts_per_step * size.num_generations,
        max_completion_length=level.max_completion_length, max_prompt_length=128,
        k=size.k, min_gap=size.min_gap, learning_rate=size.learning_rate, warmup_steps=size.rl_warmup_steps,
        max_steps=size.rl_steps,
        temperature=1.0, save_strategy="no", report_to=[], logging_steps=1, samples_per_step=4,
        activation_checkpointing=False, use_cpu=size.use_cpu, bf16=False, disable_tqdm=True,
        dataloader_num_workers=0,
    )
    tokenizer = load_char_tokenizer(spec.init)
    suffix = "" if spec.eval_split == "test" else f"-{spec.eval_split}"
    step0_cache = Path(spec.init) / f"heldout-step0-{spec.level}-{size.eval_problems}{suffix}.json"
    evaluator = HeldOutEval(out / EVAL_FILE, heldout, size.eval_every, level.max_completion_length, step0_cache)
    trainer = PRPOTrainer(
        spec.init, args=args, train_dataset=train.to_dataset(tokenizer), prm=load_prm(prm_spec),
        processing_class=tokenizer, grader=train.grade,
        callbacks=[evaluator],
    )
    trainer.remove_callback(PrinterCallback)  # the runner's progress bar reports; metrics go to metrics.jsonl
    trainer.train()
    record_finish(out)
    return str(out)


def _warm_start(family_spec: str, seed: int, size: BenchSize, folder: str, threads: int) -> str:
    import torch

    from prpo.bench.warmstart import warm_start

    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()
    return str(warm_start(folder, load_family(family_spec), size=size.policy, seed=seed, problems=size.warm_problems,
                          epochs=size.warm_epochs, learning_rate=size.warm_learning_rate,
                          batch_size=size.warm_batch_size, use_cpu=size.use_cpu, progress=True))


def matrix(size: BenchSize, family: str, levels: Sequence[str], qualities: Sequence[str], methods: Sequence[str],
           seeds: Sequence[int], results: Path, *, learning_rates: Mapping[str, float] | None = None,
           eval_split: str = "test") -> list[RunSpec]:
    """Every method on every level and seed with every PRM quality asked for, once per quality it can tell apart.

    A method that never reads the PRM (GRPO, Dr. GRPO) runs once, with the clean PRM, whatever the
    qualities: its run is the baseline of every quality. Ordered seed first, so that a matrix cut
    short holds complete seeds of every level and method. ``learning_rates``: each method's learning
    rate (`effective_learning_rates`); a method without one runs at the preset's ``learning_rate``.
    """
    from prpo.advantages import get_method

    specs = []
    for seed in seeds:
        for level in levels:
            for quality in qualities:
                for method in methods:
                    uses_prm = get_method(method).uses_prm
                    if not uses_prm and quality != qualities[0]:
                        continue  # the PRM-blind run is in once, with the first quality
                    read = quality if uses_prm else "clean"
                    folder = results / "runs" / level / read / method / f"seed-{seed}"
                    lr = (learning_rates or {}).get(method, size.learning_rate)
                    specs.append(RunSpec(family, level, read, method, seed, str(results / "warmstart"), str(folder),
                                         replace(size, learning_rate=lr), eval_split))
    return specs


def effective_learning_rates(size: BenchSize, methods: Sequence[str],
                             asked: Mapping[str, float] | None = None) -> dict[str, float]:
    """Each method's rate: ``asked`` (the command line) over the preset's `method_learning_rates`, for the
    methods of the run; a method in neither runs at ``size.learning_rate``."""
    rates = {method: lr for method, lr in size.method_learning_rates if method in methods}
    return dict(sorted({**rates, **(asked or {})}.items()))


def complete(spec: RunSpec) -> bool:
    """Whether the run's held-out evaluations already reach its last step (an interrupted run is not)."""
    path = Path(spec.output_dir) / EVAL_FILE
    try:
        rows = read_jsonl(path) if path.exists() else []
    except ValueError:  # a line cut short by a kill: the run starts over
        return False
    return bool(rows) and rows[-1].get("step") == spec.size.rl_steps


def check_preset(results: Path, preset: dict) -> None:
    """Refuse to mix runs of another preset or family into ``results`` (its bench.json records both)."""
    path = results / "bench.json"
    if not path.exists():
        return
    before = json.loads(path.read_text()).get("preset", {})
    differ = sorted(key for key in preset.keys() | before.keys() if preset.get(key) != before.get(key))
    if differ:
        raise ValueError(f"{path}: its runs used another preset (differs in {', '.join(differ)}); "
                         "choose another --output")


def bench_invocations(results: Path) -> list[dict]:
    """The provenance of every earlier invocation that ran into ``results`` (bench.json's ``provenance``)."""
    path = results / "bench.json"
    return json.loads(path.read_text()).get("provenance", []) if path.exists() else []


def run_bench(size_name: str, results: Path, *, family: str = DEFAULT_FAMILY, levels: Sequence[str] | None = None,
              qualities: Sequence[str] = ("clean",), methods: Sequence[str] = METHODS, seeds: int | None = None,
              jobs: int | None = None, rl_steps: int | None = None, learning_rates: Mapping[str, float] | None = None,
              eval_split: str = "test") -> Path:
    """Warm-start one policy for the family, then run the matrix from it in ``jobs`` worker processes.

    Every run starts from the same policy, so levels, PRMs, methods and seeds differ only in RL (the
    seed sets sampling and data order). Rerun into the same ``results`` and the existing warm start
    and every complete run are reused: an interrupted benchmark only runs what is missing.
    ``learning_rates``: per-method learning rates over the preset's; ``eval_split``: held-out
    problems from the test split, or ``validation`` problems from the train split (for choosing
    settings; see `heldout_and_train`).
    """
    size = SIZES[size_name] if rl_steps is None else replace(SIZES[size_name], rl_steps=rl_steps)
    loaded = load_family(family)
    known = [level.name for level in loaded.levels]
    levels = list(levels) if levels else known
    for name in levels:
        if name not in known:
            raise ValueError(f"--levels {name!r}: family {loaded.name!r} has levels {', '.join(known)}")
    for quality in qualities:
        if quality not in QUALITIES:
            raise ValueError(f"--prm {quality!r}: choose from {', '.join(QUALITIES)}")
    if eval_split not in EVAL_SPLITS:
        raise ValueError(f"--eval-split {eval_split!r}: choose from {', '.join(EVAL_SPLITS)}")
    for method, lr in (learning_rates or {}).items():
        if method not in methods or not lr > 0:
            raise ValueError(f"learning rate {method}={lr}: needs a method of this run ({', '.join(methods)}) "
                             "and a rate > 0")
    learning_rates = effective_learning_rates(size, methods, learning_rates)
    seeds_list = list(range(seeds if seeds is not None else size.seeds))
    jobs = jobs or size.jobs
    threads = max(1, (os.cpu_count() or 1) // jobs)
    recorded = {key: value for key, value in asdict(size).items() if key != "method_learning_rates"}
    preset = json.loads(json.dumps({**recorded, "family": family, "eval_split": eval_split,
                                    "learning_rates": learning_rates}))
    check_preset(results, preset)
    results.mkdir(parents=True, exist_ok=True)
    specs = matrix(size, family, levels, qualities, methods, seeds_list, results, learning_rates=learning_rates,
                   eval_split=eval_split)
    invocations = bench_invocations(results) + [{**provenance(), "started": now(), "finished": None}]
    record = {"size": size_name, "preset": preset, "levels": levels, "qualities": list(qualities),
              "methods": list(methods), "seeds": seeds_list, "runs": len(specs), "provenance": invocations}
    (results / "bench.json").write_text(json.dumps(record, indent=2) + "\n")
    done = [spec for spec in specs if complete(spec)]
    specs = [spec for spec in specs if spec not in done]
    context = multiprocessing.get_context("spawn")
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        if not (results / "warmstart" / "tokenizer.json").exists():  # written last by warm_start
            print("warm start: supervised training of the initial policy", flush=True)
            pool.submit(_warm_start, family, 0, size, str(results / "warmstart"), os.cpu_count() or 1).result()
        print(f"warm start done after {time.perf_counter() - start:.0f} s; {len(specs)} RL runs to go"
              f" ({len(done)} already complete)", flush=True)
        futures = {pool.submit(run_one, spec, threads): spec for spec in specs}
        failed = []
        with tqdm(total=len(futures), desc="RL runs", unit="run") as bar:
            for future in as_completed(futures):
                spec = futures[future]
                name = f"{spec.level}/{spec.quality}/{spec.method}/seed-{spec.seed}"
                if future.exception() is not None:  # the other runs go on; a rerun retries this one
                    failed.append(f"{name}: {type(future.exception()).__name__}: {future.exception()}")
                    print(f"run {failed[-1]}", flush=True)
                bar.set_postfix_str(name)
                bar.update()
    print(f"benchmark matrix of {len(specs)} runs finished in {time.perf_counter() - start:.0f} s")
    invocations[-1]["finished"] = now()
    (results / "bench.json").write_text(json.dumps(record, indent=2) + "\n")
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(specs)} runs failed (rerun into {results} to retry them):\n"
                           + "\n".join(failed))
    return results
