"""Shared-prefix forward (`shared_prefix`): step, update and log-prob time and peak memory, side by side.

Three workloads, every measurement in a fresh process (peak memory is the process's), variants in an
order rotated by one per round, medians over rounds:

- ``demo``: `make demo`'s run (configs/quickstart.yaml: SmolLM2-135M, LoRA, 2 prompts x 8 rollouts); TRL's own
  `GRPOTrainer`, prpo GRPO unshared, prpo GRPO shared and prpo PRPO shared, ``--steps`` optimiser steps each,
  the first dropped. update = a step's forward/backward/optimiser time; log-probs = the no-grad passes
  (reference, old policy); step = the whole step.
- ``long``: a random Qwen2 (``--long-layers`` x ``--long-hidden``), one prompt of 1024 tokens x 8 completions
  of 64: forward + backward of the loss (update) and a no-grad log-prob pass, unshared and shared.
- ``paper``: on paper, the tokens each pass forwards at the paper's shape (prompt ~150, responses 1,000-2,000,
  G = 8).

    python speed/bench_shared_prefix.py --rounds 2 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

DEMO = ("trl_grpo", "grpo_unshared", "grpo_shared", "prpo_shared")
LONG = ("unshared", "shared")


def peak_memory_mib() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def timed_methods(trainer, times: dict[str, float]) -> None:
    """Time the rollout (generation, rewards, log-prob passes) and the no-grad log-prob passes of ``trainer``."""
    import torch

    def wrap(name, key, only_no_grad=False):
        original = getattr(trainer, name)

        def timed(*args, **kwargs):
            if only_no_grad and torch.is_grad_enabled():
                return original(*args, **kwargs)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                times[key] += time.perf_counter() - start
        setattr(trainer, name, timed)

    wrap("_generate_and_score_completions", "rollout")
    wrap("_get_per_token_logps_and_entropies", "logprobs", only_no_grad=True)
    wrap("training_step", "training_step")


def one_demo(variant: str, steps: int, device: str) -> dict:
    """One training run of the demo workload; per-step times of the steps after the first."""
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer, get_peft_config

    from prpo.commands.train import QUICKSTART, load_task_section, resolve_policy
    from prpo.training.run_config import load_config
    from prpo.training.trainer import PRPOTrainer

    method = "prpo" if variant == "prpo_shared" else "grpo"
    overrides = [f"--method={method}", f"--max_steps={steps}", "--save_steps=1000", "--eval_before_after=false",
                 f"--shared_prefix={'false' if variant == 'grpo_unshared' else 'auto'}",
                 f"--use_cpu={'true' if device == 'cpu' else 'false'}", f"--bf16={'false' if device == 'cpu' else 'true'}"]
    if method == "grpo":
        overrides.append("--prm=null")
    with tempfile.TemporaryDirectory() as out:
        config = load_config(QUICKSTART, [*overrides, f"--output_dir={out}"])
        task = load_task_section(config.task, "task")
        path = resolve_policy(config)
        args = config.training
        peft = get_peft_config(config.model)
        if variant == "trl_grpo":
            trl_args = GRPOConfig(
                output_dir=out, num_generations=args.num_generations, per_device_train_batch_size=args.per_device_train_batch_size,
                max_completion_length=args.max_completion_length, temperature=args.temperature,
                learning_rate=args.learning_rate, lr_scheduler_type=args.lr_scheduler_type, warmup_steps=args.warmup_steps,
                beta=args.beta, loss_type=args.loss_type, epsilon=args.epsilon, max_steps=steps, seed=args.seed,
                save_strategy="no", report_to=[], logging_steps=1, gradient_checkpointing=False,
                use_cpu=args.use_cpu, bf16=args.bf16, weight_decay=args.weight_decay,
            )

            def reward(completions, answer, **_):
                texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
                return [1.0 if ok else -1.0 for ok in task.grade(texts, answer)]

            trainer = GRPOTrainer(path, reward_funcs=reward, args=trl_args, train_dataset=task.to_dataset(),
                                  peft_config=peft)
        else:
            trainer = PRPOTrainer(path, args=args, train_dataset=task.to_dataset(), grader=task.grade, peft_config=peft)
        times: dict[str, float] = defaultdict(float)
        timed_methods(trainer, times)
        rows = []

        class PerStep(TrainerCallback):
            def on_step_begin(self, *_, **__):
                times.clear()
                times["start"] = time.perf_counter()

            def on_step_end(self, *_, **__):
                step = time.perf_counter() - times["start"]
                rows.append({"step": step, "update": times["training_step"] - times["rollout"],
                             "logprobs": times["logprobs"], "rollout": times["rollout"]})

        trainer.add_callback(PerStep())
        trainer.train()
        ratio = [r.get("shared_prefix/token_ratio") for r in trainer.state.log_history if "shared_prefix/token_ratio" in r]
        generate = [r["time/generate"] for r in trainer.state.log_history if "time/generate" in r][1:]
        prefill = prefill_seconds(trainer, task, args.per_device_train_batch_size // args.num_generations,
                                  args.num_generations) if variant == "prpo_shared" else None
    return {"rows": rows[1:], "token_ratio": statistics.fmean(ratio) if ratio else 1.0, "peak_mib": peak_memory_mib(),
            "generate": statistics.median(generate) if generate else None, "prefill": prefill}


def prefill_seconds(trainer, task, prompts: int, generations: int) -> float:
    """One no-grad forward of a generation batch's prompts (``prompts`` x ``generations`` rows, left-padded): what
    sharing the generation's prefill could save at most (1 - 1/G of it); the median of 3."""
    import torch

    tokenizer = trainer.processing_class
    texts = [tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
             for row in task.to_dataset().select(range(prompts))]
    batch = tokenizer([text for text in texts for _ in range(generations)], return_tensors="pt", padding=True,
                      padding_side="left", add_special_tokens=False).to(trainer.model.device)
    times = []
    with torch.no_grad():
        for _ in range(3):
            start = time.perf_counter()
            trainer.model(**batch, logits_to_keep=1)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def one_long(variant: str, repeats: int, layers: int, hidden: int, device: str) -> dict:
    """The long-prompt workload: loss forward + backward and a no-grad pass, ``repeats`` times each."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from prpo.training.shared_prefix import prompt_groups, shared_logps

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=32000, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=max(hidden // 64, 1), num_key_value_heads=max(hidden // 128, 1),
                         max_position_embeddings=4096, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(config).to(device).train()
    add_fused_lm_head(model, temperature=1.0, outputs=("log_probs", "entropy"))
    prompt, completion, rows = 1024, 64, 8
    ids = torch.cat([torch.randint(1, 32000, (1, prompt)).expand(rows, -1),
                     torch.randint(1, 32000, (rows, completion))], 1).to(device)
    mask = torch.ones_like(ids)
    groups = prompt_groups(ids[:, :prompt], mask[:, :prompt])

    def logps():
        if variant == "shared":
            return shared_logps(model, model.model, ids, mask, completion, groups)[0]
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :-completion] = -100
        return model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True).log_probs[:, -completion:]

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    update, forward = [], []
    for _ in range(repeats + 1):  # the first of each is a warm-up
        sync()
        start = time.perf_counter()
        logps().sum().backward()
        sync()
        update.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        with torch.no_grad():
            logps()
        sync()
        forward.append(time.perf_counter() - start)
    return {"update": statistics.median(update[1:]), "logprobs": statistics.median(forward[1:]),
            "peak_mib": peak_memory_mib()}


def measure(args: argparse.Namespace, workload: str, variant: str) -> dict:
    """Run one measurement in a fresh Python process (its own peak memory)."""
    command = [sys.executable, __file__, "--one", workload, variant, "--steps", str(args.steps), "--device", args.device,
               "--long-layers", str(args.long_layers), "--long-hidden", str(args.long_hidden)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"{workload}/{variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def rotated(variants: tuple[str, ...], rounds: int):
    for round_ in range(rounds):
        shift = round_ % len(variants)
        yield from variants[shift:] + variants[:shift]


def paper_table() -> None:
    from prpo.training.shared_prefix import token_ratio

    print("\npaper shape, on paper (G = 8, prompt 150 tokens): tokens forwarded per group, unshared / shared")
    print(f"{'response':>9s} {'unshared':>9s} {'shared':>8s} {'ratio':>6s}   attention key-query pairs unshared / shared")
    for response in (1000, 1500, 2000):
        rows, prompt = 8, 150
        unshared, shared = rows * (prompt + response), (prompt - 1) + rows * (response + 1)
        pairs_unshared = rows * (prompt + response) * (prompt + response + 1) / 2
        pairs_shared = prompt * (prompt - 1) / 2 + rows * (response + 1) * (prompt + (response + 1) / 2)
        print(f"{response:9d} {unshared:9d} {shared:8d} {token_ratio(rows, 1, prompt, response):6.3f}   "
              f"{pairs_unshared / pairs_shared:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["demo", "long", "paper"], choices=["demo", "long", "paper"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="demo: optimiser steps per run (the first is dropped); "
                        "long: repeats")
    parser.add_argument("--long-layers", type=int, default=4)
    parser.add_argument("--long-hidden", type=int, default=256)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--one", nargs=2, metavar=("WORKLOAD", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        workload, variant = args.one
        result = (one_demo(variant, args.steps, args.device) if workload == "demo"
                  else one_long(variant, args.steps, args.long_layers, args.long_hidden, args.device))
        print(json.dumps(result))
        return

    import torch

    from prpo.provenance import code_version

    code = code_version()
    print(f"prpo commit {code['commit']}{' (dirty)' if code['dirty'] else ''}")
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""))
    if "demo" in args.workloads:
        results = defaultdict(list)
        for variant in rotated(DEMO, args.rounds):
            results[variant].append(measure(args, "demo", variant))
        print(f"\ndemo workload (configs/quickstart.yaml), {args.rounds} rounds x {args.steps - 1} timed steps, medians")
        print(f"{'variant':15s} {'step s':>8s} {'update s':>9s} {'logprob s':>10s} {'token ratio':>12s} {'peak MiB':>9s}")
        median = {}
        for variant in DEMO:
            rows = [row for result in results[variant] for row in result["rows"]]
            median[variant] = {key: statistics.median(row[key] for row in rows) for key in ("step", "update", "logprobs")}
            peak = max(result["peak_mib"] for result in results[variant])
            ratio = statistics.fmean(result["token_ratio"] for result in results[variant])
            m = median[variant]
            print(f"{variant:15s} {m['step']:8.2f} {m['update']:9.2f} {m['logprobs']:10.2f} {ratio:12.2f} {peak:9.0f}")
        shared = results["prpo_shared"]
        print(f"generation (prpo_shared): {statistics.median(r['generate'] for r in shared):.2f} s per step, of which a "
              f"prefill of the prompts takes about {statistics.median(r['prefill'] for r in shared):.2f} s")
        print(f"update grpo_shared / grpo_unshared = {median['grpo_shared']['update'] / median['grpo_unshared']['update']:.3f}"
              f" (target <= 0.45); step prpo_shared / trl_grpo = "
              f"{median['prpo_shared']['step'] / median['trl_grpo']['step']:.3f} (target <= 0.6)")
    if "long" in args.workloads:
        results = defaultdict(list)
        for variant in rotated(LONG, args.rounds):
            results[variant].append(measure(args, "long", variant))
        print(f"\nlong prompt: random Qwen2 {args.long_layers} layers x {args.long_hidden}, prompt 1024 + completion 64, "
              f"G = 8; {args.rounds} rounds x {args.steps} repeats, medians")
        median = {}
        for variant in LONG:
            median[variant] = {key: statistics.median(r[key] for r in results[variant]) for key in ("update", "logprobs")}
            peak = max(r["peak_mib"] for r in results[variant])
            print(f"{variant:10s} update {median[variant]['update']:.3f} s  log-prob pass "
                  f"{median[variant]['logprobs']:.3f} s  peak {peak:.0f} MiB")
        print(f"update shared / unshared = {median['shared']['update'] / median['unshared']['update']:.3f} "
              f"(target <= 0.3); log-prob pass {median['shared']['logprobs'] / median['unshared']['logprobs']:.3f}")
    if "paper" in args.workloads:
        paper_table()


if __name__ == "__main__":
    main()
