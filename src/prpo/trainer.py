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
import hashlib
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any

import torch
import trl
from accelerate.utils import gather_object
from datasets import Dataset
from packaging.version import Version
from torch import Tensor
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing

from prpo.advantages import outcome_location, outcome_rewards, process_advantage
from prpo.config import PRPOConfig
from prpo.filters import advantages_on_kept, apply_filter
from prpo.metrics import RunFiles
from prpo.segmentation import (
    SegmentInputs,
    get_segmenter,
    num_segments,
    scores_to_tokens,
    segment_spans,
    token_entropy,
)

logger = logging.getLogger(__name__)
TRL_VERSION = "1.16.0"


def completion_text(completion: str | list[dict[str, Any]]) -> str:
    """The text of a TRL completion: a string, or a conversational ``[{"role": "assistant", "content": ...}]``."""
    if isinstance(completion, str):
        return completion
    return "".join(message["content"] for message in completion if message.get("role") == "assistant")


def prompt_key(prompt: str | list[dict[str, Any]]) -> str:
    """Group id of a prompt without a ``prompt_id``: the first 16 hex digits of sha256 of its canonical JSON.

    Equal prompts get one id (one group); the id is the same in every process, run and resume
    (Python's `hash` of a string is salted per process).
    """
    text = json.dumps(prompt, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def row_prompt_id(row: Mapping[str, Any]) -> Hashable:
    """The row's ``prompt_id``, else `prompt_key` of its prompt."""
    return row["prompt_id"] if "prompt_id" in row else prompt_key(row["prompt"])


def row_problem(row: Mapping[str, Any]) -> str:
    """The text the PRM is shown: the row's ``problem``, else the prompt's last user message (a text prompt as is)."""
    if "problem" in row:
        return row["problem"]
    prompt = row["prompt"]
    if isinstance(prompt, str):
        return prompt
    users = [message["content"] for message in prompt if message.get("role") == "user"]
    if not users:
        return ""
    content = users[-1]
    if isinstance(content, str):
        return content
    return "".join(part.get("text") or "" for part in content if part.get("type") == "text")  # multimodal parts


class OutcomeReward:
    """The outcome reward ``R_i`` of this process's rows of the last rollout, and the response texts.

    ``R_i = sum_k w_k r_ik`` over TRL's reward functions and ``reward_weights`` (`combine`; a None
    reward is skipped; all None: NaN, the response is unscorable), mapped from ``reward_range =
    [lo, hi]`` onto ``[wrong_reward, correct_reward]`` when set: ``wrong + (R - lo) (correct - wrong)
    / (hi - lo)``. Called itself, it is the default reward function: it grades response i against
    the gold ``answer`` of its own row, ``r_i = correct_reward`` or ``wrong_reward``, minus
    ``L_i / overlong_len`` when ``L_i > overlong_len / 2``, and keeps the verdicts in ``correct``.
    """

    __name__ = "outcome"

    def __init__(self, grade_many: Callable[[list[str], list[str]], list[bool]] | None, args: PRPOConfig,
                 reward_range: Sequence[float] | None = None):
        self.grade_many = grade_many
        self.correct_reward, self.wrong_reward, self.overlong_len = args.correct_reward, args.wrong_reward, args.overlong_len
        self.reward_range = reward_range
        self.texts: list[str] = []
        self.correct: list[bool] = []
        self.rewards: list[float] = []

    def __call__(self, prompts, completions, completion_ids, answer, **kwargs) -> list[float]:
        texts = [completion_text(c) for c in completions]
        self.correct = [bool(c) for c in self.grade_many(texts, list(answer))]
        if len(self.correct) != len(texts):
            raise ValueError(f"grader returned {len(self.correct)} verdicts for {len(texts)} responses")
        lengths = torch.tensor([len(ids) for ids in completion_ids])
        return outcome_rewards(
            torch.tensor(self.correct), lengths,
            correct_reward=self.correct_reward, wrong_reward=self.wrong_reward, overlong_len=self.overlong_len,
        ).tolist()

    def combine(self, completions: list, rewards_per_func: Tensor, weights: Tensor) -> None:
        """Set ``texts`` and ``rewards`` from TRL's per-function rewards ``r[B, K]`` of this process's rows."""
        self.texts = [completion_text(c) for c in completions]
        rewards = (rewards_per_func * weights).nansum(dim=1)
        rewards[rewards_per_func.isnan().all(dim=1)] = math.nan
        if self.reward_range is not None:
            low, high = self.reward_range
            rewards = self.wrong_reward + (rewards - low) * (self.correct_reward - self.wrong_reward) / (high - low)
        self.rewards = rewards.tolist()


def declared_reward_range(reward_funcs: Sequence[Any], weights: Sequence[float] | None) -> tuple[float, float] | None:
    """``[low, high]`` of ``R = sum_k w_k r_k`` when every reward function declares ``reward_range = (lo, hi)``, else None.

    A function declares its range as an attribute (``accuracy.reward_range = (0.0, 1.0)``); a
    negative weight swaps its bounds.
    """
    ranges = [getattr(func, "reward_range", None) for func in reward_funcs]
    if any(r is None for r in ranges):
        return None
    weights = [1.0] * len(ranges) if weights is None else list(weights)
    low = sum(w * (lo if w >= 0 else hi) for w, (lo, hi) in zip(weights, ranges, strict=True))
    high = sum(w * (hi if w >= 0 else lo) for w, (lo, hi) in zip(weights, ranges, strict=True))
    return float(low), float(high)


def outcome_reward_range(reward_funcs: Any, args: PRPOConfig) -> tuple[float, float] | None:
    """The range `OutcomeReward` maps onto ``[wrong_reward, correct_reward]``: ``args.reward_range``, else the declared one.

    Refused with the built-in grader (its R is already in those units); without either range, R keeps
    the reward functions' units and a warning says what that does to beta.
    """
    if not reward_funcs:
        if args.reward_range is not None:
            raise ValueError(f"reward_range={args.reward_range} maps the weighted sum of reward_funcs onto [wrong_reward, "
                             "correct_reward]; without reward_funcs the built-in grader's R is already correct_reward / "
                             "wrong_reward and would be mapped twice: remove reward_range")
        return None
    if args.reward_range is not None:
        return tuple(args.reward_range)
    funcs = reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
    declared = declared_reward_range(funcs, args.reward_weights)
    if declared is None:
        logger.warning(
            "reward_funcs without reward_range: R = sum_k w_k r_k is used in the reward functions' units, so PRPO's "
            "outcome location beta = R - mean_g R is not in the paper's +-1 units beside the PRM's Z (0/1 rewards halve "
            "it); set reward_range: [low, high] of R (e.g. [0, 1]), or give each reward function a reward_range "
            "attribute"
        )
    return declared


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


def check_dataset(dataset, tokenizer, max_prompt_length: int | None, *, needs_answer: bool = True) -> None:
    """Every row has a prompt and a problem text, and a gold ``answer`` when ``needs_answer`` (the default grader).

    ``prompt_id`` and ``problem`` may be absent (`row_prompt_id`, `row_problem` derive them); a
    prompt id shared by different problems would merge groups and is refused, and every prompt
    fits ``max_prompt_length``. A dict of datasets (TRL's eval sets) is checked set by set; a
    streamed dataset is not read here.
    """
    if isinstance(dataset, Mapping):
        for part in dataset.values():
            check_dataset(part, tokenizer, max_prompt_length, needs_answer=needs_answer)
        return
    if not isinstance(dataset, Dataset):
        return
    columns = dataset.column_names
    if "prompt" not in columns:
        raise ValueError(f"dataset lacks the 'prompt' column (text or conversational, as for GRPOTrainer); has {columns}")
    if needs_answer and "answer" not in columns:
        raise ValueError(f"dataset lacks the 'answer' column (has {columns}): the default grader checks each response "
                         "against it; add it, or pass reward_funcs (e.g. trl.rewards.accuracy_reward reads 'solution')")
    problems: dict[Any, str] = {}
    for index, row in enumerate(dataset):
        if "prompt_id" in row and row["prompt_id"] is None:
            raise ValueError(f"dataset row {index}: prompt_id is missing")
        prompt_id = row_prompt_id(row)
        where = f"dataset row {index} (prompt_id {prompt_id!r})"
        if not row["prompt"]:
            raise ValueError(f"{where}: prompt is empty")
        problem = row_problem(row)
        if not isinstance(problem, str) or not problem.strip():
            source = "problem" if "problem" in row else "the prompt's last user message (no 'problem' column)"
            raise ValueError(f"{where}: {source} must be a non-empty string, got {problem!r}")
        if needs_answer and (not isinstance(row["answer"], str) or not row["answer"].strip()):
            raise ValueError(f"{where}: answer must be a non-empty string, got {row['answer']!r}")
        if problems.setdefault(prompt_id, problem) != problem:
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

    A drop-in for `GRPOTrainer`: the same arguments with the same meanings, plus ``prm`` (and
    ``grader``). Rollouts, reward functions, loss, KL and optimiser are TRL's; only the advantages
    differ. PRPO (Ding et al., arXiv 2601.07182): ``A[i, t] = Z[i, t] + beta_i`` with ``Z`` the PRM
    score of the token's entropy segment, normalised, and ``beta_i = R_i - mean_g R``::

        trainer = PRPOTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", reward_funcs=accuracy_reward,
                              args=PRPOConfig(output_dir="out", reward_range=[0, 1]), train_dataset=dataset,
                              prm={"type": "step_tag", "model": "Qwen/Qwen2.5-Math-PRM-7B"})

    Args:
        model: model id, local folder or `PreTrainedModel`.
        reward_funcs: TRL reward functions (or reward-model ids); ``R_i = sum_k w_k r_ik`` with
            ``args.reward_weights``, then ``args.reward_range`` (see `OutcomeReward`). None: grade
            each response against its row's ``answer`` (``grader``), ``R = +-1``.
        args: a `PRPOConfig` (default: ``PRPOConfig("<model name>-PRPO")``).
        train_dataset, eval_dataset: rows with ``prompt`` (text or conversational); optional
            ``prompt_id`` (default: a hash of the prompt, equal prompts form one group) and
            ``problem`` (the PRM's question; default: the prompt's last user message); ``answer``
            for the default grader; every other column reaches the reward functions, as in TRL.
        processing_class, reward_processing_classes, callbacks, optimizers, quantization_config,
            peft_config: as for `GRPOTrainer`.
        tools, rollout_func, environment_factory: refused (docs/trl.md says why).
        prm: a `load_prm` spec (name, mapping or config file), an object with
            ``score(problems, segments)``, or a function ``(problems, segments) -> scores``;
            default ``args.prm``. Needed by methods that use a PRM.
        grader: ``grader(responses, golds) -> list[bool]`` of the default reward; default
            `prpo.grading.is_correct_many` with ``args.grading_timeout``.
    """

    _tag_names = ["trl", "grpo", "prpo"]
    _name = "PRPO"  # TRL's model card: "trained with PRPO", citing the paper below
    _paper = {
        "title": "PRPO: Aligning Process Reward with Outcome Reward in Policy Optimization",
        "id": "2601.07182",
        "citation": "@article{ding2026prpo,\n    title   = {{PRPO: Aligning Process Reward with Outcome Reward in Policy "
                    "Optimization}},\n    author  = {Ding and others},\n    journal = {arXiv preprint arXiv:2601.07182},\n"
                    "    year    = 2026\n}",
    }

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: PRPOConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        reward_processing_classes=None,
        callbacks: list[Any] | None = None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
        tools=None,
        rollout_func=None,
        environment_factory=None,
        *,
        prm=None,
        grader: Callable[[list[str], list[str]], list[bool]] | None = None,
    ):
        if Version(trl.__version__) != Version(TRL_VERSION):
            raise RuntimeError(f"PRPOTrainer is built on TRL {TRL_VERSION}, found {trl.__version__}")
        if isinstance(reward_funcs, PRPOConfig):
            raise TypeError("PRPOTrainer takes GRPOTrainer's argument order (model, reward_funcs, args, train_dataset, "
                            "...): pass args= and train_dataset= by keyword")
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = PRPOConfig(f"{name.rstrip('/').split('/')[-1]}-PRPO")
        if not isinstance(args, PRPOConfig):
            raise TypeError(f"args must be a PRPOConfig, got {type(args).__name__}")
        refused = {"tools": tools, "environment_factory": environment_factory, "rollout_func": rollout_func}
        for key, value in refused.items():
            if value:
                raise ValueError(f"{key} is not supported by PRPOTrainer: multi-turn and custom rollouts put tokens "
                                 "the policy did not sample (tool outputs) into the completion, which the PRM would "
                                 "score as its reasoning; see docs/trl.md")
        if reward_funcs and grader is not None:
            raise ValueError("grader grades the default reward; with reward_funcs given it would not be used: pass one")
        if reward_funcs and args.overlong_len is not None:
            raise ValueError(f"overlong_len={args.overlong_len} is a penalty of the default grader's reward; with "
                             "reward_funcs add a length reward instead (e.g. trl.rewards.get_soft_overlong_punishment)")
        if not reward_funcs and grader is None:
            from prpo.grading import is_correct_many

            grader = functools.partial(is_correct_many, timeout=args.grading_timeout)
        self.uses_prm = args.uses_prm()
        prm = args.prm if prm is None else prm
        if self.uses_prm and prm is None:
            raise ValueError(f"method {args.method!r} scores segments with a PRM: pass prm= (a load_prm spec, a "
                             "ProcessRewardModel or a function (problems, segments) -> scores) or set PRPOConfig.prm")
        if self.uses_prm:
            from prpo.prm import as_prm

            prm = as_prm(prm)
        self.prm = prm if self.uses_prm else None
        self.advantage_kwargs = args.advantage_kwargs()
        self.outcome_reward = OutcomeReward(None if reward_funcs else grader, args, outcome_reward_range(reward_funcs, args))
        self.run_files = RunFiles(args.output_dir, collapse_window=args.collapse_window, collapse_drop=args.collapse_drop)
        super().__init__(
            model=model,
            reward_funcs=reward_funcs or [self.outcome_reward],
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            reward_processing_classes=reward_processing_classes,
            callbacks=[self.run_files, *(callbacks or [])],
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
        )
        self._keep_fp32_master_weights()
        needs_answer = self.outcome_reward.grade_many is not None
        check_dataset(train_dataset, self._tokenizer, args.max_prompt_length, needs_answer=needs_answer)
        if eval_dataset is not None:
            check_dataset(eval_dataset, self._tokenizer, args.max_prompt_length, needs_answer=needs_answer)
        needs_entropy = self.uses_prm and get_segmenter(args.segmenter).needs_entropy
        self._entropy_from_generation = needs_entropy and not (self.use_vllm or args.use_transformers_continuous_batching)
        # TRL's old-policy pass attends with its completion mask, which hides truncated completions under
        # mask_truncated_completions; the extra pass attends to every sampled token instead.
        self._entropy_from_old_pass = (needs_entropy and not self._entropy_from_generation and self._old_pass_runs()
                                       and not args.mask_truncated_completions)
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

    def _keep_fp32_master_weights(self) -> None:
        """Upcast trainable bf16/fp16 parameters to float32 where the optimiser would update them directly.

        AdamW's step is about ``lr`` per weight; at the paper's 1e-6 that is far below bf16's spacing
        (``|w| * 2^-8``), so half-precision weights would barely move. The forward still runs in bf16
        under autocast when ``bf16`` is on. DeepSpeed keeps its own float32 master copy: left alone.
        """
        if self.is_deepspeed_enabled:
            return
        half = [p for p in self.model.parameters() if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)]
        if not half:
            return
        dtype = half[0].dtype
        for param in half:
            param.data = param.data.float()
        compute = "bf16 autocast" if self.args.bf16 else "float32 (set bf16: true for bf16 compute)"
        logger.warning(
            f"{len(half)} trainable parameter tensors were {dtype}: upcast to float32 master weights, since "
            f"AdamW at learning_rate={self.args.learning_rate} would update them below half-precision resolution; "
            f"compute: {compute}"
        )

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

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list) -> Tensor:
        """TRL's ``r[B_global, K]`` (every process's rows, in process order); this process's R from its slice."""
        with self._timed("grade"):
            rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        rank = self.accelerator.process_index
        local = rewards_per_func[rank * len(prompts):(rank + 1) * len(prompts)]
        self.outcome_reward.combine(completions, local, self.reward_weights.to(local.device))
        return rewards_per_func

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
        output["advantages"] = self.token_advantages(inputs, output, self._rollout_lengths, mode)
        self._log_mean_advantages(output["advantages"])
        elapsed = time.perf_counter() - start
        self._times["logprobs_other"] = elapsed - sum(self._times.values())
        for name, seconds in self._times.items():
            self._metrics[mode][f"time/{name}"].append(seconds)
        self._rollout_seconds = elapsed
        return output

    def _log_mean_advantages(self, advantages: Tensor) -> None:
        """Put each response's mean token advantage where TRL logged its own (GRPO) one for `log_completions`."""
        lengths = torch.tensor(self._rollout_lengths, device=advantages.device).clamp(min=1)
        means = self.accelerator.gather(advantages.sum(dim=1) / lengths).tolist()
        logged = self._logs["advantages"]
        for _ in means:
            logged.pop()
        logged.extend(means)

    # ------------------------------------------------------------------ PRPO stages

    @contextlib.contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self._times[name] += time.perf_counter() - start

    def _sampling_entropy(self, output: dict[str, Any], mask: Tensor) -> Tensor:
        """Per-token entropy [B, T] of the sampling policy at the rollout temperature.

        ``mask`` marks every sampled token; the extra pass attends with it rather than TRL's
        ``completion_mask``, which is all 0 on a truncated row under ``mask_truncated_completions``.
        """
        width = output["completion_ids"].shape[1]
        if self._recorder is not None:
            return self._recorder.entropies(width).to(output["completion_ids"].device)
        if self._captured_entropy is not None:
            return self._captured_entropy.float()
        with self._timed("entropy"):
            input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
            attention_mask = torch.cat([output["prompt_mask"], mask.to(output["prompt_mask"].dtype)], dim=1)
            with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
                _, entropies, _ = self._get_per_token_logps_and_entropies(
                    self.model, input_ids, attention_mask, width,
                    batch_size=self.args.per_device_train_batch_size, compute_entropy=True,
                )
        return entropies.float()

    def _segment(self, output: dict[str, Any], mask: Tensor) -> Tensor:
        """Segment ids [B, T] from the registered segmenter, given the inputs its entry says it reads."""
        segmenter = get_segmenter(self.args.segmenter)
        entropy = token_texts = None
        if segmenter.needs_entropy:
            entropy = self._sampling_entropy(output, mask)
            self._entropy_sums = torch.stack([(entropy * mask).sum(), mask.sum().float()])
        with self._timed("segment"):
            if segmenter.needs_text:
                lengths = mask.sum(dim=1).tolist()
                token_texts = [self._tokenizer.batch_decode([[t] for t in row[:n]], skip_special_tokens=True)
                               for row, n in zip(output["completion_ids"].tolist(), lengths)]
            return segmenter.fn(SegmentInputs(mask, entropy, token_texts), **self.args.segmenter_kwargs())

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

                problems = [row_problem(row) for row in inputs]
                scores = validate_scores(self.prm.score(problems, segment_texts), segment_texts)
            token_scores = scores_to_tokens(scores, segment_ids).to(device)

        with self._timed("advantages"):
            local_ids = [row_prompt_id(row) for row in inputs]
            all_ids = gather_object(local_ids)
            dense = {pid: i for i, pid in enumerate(dict.fromkeys(all_ids))}
            group_ids = torch.tensor([dense[pid] for pid in all_ids], device=device)
            rewards = self.accelerator.gather(torch.tensor(self.outcome_reward.rewards, device=device))
            # Every reward function returned None (TRL gives advantage 0): each such row alone and masked, so A = 0.
            unscorable = rewards.isnan()
            group_ids = torch.where(unscorable, len(dense) + torch.arange(len(all_ids), device=device), group_ids)
            rewards = rewards.nan_to_num(0.0)
            all_mask = self._gather_rows(mask.long(), 0).bool()
            all_scores = None if token_scores is None else self._gather_rows(token_scores, 0.0)
            all_segments = None if segment_ids is None else self._gather_rows(segment_ids.to(device), -1)
            kept = self._filter(mode, rewards, group_ids, all_mask, all_scores, all_segments)
            advantages = advantages_on_kept(
                self.args.method, kept, outcome_rewards=rewards, group_ids=group_ids,
                mask=all_mask & ~unscorable[:, None], token_scores=all_scores, segment_ids=all_segments,
                **self.advantage_kwargs,
            )
            rows = slice(self.accelerator.process_index * batch, (self.accelerator.process_index + 1) * batch)
            local = advantages[rows, :width].contiguous()
            if not kept.all():
                self._drop_from_loss(output, kept[rows])

        self._log_step(mode, rewards, group_ids, all_mask, advantages, all_scores, all_segments)
        if mode == "train" and self.args.samples_per_step != 0:
            self._write_samples(inputs, spans, segment_texts, scores, local, mask, kept[rows].tolist())
        return local

    def _filter(self, mode: str, rewards: Tensor, group_ids: Tensor, mask: Tensor, token_scores: Tensor | None,
                segment_ids: Tensor | None) -> Tensor:
        """``keep[B]`` of the configured rollout filter (`prpo.filters`; all True without one); logs its metrics.

        The outcome ``o_i`` is the grader's verdict, or, with reward functions only, ``R_i`` above the
        midpoint of ``wrong_reward`` and ``correct_reward``.
        """
        spec = self.args.filter_spec()
        if spec is None:
            return torch.ones_like(group_ids, dtype=torch.bool)
        if self.outcome_reward.grade_many is not None:
            correct = self.accelerator.gather(torch.tensor(self.outcome_reward.correct, device=rewards.device))
        else:
            correct = rewards > (self.args.correct_reward + self.args.wrong_reward) / 2
        name, options = spec
        result = apply_filter(name, correct=correct, group_ids=group_ids, mask=mask, token_scores=token_scores,
                              segment_ids=segment_ids, **options)
        for key, value in result.metrics(correct).items():
            self._metrics[mode][key].append(value)
        return result.keep

    def _drop_from_loss(self, output: dict[str, Any], kept: Tensor) -> None:
        """Take this process's dropped rows out of TRL's loss: no loss term, no gradient, no token in the denominator.

        Why ``tool_mask``: TRL 1.16's `_compute_loss` multiplies the per-token loss by
        ``completion_mask * tool_mask`` (its loss mask) and uses ``completion_mask`` alone as the attention
        mask, so a zero row here removes the rollout from the loss without changing any forward pass (a
        zeroed ``completion_mask`` would give the policy another attention pattern than the reference saw).
        The token-mean losses ('dapo', 'cispo') divide by ``num_items_in_batch``, the global count of loss
        tokens that TRL took before the filter, so it is recounted; 'bnpo' counts the masked tokens itself.
        """
        completion_mask = output["completion_mask"]
        loss_mask = output.get("tool_mask", torch.ones_like(completion_mask)) * kept[:, None].to(completion_mask.dtype)
        output["tool_mask"] = loss_mask
        output["num_items_in_batch"] = self.accelerator.gather((completion_mask * loss_mask).sum()).sum()

    # ------------------------------------------------------------------ metrics and samples

    def _log_step(self, mode, rewards, group_ids, mask, advantages, token_scores, segment_ids) -> None:
        from prpo.grading import extract_final_answer

        metrics = self._metrics[mode]
        device = rewards.device
        outcome = rewards  # with the default grader: its verdicts (R also carries the overlong penalty)
        if self.outcome_reward.grade_many is not None:
            outcome = correct = self.accelerator.gather(torch.tensor(self.outcome_reward.correct, device=device)).float()
            metrics["accuracy"].append(correct.mean().item())
        has_answer = torch.tensor([extract_final_answer(t) is not None for t in self.outcome_reward.texts], device=device)
        metrics["final_answer_rate"].append(self.accelerator.gather(has_answer).float().mean().item())
        _, dense = torch.unique(group_ids, return_inverse=True)
        n_groups = int(dense.max()) + 1
        low = outcome.new_full((n_groups,), math.inf).scatter_reduce_(0, dense, outcome, "amin")
        high = outcome.new_full((n_groups,), -math.inf).scatter_reduce_(0, dense, outcome, "amax")
        metrics["frac_groups_same_outcome"].append((low == high).float().mean().item())
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
        # PRPO's blind spot: in all-same-outcome groups beta = 0 and its advantage is process-only there.
        metrics["beta_zero_token_share"].append(((mask & (beta == 0)).sum() / mask.sum().clamp(min=1)).item())
        agree = signed & (torch.sign(z) == torch.sign(beta))
        metrics["sign_agreement"].append((agree.sum() / signed.sum().clamp(min=1)).item())
        if self._entropy_sums is not None:
            total, count = self.accelerator.reduce(self._entropy_sums, reduction="sum").tolist()
            metrics["sampling_entropy"].append(total / max(count, 1.0))

    def _write_samples(self, inputs, spans, segment_texts, scores, advantages, mask, kept) -> None:
        """Append up to `samples_per_step` rows (whole process batches first) to samples.jsonl.

        ``kept[i]``: whether the rollout filter kept row i (always True without a filter).
        """
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
                "step": self.state.global_step + 1, "prompt_id": row_prompt_id(inputs[i]), "prompt": inputs[i]["prompt"],
                "problem": row_problem(inputs[i]), "answer": inputs[i].get("answer"), "response": reward.texts[i],
                "length": lengths[i], "correct": reward.correct[i] if reward.grade_many is not None else None,
                "reward": None if math.isnan(reward.rewards[i]) else reward.rewards[i], "kept": kept[i], "segments": segments,
            })
        rows = gather_object(rows)
        if self.accelerator.is_main_process:
            self.run_files.write_samples(rows if limit < 0 else rows[:limit])
