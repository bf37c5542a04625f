"""`PRPOTrainer`: TRL's `GRPOTrainer` with token-level advantages from entropy segments and a PRM.

One step (ALGORITHM.md): generate G responses per prompt (TRL), grade each against its own gold
answer (`OutcomeReward`, a TRL reward function), take the sampling policy's per-token entropy,
segment, score the segments with the PRM, compute ``A[B, T]`` with the configured method of
`prpo.advantages`, and hand it to TRL's loss, which takes (B, T) advantages as they are. Rollouts,
loss, KL and optimiser are TRL's for every method, so methods differ only in their advantages.

Where the entropy comes from (no extra forward pass where the engine allows it):
- transformers `generate`: a forward hook on the policy keeps ``H(softmax(logits / T))`` of every
  decoding step; cost: one chunked logsumexp over the vocabulary per step.
- vLLM with importance-sampling correction, or off-policy steps (``num_iterations > 1``): TRL
  already runs the old-policy log-prob pass; it is asked for entropies too (the fused LM head
  computes them at the rollout temperature in the same tiles).
- otherwise (vLLM without correction, continuous batching): one extra no-grad forward pass over
  prompt + response, about a third of the cost of the training forward + backward.

Groups are whole across processes: R, masks, token scores and segment ids are gathered, the
advantages are computed on the global batch with groups taken from each sample's prompt id,
and each process keeps its own rows.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import trl
from accelerate.utils import gather_object
from packaging.version import Version
from torch import Tensor
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing

from prpo.advantages import compute_advantages, outcome_location, outcome_rewards, process_advantage
from prpo.config import PRPOConfig
from prpo.metrics import RunFiles
from prpo.segmentation import (
    entropy_segments,
    fixed_segments,
    marker_segments,
    num_segments,
    scores_to_tokens,
    segment_spans,
    token_entropy,
    token_offsets,
)

TRL_VERSION = "1.16.0"
REQUIRED_COLUMNS = ("prompt", "problem", "answer", "prompt_id")


def completion_text(completion: str | list[dict[str, Any]]) -> str:
    """The text of a TRL completion: a string, or a conversational ``[{"role": "assistant", "content": ...}]``."""
    if isinstance(completion, str):
        return completion
    return "".join(message["content"] for message in completion if message.get("role") == "assistant")


class OutcomeReward:
    """TRL reward function: ``R_i`` from grading response i against the gold answer carried in its own row.

    Keeps the last call's texts, correctness and rewards (this process's rows, in order) for the
    trainer's metrics and samples.
    """

    __name__ = "outcome"

    def __init__(self, grade_many: Callable[[list[str], list[str]], list[bool]], args: PRPOConfig):
        self.grade_many = grade_many
        self.correct_reward, self.wrong_reward, self.overlong_len = args.correct_reward, args.wrong_reward, args.overlong_len
        self.texts: list[str] = []
        self.correct: list[bool] = []
        self.rewards: list[float] = []
        self.seconds = 0.0

    def __call__(self, prompts, completions, completion_ids, answer, **kwargs) -> list[float]:
        start = time.perf_counter()
        self.texts = [completion_text(c) for c in completions]
        self.correct = [bool(c) for c in self.grade_many(self.texts, list(answer))]
        if len(self.correct) != len(self.texts):
            raise ValueError(f"grader returned {len(self.correct)} verdicts for {len(self.texts)} responses")
        lengths = torch.tensor([len(ids) for ids in completion_ids])
        self.rewards = outcome_rewards(
            torch.tensor(self.correct), lengths,
            correct_reward=self.correct_reward, wrong_reward=self.wrong_reward, overlong_len=self.overlong_len,
        ).tolist()
        self.seconds = time.perf_counter() - start
        return self.rewards


class GenerationEntropy:
    """Forward hook keeping ``H(softmax(logits[:, -1] / T))`` of each decoding step of `generate`."""

    def __init__(self, temperature: float):
        self.temperature = temperature
        self.steps: list[Tensor] = []
        self.seconds = 0.0

    def __call__(self, module, args, output) -> None:
        start = time.perf_counter()
        self.steps.append(token_entropy(output.logits[:, -1, :].detach(), self.temperature))
        self.seconds += time.perf_counter() - start

    def entropies(self, width: int) -> Tensor:
        """Entropies as [B, width]: position t is the distribution that sampled response token t."""
        table = torch.stack(self.steps, dim=1)
        if table.shape[1] < width:
            table = torch.nn.functional.pad(table, (0, width - table.shape[1]))
        return table[:, :width]


def check_dataset(dataset, tokenizer, max_prompt_length: int | None) -> None:
    """Every row has a prompt, a problem text, a gold answer and a prompt id; prompts fit; ids are unique."""
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(f"train dataset lacks column(s) {missing}; PRPO needs {list(REQUIRED_COLUMNS)} "
                         "(prpo.tasks.Task.to_dataset builds them)")
    problems: dict[Any, str] = {}
    for index, row in enumerate(dataset):
        where = f"dataset row {index} (prompt_id {row['prompt_id']!r})"
        if row["prompt_id"] is None:
            raise ValueError(f"dataset row {index}: prompt_id is missing")
        for column in ("problem", "answer"):
            if not isinstance(row[column], str) or not row[column].strip():
                raise ValueError(f"{where}: {column} must be a non-empty string, got {row[column]!r}")
        if not row["prompt"]:
            raise ValueError(f"{where}: prompt is empty")
        if problems.setdefault(row["prompt_id"], row["problem"]) != row["problem"]:
            raise ValueError(f"{where}: prompt_id is shared with a different problem; groups would merge")
        if max_prompt_length is not None:
            length = _prompt_length(tokenizer, row["prompt"])
            if length > max_prompt_length:
                raise ValueError(f"{where}: prompt is {length} tokens, more than max_prompt_length={max_prompt_length}")


def _prompt_length(tokenizer, prompt: str | list[dict[str, str]]) -> int:
    if isinstance(prompt, str):
        return len(tokenizer(prompt)["input_ids"])
    return len(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])


class PRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose advantages are PRPO's (or a baseline's) token-level ``A[B, T]``.

    Args:
        model: model id, local folder or `PreTrainedModel` (as for `GRPOTrainer`).
        args: a `PRPOConfig`.
        train_dataset: rows with ``prompt``, ``problem``, ``answer`` and ``prompt_id``.
        prm: a `prpo.prm.ProcessRewardModel`; default ``load_prm(args.prm)`` when the method uses one.
        grader: ``grader(responses, golds) -> list[bool]`` (e.g. ``task.grade``); default
            `prpo.grading.is_correct_many` with ``args.grading_timeout``.
    """

    _tag_names = ["trl", "grpo", "prpo"]

    def __init__(
        self,
        model,
        args: PRPOConfig,
        train_dataset,
        *,
        prm=None,
        grader: Callable[[list[str], list[str]], list[bool]] | None = None,
        eval_dataset=None,
        processing_class=None,
        callbacks: Sequence[Any] = (),
        peft_config=None,
    ):
        if Version(trl.__version__) != Version(TRL_VERSION):
            raise RuntimeError(f"PRPOTrainer is built on TRL {TRL_VERSION}, found {trl.__version__}")
        if not isinstance(args, PRPOConfig):
            raise TypeError(f"args must be a PRPOConfig, got {type(args).__name__}")
        if grader is None:
            from prpo.grading import is_correct_many

            grader = functools.partial(is_correct_many, timeout=args.grading_timeout)
        self.uses_prm = args.uses_prm()
        if prm is None and self.uses_prm:
            from prpo.prm import load_prm

            prm = load_prm(args.prm)
        self.prm = prm
        self.advantage_kwargs = args.advantage_kwargs()
        self.outcome_reward = OutcomeReward(grader, args)
        self.run_files = RunFiles(args.output_dir, collapse_window=args.collapse_window, collapse_drop=args.collapse_drop)
        super().__init__(
            model=model,
            reward_funcs=[self.outcome_reward],
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=[self.run_files, *callbacks],
            peft_config=peft_config,
        )
        check_dataset(train_dataset, self._tokenizer, args.max_prompt_length)
        if eval_dataset is not None:
            check_dataset(eval_dataset, self._tokenizer, args.max_prompt_length)
        needs_entropy = self.uses_prm and args.segmenter == "entropy"
        self._entropy_from_generation = needs_entropy and not (self.use_vllm or args.use_transformers_continuous_batching)
        self._entropy_from_old_pass = needs_entropy and not self._entropy_from_generation and self._old_pass_runs()
        self._capture_old_entropy = False
        self._captured_entropy: Tensor | None = None
        self._recorder: GenerationEntropy | None = None
        self._rollout_lengths: list[int] = []
        self._times: dict[str, float] = defaultdict(float)
        self._update_seconds = 0.0

    # ------------------------------------------------------------------ engine hooks (minimal overrides)

    def _old_pass_runs(self) -> bool:
        """Whether TRL computes old-policy log-probs this step (same condition as `_generate_and_score_completions`)."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        return self.args.gradient_accumulation_steps % generate_every != 0 or (
            self.use_vllm and self.vllm_importance_sampling_correction
        )

    def _policy_module(self) -> torch.nn.Module:
        model = self.accelerator.unwrap_model(self.model)
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def _generate(self, prompts: list):
        start = time.perf_counter()
        handle = None
        self._recorder = None
        if self._entropy_from_generation:
            self._recorder = GenerationEntropy(self.temperature)
            handle = self._policy_module().register_forward_hook(self._recorder)
        try:
            result = super()._generate(prompts)
        finally:
            if handle is not None:
                handle.remove()
        self._rollout_lengths = [len(ids) for ids in result[1]]
        entropy_seconds = self._recorder.seconds if self._recorder is not None else 0.0
        self._times["entropy"] += entropy_seconds
        self._times["generate"] += time.perf_counter() - start - entropy_seconds
        return result

    def _get_per_token_logps_and_entropies(self, model, *args, compute_entropy=False, **kwargs):
        capture = self._capture_old_entropy and model is self.model
        if not capture:
            return super()._get_per_token_logps_and_entropies(model, *args, compute_entropy=compute_entropy, **kwargs)
        self._capture_old_entropy = False
        start = time.perf_counter()
        logps, entropies, aux = super()._get_per_token_logps_and_entropies(model, *args, compute_entropy=True, **kwargs)
        self._captured_entropy = entropies
        self._times["old_logps"] += time.perf_counter() - start
        return logps, entropies if compute_entropy else None, aux

    def training_step(self, model, inputs, num_items_in_batch):
        start = time.perf_counter()
        self._rollout_seconds = 0.0
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._update_seconds += time.perf_counter() - start - self._rollout_seconds
        if self._step % self.current_gradient_accumulation_steps == 0:
            self._metrics["train"]["time/update"].append(self._update_seconds)
            self._update_seconds = 0.0
        return loss

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        start = time.perf_counter()
        mode = "train" if self.model.training else "eval"
        self._times = defaultdict(float)
        self._captured_entropy = None
        self._capture_old_entropy = self._entropy_from_old_pass
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._capture_old_entropy = False
        self._times["grade"] += self.outcome_reward.seconds
        output["advantages"] = self.token_advantages(inputs, output, self._rollout_lengths, mode)
        elapsed = time.perf_counter() - start
        self._times["logprobs_other"] = elapsed - sum(self._times.values())
        for name, seconds in self._times.items():
            self._metrics[mode][f"time/{name}"].append(seconds)
        self._rollout_seconds = elapsed
        return output

    # ------------------------------------------------------------------ PRPO stages

    @contextlib.contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self._times[name] += time.perf_counter() - start

    def _sampling_entropy(self, output: dict[str, Any]) -> Tensor:
        """Per-token entropy [B, T] of the sampling policy at the rollout temperature."""
        width = output["completion_ids"].shape[1]
        if self._recorder is not None:
            return self._recorder.entropies(width).to(output["completion_ids"].device)
        if self._captured_entropy is not None:
            return self._captured_entropy.float()
        with self._timed("entropy"):
            input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
            attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
            with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
                _, entropies, _ = self._get_per_token_logps_and_entropies(
                    self.model, input_ids, attention_mask, width,
                    batch_size=self.args.per_device_train_batch_size, compute_entropy=True,
                )
        return entropies.float()

    def _segment(self, output: dict[str, Any], mask: Tensor) -> Tensor:
        args = self.args
        if args.segmenter == "entropy":
            entropy = self._sampling_entropy(output)
            self._entropy_sums = torch.stack([(entropy * mask).sum(), mask.sum().float()])
            with self._timed("segment"):
                return entropy_segments(entropy, mask, k=args.k, min_gap=args.min_gap)
        with self._timed("segment"):
            if args.segmenter == "fixed":
                return fixed_segments(mask, args.segment_length)
            ids = output["completion_ids"].tolist()
            lengths = mask.sum(dim=1).tolist()
            pieces = [self._tokenizer.batch_decode([[t] for t in row[:n]], skip_special_tokens=True)
                      for row, n in zip(ids, lengths)]
            texts, offsets = token_offsets(pieces)
            return marker_segments(offsets, texts, mask, marker=args.marker)

    def _segment_texts(self, completion_ids: Tensor, spans: list[list[tuple[int, int]]]) -> list[list[str]]:
        """Decoded token spans of each segment; their concatenation is the decoded response."""
        rows = completion_ids.tolist()
        return [[self._tokenizer.decode(row[s:e], skip_special_tokens=True) for s, e in row_spans]
                for row, row_spans in zip(rows, spans)]

    def _gather_rows(self, tensor: Tensor, pad: float | int) -> Tensor:
        """[B_local, T_local] on every process -> [B_global, T_max], padded on the right with ``pad``."""
        return self.accelerator.gather(self.accelerator.pad_across_processes(tensor, dim=1, pad_index=pad))

    def token_advantages(self, inputs: list[dict[str, Any]], output: dict[str, Any], lengths: list[int], mode: str) -> Tensor:
        """This process's rows of ``A[B, T]`` for a rollout already graded by `outcome_reward`.

        ``inputs`` are the dataset rows (prompt id, problem, gold answer), ``output`` TRL's rollout
        tensors, ``lengths`` the valid response tokens of each row (EOS included).
        """
        completion_ids = output["completion_ids"]
        device = completion_ids.device
        batch, width = completion_ids.shape
        lengths = torch.tensor(lengths, device=device)
        mask = torch.arange(width, device=device)[None, :] < lengths[:, None]

        segment_ids = spans = segment_texts = scores = token_scores = None
        self._entropy_sums = None
        if self.uses_prm:
            segment_ids = self._segment(output, mask)
            spans = segment_spans(segment_ids)
            segment_texts = self._segment_texts(completion_ids, spans)
            with self._timed("prm"):
                from prpo.prm import validate_scores

                problems = [row["problem"] for row in inputs]
                scores = validate_scores(self.prm.score(problems, segment_texts), segment_texts)
            token_scores = scores_to_tokens(scores, segment_ids).to(device)

        with self._timed("advantages"):
            local_ids = [row["prompt_id"] for row in inputs]
            all_ids = gather_object(local_ids)
            dense = {pid: i for i, pid in enumerate(dict.fromkeys(all_ids))}
            group_ids = torch.tensor([dense[pid] for pid in all_ids], device=device)
            rewards = self.accelerator.gather(torch.tensor(self.outcome_reward.rewards, device=device))
            all_mask = self._gather_rows(mask.long(), 0).bool()
            all_scores = None if token_scores is None else self._gather_rows(token_scores, 0.0)
            all_segments = None if segment_ids is None else self._gather_rows(segment_ids.to(device), -1)
            advantages = compute_advantages(
                self.args.method, outcome_rewards=rewards, group_ids=group_ids, mask=all_mask,
                token_scores=all_scores, segment_ids=all_segments, **self.advantage_kwargs,
            )
            rows = slice(self.accelerator.process_index * batch, (self.accelerator.process_index + 1) * batch)
            local = advantages[rows, :width].contiguous()

        self._log_step(mode, rewards, group_ids, all_mask, advantages, all_scores, all_segments)
        if mode == "train" and self.args.samples_per_step != 0:
            self._write_samples(inputs, spans, segment_texts, scores, local, mask)
        return local

    # ------------------------------------------------------------------ metrics and samples

    def _log_step(self, mode, rewards, group_ids, mask, advantages, token_scores, segment_ids) -> None:
        from prpo.grading import extract_final_answer

        metrics = self._metrics[mode]
        device = rewards.device
        correct = self.accelerator.gather(torch.tensor(self.outcome_reward.correct, device=device)).float()
        has_answer = torch.tensor([extract_final_answer(t) is not None for t in self.outcome_reward.texts], device=device)
        metrics["accuracy"].append(correct.mean().item())
        metrics["final_answer_rate"].append(self.accelerator.gather(has_answer).float().mean().item())
        _, dense = torch.unique(group_ids, return_inverse=True)
        n_groups = int(dense.max()) + 1
        hits = torch.zeros(n_groups, device=device).index_add_(0, dense, correct)
        sizes = torch.zeros(n_groups, device=device).index_add_(0, dense, torch.ones_like(correct))
        metrics["frac_groups_same_outcome"].append(((hits == 0) | (hits == sizes)).float().mean().item())
        valid = advantages[mask]
        metrics["advantages/mean"].append(valid.mean().item())
        metrics["advantages/std"].append(valid.std(unbiased=False).item())
        if token_scores is None:
            return
        counts = num_segments(segment_ids)
        metrics["segments/per_response"].append(counts.float().mean().item())
        metrics["segments/mean_length"].append((mask.sum() / counts.sum().clamp(min=1)).item())
        starts = mask.clone()
        starts[:, 1:] &= segment_ids[:, 1:] != segment_ids[:, :-1]
        metrics["prm/score_mean"].append(token_scores[starts].mean().item())
        metrics["prm/first_segment_mean"].append(token_scores[:, 0][mask[:, 0]].mean().item())
        z = process_advantage(token_scores, mask, group_ids, normalization=self.args.normalization,
                              mu0=self.args.mu0, sigma0=self.args.sigma0, eps=self.args.eps)
        beta = outcome_location(rewards, group_ids, scale=self.args.outcome_scale, eps=self.args.eps)[:, None]
        signed = mask & (beta != 0)
        agree = signed & (torch.sign(z) == torch.sign(beta))
        metrics["sign_agreement"].append((agree.sum() / signed.sum().clamp(min=1)).item())
        if self._entropy_sums is not None:
            total, count = self.accelerator.reduce(self._entropy_sums, reduction="sum").tolist()
            metrics["sampling_entropy"].append(total / max(count, 1.0))

    def _write_samples(self, inputs, spans, segment_texts, scores, advantages, mask) -> None:
        """Append up to `samples_per_step` rows (whole process batches first) to samples.jsonl."""
        limit = self.args.samples_per_step
        per_process = len(inputs) if limit < 0 else min(len(inputs), -(-limit // self.accelerator.num_processes))
        lengths = mask.sum(dim=1).tolist()
        spans = spans if spans is not None else [[(0, n)] for n in lengths]
        reward = self.outcome_reward
        rows = []
        for i in range(per_process):
            texts = segment_texts[i] if segment_texts is not None else [reward.texts[i]]
            seg_scores = scores[i] if scores is not None else [None] * len(texts)
            segments = [
                {"text": text, "tokens": end - start, "prm_score": score,
                 "advantage_mean": advantages[i, start:end].mean().item() if end > start else 0.0}
                for text, score, (start, end) in zip(texts, seg_scores, spans[i], strict=True)
            ]
            rows.append({
                "step": self.state.global_step + 1, "prompt_id": inputs[i]["prompt_id"], "prompt": inputs[i]["prompt"],
                "problem": inputs[i]["problem"], "answer": inputs[i]["answer"], "response": reward.texts[i],
                "length": lengths[i], "correct": reward.correct[i], "reward": reward.rewards[i], "segments": segments,
            })
        rows = gather_object(rows)
        if self.accelerator.is_main_process:
            self.run_files.write_samples(rows if limit < 0 else rows[:limit])
