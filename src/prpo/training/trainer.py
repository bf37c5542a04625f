"""`PRPOTrainer`: TRL's `GRPOTrainer` with token-level advantages from entropy segments and a PRM.

One step (docs/algorithm.md): generate G responses per prompt (TRL), grade each against its own gold
answer (`prpo.training.rewards.OutcomeReward`, a TRL reward function), take the sampling policy's per-token entropy,
segment, score the segments with the PRM, compute ``A[B, T]`` with the configured method of
`prpo.advantages`, and hand it to TRL's loss, which takes (B, T) advantages as they are. Rollouts,
loss, KL and optimiser are TRL's for every method, so methods differ only in their advantages.

Where the entropy comes from (no extra forward pass where the engine allows it):
- transformers `generate`: a forward hook on the policy keeps ``H(softmax(logits / T))`` of every
  decoding step; cost: one chunked logsumexp over the vocabulary per step.
- vLLM with importance-sampling correction, or off-policy steps (``num_iterations > 1``): TRL
  already runs the old-policy log-prob pass; it is asked for entropies too (the fused LM head
  computes them at the rollout temperature in the same tiles).
- otherwise (vLLM without correction, continuous batching; or ``mask_truncated_completions``, whose
  old-policy pass cannot see truncated completions): one extra no-grad forward pass over prompt +
  response, about a third of the cost of the training forward + backward.

The source is chosen once, in ``__init__``; what one rollout's stages hand each other (lengths,
entropies, timings) travels in a `Rollout` made when TRL starts that rollout.

Groups are whole across processes: R, masks, token scores and segment ids are gathered, the
advantages are computed on the global batch with groups taken from each sample's prompt id,
and each process keeps its own rows.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from accelerate.utils import gather_object
from torch import Tensor
from trl import GRPOTrainer

from prpo.advantages import AdvantageInputs, AdvantageResult
from prpo.training.config import PRPOConfig
from prpo.training import trl_surface
from prpo.kl import clamped_reference
from prpo.training.metrics import RunFiles
from prpo.training.rewards import OutcomeReward, Outcomes, checked_reward_function, outcome_reward_range
from prpo.training.shared_prefix import (
    CHECK_TOLERANCE,
    HALF_CHECK_TOLERANCE,
    SharedPrefix,
    active_dropout,
    prompt_groups,
    shape_class,
    shared_logps,
    shuffle_groups,
    static_reasons,
    token_ratio,
)
from prpo.segmentation import (
    SegmentInputs,
    get_segmenter,
    num_segments,
    scores_to_tokens,
    segment_spans,
    token_entropy,
)
from prpo.tasks.rows import check_dataset, row_problem, row_prompt_id

logger = logging.getLogger(__name__)


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


@dataclass
class Rollout:
    """What the stages of one rollout hand each other: made when TRL starts the rollout, read until its
    advantages are computed (and its wall time by `training_step`)."""

    capture_old_pass: bool = False  # TRL's next old-policy pass over the policy also returns entropies
    lengths: list[int] = field(default_factory=list)  # valid response tokens of each row (EOS included)
    recorder: GenerationEntropy | None = None  # entropies kept while sampling
    old_pass_entropy: Tensor | None = None
    entropy_sums: Tensor | None = None  # [sum of H over valid tokens, their count], for the log
    outcomes: Outcomes | None = None  # this process's texts, rewards R and verdicts, set when TRL grades
    times: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    seconds: float = 0.0  # wall time of the whole rollout

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.times[name] += time.perf_counter() - start


@dataclass(frozen=True)
class Scored:
    """Stage 1's output, this process's rows: segment ids [B, T], their token spans and texts, the PRM's
    scores per segment and per token [B, T]; all None for a method that reads no PRM."""

    segment_ids: Tensor | None = None
    spans: list[list[tuple[int, int]]] | None = None
    texts: list[list[str]] | None = None
    scores: list[list[float]] | None = None
    token_scores: Tensor | None = None


@dataclass(frozen=True)
class GlobalBatch:
    """Stage 2's output: every process's rows as the advantage methods take them, the full response mask
    (the scorable one is in ``inputs``), the grader's verdicts, and this process's slice of the rows."""

    inputs: AdvantageInputs
    mask: Tensor
    correct: Tensor | None
    rows: slice

    def filter_inputs(self) -> AdvantageInputs:
        """``inputs`` with every sampled token valid, also of unscorable rows: what a rollout filter ranks."""
        return replace(self.inputs, mask=self.mask)

    def filter_outcomes(self, args: PRPOConfig) -> Tensor:
        """The outcome a rollout filter reads: the grader's verdict, or, with reward functions only, R above
        the midpoint of ``wrong_reward`` and ``correct_reward``."""
        if self.correct is not None:
            return self.correct
        return self.inputs.outcome_rewards > (args.correct_reward + args.wrong_reward) / 2


def _as_list(value: Any) -> list:
    """None -> [], a list as it is, anything else -> [value] (TRL takes one reward function or a list)."""
    return [] if value is None else list(value) if isinstance(value, list) else [value]


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
    _kl_clamp_inputs: dict[str, Any] | None = None  # the loss batch whose reference `kl_clamp` replaces
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
        trl_surface.check()
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
        self.estimator = args.estimator()  # method, options and rollout filter, resolved once
        reward_range = outcome_reward_range(reward_funcs, args)
        self.outcome_reward = OutcomeReward(None if reward_funcs else grader, args, reward_range)
        self.run_files = RunFiles(args.output_dir, collapse_window=args.collapse_window, collapse_drop=args.collapse_drop)
        super().__init__(
            model=model,
            reward_funcs=[checked_reward_function(f) for f in _as_list(reward_funcs)] or [self.outcome_reward],
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
        check_dataset(train_dataset, trl_surface.tokenizer(self), args.max_prompt_length, needs_answer=needs_answer)
        if eval_dataset is not None:
            check_dataset(eval_dataset, trl_surface.tokenizer(self), args.max_prompt_length, needs_answer=needs_answer)
        self._entropy_source = self._choose_entropy_source()
        self.shared_prefix = self._choose_shared_prefix()
        self._rollout = Rollout()  # the rollout in progress (or the last one)
        self._update_seconds = 0.0  # optimiser-update time of the accumulation in progress

    # ------------------------------------------------------------------ engine hooks (minimal overrides)

    def _choose_entropy_source(self) -> str | None:
        """Where the sampling entropy comes from (None: the segmenter reads none), chosen once.

        ``generation``: a hook on transformers' `generate`; ``old_pass``: TRL's old-policy log-prob
        pass, when it runs (same condition as `_generate_and_score_completions`) and attends to every
        sampled token (``mask_truncated_completions`` hides truncated ones from it); ``extra_pass``: one
        more no-grad forward pass.
        """
        if not self.uses_prm or not get_segmenter(self.args.segmenter).needs_entropy:
            return None
        if not (self.use_vllm or self.args.use_transformers_continuous_batching):
            return "generation"
        generate_every = self.args.steps_per_generation * self.num_iterations
        old_pass_runs = self.args.gradient_accumulation_steps % generate_every != 0 or (
            self.use_vllm and self.vllm_importance_sampling_correction
        )
        return "old_pass" if old_pass_runs and not self.args.mask_truncated_completions else "extra_pass"

    def _choose_shared_prefix(self) -> SharedPrefix:
        """Whether the log-prob passes may forward each group's prompt once (`prpo.training.shared_prefix`)."""
        policy = self._policy_module()
        reasons = static_reasons(
            policy.base_model,
            checkpointing=bool(self.args.gradient_checkpointing or getattr(policy, "is_gradient_checkpointing", False)),
            reentrant=bool((self.args.gradient_checkpointing_kwargs or {}).get("use_reentrant")),
            distributed=self.accelerator.distributed_type.value,
        )
        dropout = active_dropout(self.model, policy.base_model)
        if dropout and self.args.shared_prefix == "auto":
            reasons.append(f"dropout while training ({', '.join(dropout)}): a shared prompt would share one dropout "
                           "mask across its group's rows; shared_prefix: true allows it")
        elif dropout and self.args.shared_prefix == "true":
            logger.warning(f"shared_prefix: true with dropout while training ({', '.join(dropout)}): each prompt's "
                           "dropout mask is shared by its group's rows, so the loss is not the unshared one's")
        half = self.args.bf16 or self.args.fp16
        return SharedPrefix(self.args.shared_prefix, reasons, HALF_CHECK_TOLERANCE if half else CHECK_TOLERANCE)

    def _policy_module(self, model: torch.nn.Module | None = None) -> torch.nn.Module:
        model = self.accelerator.unwrap_model(self.model if model is None else model)
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def _prepare_inputs(self, generation_batch):
        with trl_surface.rows_shuffled_by(shuffle_groups):
            return super()._prepare_inputs(generation_batch)

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
        rollout = self._rollout
        handle = None
        if self._entropy_source == "generation":
            rollout.recorder = GenerationEntropy(self.temperature)
            handle = self._policy_module().register_forward_hook(rollout.recorder)
        try:
            result = super()._generate(prompts)
        finally:
            if handle is not None:
                handle.remove()
        rollout.lengths = [len(ids) for ids in result[1]]
        entropy_seconds = rollout.recorder.seconds if rollout.recorder is not None else 0.0
        rollout.times["entropy"] += entropy_seconds
        rollout.times["generate"] += time.perf_counter() - start - entropy_seconds
        return result

    def _compute_loss(self, model, inputs):
        """TRL's loss; with ``kl_clamp``, on a copy of ``inputs`` whose reference log-probs the loss forward
        replaces by `prpo.kl.clamped_reference` (a copy: TRL reuses the batch over ``num_iterations``)."""
        if self.args.kl_clamp is None or self.beta == 0.0:
            return super()._compute_loss(model, inputs)
        self._kl_clamp_inputs = inputs = dict(inputs)
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._kl_clamp_inputs = None

    def _get_per_token_logps_and_entropies(self, model, *args, compute_entropy=False, **kwargs):
        if self._kl_clamp_inputs is not None:  # the loss forward of `_compute_loss`: TRL reads the reference next
            inputs, self._kl_clamp_inputs = self._kl_clamp_inputs, None
            result = self._logps(model, *args, compute_entropy=compute_entropy, **kwargs)
            inputs["ref_per_token_logps"] = clamped_reference(inputs["ref_per_token_logps"], result[0], self.args.kl_clamp)
            return result
        rollout = self._rollout
        if not (rollout.capture_old_pass and model is self.model):
            return self._logps(model, *args, compute_entropy=compute_entropy, **kwargs)
        rollout.capture_old_pass = False
        with rollout.timed("old_logps"):
            logps, entropies, aux = self._logps(model, *args, compute_entropy=True, **kwargs)
        rollout.old_pass_entropy = entropies
        return logps, entropies if compute_entropy else None, aux

    def _logps(self, model, input_ids: Tensor, attention_mask: Tensor, logits_to_keep: int, batch_size: int | None = None,
               compute_entropy: bool = False, **extra) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """TRL's log-prob pass, chunk by chunk on the shared-prefix path where `self.shared_prefix` takes it."""
        if not self.shared_prefix.possible or any(value is not None and value is not False for value in extra.values()):
            self._log_token_ratio(model, 1.0)
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size, compute_entropy=compute_entropy,
                **extra,
            )
        size = batch_size or input_ids.size(0)
        chunks = [self._chunk_logps(model, input_ids[start:start + size], attention_mask[start:start + size],
                                    logits_to_keep, compute_entropy) for start in range(0, input_ids.size(0), size)]
        logps = torch.cat([chunk[0] for chunk in chunks])
        return logps, torch.cat([chunk[1] for chunk in chunks]) if compute_entropy else None, None

    def _chunk_logps(self, model, input_ids: Tensor, attention_mask: Tensor, logits_to_keep: int,
                     compute_entropy: bool) -> tuple[Tensor, Tensor | None]:
        """One chunk's log-probs (and entropies): shared where chosen, checked against unshared on a new shape."""
        def unshared() -> tuple[Tensor, Tensor | None]:
            return super(PRPOTrainer, self)._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, compute_entropy=compute_entropy)[:2]

        rows, prompt_len = input_ids.size(0), input_ids.size(1) - logits_to_keep
        groups = prompt_groups(input_ids[:, :prompt_len], attention_mask[:, :prompt_len])
        shared = self.shared_prefix.choose(groups, rows, prompt_len, logits_to_keep)
        reference = None  # the unshared result of a no-grad self-check, reused if the check fails
        if shared:
            shape = shape_class(rows, groups.count, prompt_len, logits_to_keep)
            result = shared_logps(model, self._policy_module(model).base_model, input_ids, attention_mask,
                                  logits_to_keep, groups, self.accelerator.autocast)
            if self.shared_prefix.needs_check(shape):
                with torch.no_grad():
                    reference = unshared()
                shared = self.shared_prefix.record_check(shape, result[0].detach(), reference[0],
                                                         attention_mask[:, prompt_len:].bool())
        if not shared:
            result = reference if reference is not None and not torch.is_grad_enabled() else unshared()
        self._log_token_ratio(model, token_ratio(rows, groups.count, prompt_len, logits_to_keep) if shared else 1.0)
        return result

    def _log_token_ratio(self, model, ratio: float) -> None:
        """In the loss forward: the tokens the unshared pass would forward over those forwarded (1: unshared)."""
        if torch.is_grad_enabled() and model.training:
            trl_surface.metrics(self, "train")["shared_prefix/token_ratio"].append(ratio)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list) -> Tensor:
        """TRL's ``r[B_global, K]`` (every process's rows, in process order); this process's R from its slice."""
        with self._rollout.timed("grade"):
            rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        rank = self.accelerator.process_index
        local = rewards_per_func[rank * len(prompts):(rank + 1) * len(prompts)]
        self._rollout.outcomes = self.outcome_reward.combine(completions, local, self.reward_weights.to(local.device))
        return rewards_per_func

    def training_step(self, model, inputs, num_items_in_batch):
        start, before = time.perf_counter(), self._rollout
        loss = super().training_step(model, inputs, num_items_in_batch)
        rollout_seconds = self._rollout.seconds if self._rollout is not before else 0.0  # a step that generated
        self._update_seconds += time.perf_counter() - start - rollout_seconds
        if trl_surface.micro_step(self) % self.current_gradient_accumulation_steps == 0:
            trl_surface.metrics(self, "train")["time/update"].append(self._update_seconds)
            self._update_seconds = 0.0
        return loss

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        start = time.perf_counter()
        mode = "train" if self.model.training else "eval"
        rollout = self._rollout = Rollout(capture_old_pass=self._entropy_source == "old_pass")
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            rollout.capture_old_pass = False
        output["advantages"] = self.rollout_advantages(inputs, output, rollout, mode)
        self._log_mean_advantages(output["advantages"], rollout.lengths)
        elapsed = time.perf_counter() - start
        rollout.times["logprobs_other"] = elapsed - sum(rollout.times.values())
        for name, seconds in rollout.times.items():
            trl_surface.metrics(self, mode)[f"time/{name}"].append(seconds)
        rollout.seconds = elapsed
        return output

    def _log_mean_advantages(self, advantages: Tensor, lengths: list[int]) -> None:
        """Put each response's mean token advantage where TRL logged its own (GRPO) one for `log_completions`."""
        lengths = torch.tensor(lengths, device=advantages.device).clamp(min=1)
        means = self.accelerator.gather(advantages.sum(dim=1) / lengths).tolist()
        logged = trl_surface.logged_advantages(self)
        for _ in means:
            logged.pop()
        logged.extend(means)

    # ------------------------------------------------------------------ PRPO stages

    def _sampling_entropy(self, output: dict[str, Any], mask: Tensor, rollout: Rollout) -> Tensor:
        """Per-token entropy [B, T] of the sampling policy at the rollout temperature, from the chosen source.

        ``mask`` marks every sampled token; the extra pass attends with it rather than TRL's
        ``completion_mask``, which is all 0 on a truncated row under ``mask_truncated_completions``.
        """
        width = output["completion_ids"].shape[1]
        if self._entropy_source == "generation":
            return rollout.recorder.entropies(width).to(output["completion_ids"].device)
        if self._entropy_source == "old_pass":
            return rollout.old_pass_entropy.float()
        with rollout.timed("entropy"):
            input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
            attention_mask = torch.cat([output["prompt_mask"], mask.to(output["prompt_mask"].dtype)], dim=1)
            with torch.no_grad(), trl_surface.disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
                _, entropies, _ = self._get_per_token_logps_and_entropies(
                    self.model, input_ids, attention_mask, width,
                    batch_size=self.args.per_device_train_batch_size, compute_entropy=True,
                )
        return entropies.float()

    def _segment(self, output: dict[str, Any], mask: Tensor, rollout: Rollout) -> Tensor:
        """Segment ids [B, T] from the registered segmenter, given the inputs its entry says it reads."""
        segmenter = get_segmenter(self.args.segmenter)
        entropy = token_texts = None
        if segmenter.needs_entropy:
            entropy = self._sampling_entropy(output, mask, rollout)
            rollout.entropy_sums = torch.stack([(entropy * mask).sum(), mask.sum().float()])
        with rollout.timed("segment"):
            if segmenter.needs_text:
                lengths = mask.sum(dim=1).tolist()
                token_texts = [trl_surface.tokenizer(self).batch_decode([[t] for t in row[:n]], skip_special_tokens=True)
                               for row, n in zip(output["completion_ids"].tolist(), lengths)]
            return segmenter.fn(SegmentInputs(mask, entropy, token_texts), **self.args.segmenter_kwargs())

    def _segment_texts(self, completion_ids: Tensor, spans: list[list[tuple[int, int]]]) -> list[list[str]]:
        """Decoded token spans of each segment; their concatenation is the decoded response."""
        rows = completion_ids.tolist()
        tokenizer = trl_surface.tokenizer(self)
        return [[tokenizer.decode(row[s:e], skip_special_tokens=True) for s, e in row_spans]
                for row, row_spans in zip(rows, spans)]

    def _gather_rows(self, tensor: Tensor, pad: float | int) -> Tensor:
        """[B_local, T_local] on every process -> [B_global, T_max], padded on the right with ``pad``."""
        return self.accelerator.gather(self.accelerator.pad_across_processes(tensor, dim=1, pad_index=pad))

    def rollout_advantages(self, inputs: list[dict[str, Any]], output: dict[str, Any], rollout: Rollout, mode: str) -> Tensor:
        """This process's rows of ``A[B, T]`` for a graded rollout: score -> gather -> advantages -> apply.

        ``inputs`` are the dataset rows (prompt id, problem, gold answer), ``output`` TRL's rollout
        tensors, ``rollout`` what the earlier stages of this rollout recorded (lengths, entropy, outcomes).
        """
        width = output["completion_ids"].shape[1]
        lengths = torch.tensor(rollout.lengths, device=output["completion_ids"].device)
        mask = torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]
        scored = self._score(inputs, output, mask, rollout)
        with rollout.timed("advantages"):
            batch = self._gather(inputs, mask, scored, rollout.outcomes)
            result, kept, filter_metrics = self.estimator(batch.inputs, batch.filter_outcomes(self.args),
                                                          batch.filter_inputs())
            local = self._apply(output, result, kept, batch.rows, width)
        self._log_step(mode, batch, result, filter_metrics, rollout)
        if mode == "train" and self.args.samples_per_step != 0:
            self._write_samples(inputs, scored, rollout.outcomes, local, mask, kept[batch.rows].tolist())
        return local

    def _score(self, inputs: list[dict[str, Any]], output: dict[str, Any], mask: Tensor, rollout: Rollout) -> Scored:
        """Stage 1, this process's rows: segments and their PRM scores (nothing for a method without a PRM)."""
        if not self.uses_prm:
            return Scored()
        segment_ids = self._segment(output, mask, rollout)
        spans = segment_spans(segment_ids)
        texts = self._segment_texts(output["completion_ids"], spans)
        with rollout.timed("prm"):
            from prpo.prm import validate_scores

            scores = validate_scores(self.prm.score([row_problem(row) for row in inputs], texts), texts)
        token_scores = scores_to_tokens(scores, segment_ids).to(mask.device)
        return Scored(segment_ids, spans, texts, scores, token_scores)

    def _gather(self, inputs: list[dict[str, Any]], mask: Tensor, scored: Scored, outcomes: Outcomes) -> GlobalBatch:
        """Stage 2: every process's rows, groups from the prompt ids (never positions).

        A row every reward function returned None for (R = NaN, TRL gives it advantage 0) becomes a group
        of its own with no valid token, so its A is 0 and the others' group statistics leave it out.
        """
        device = mask.device
        all_ids = gather_object([row_prompt_id(row) for row in inputs])
        dense = {pid: i for i, pid in enumerate(dict.fromkeys(all_ids))}
        group_ids = torch.tensor([dense[pid] for pid in all_ids], device=device)
        rewards = self.accelerator.gather(outcomes.rewards.to(device))
        unscorable = rewards.isnan()
        group_ids = torch.where(unscorable, len(dense) + torch.arange(len(all_ids), device=device), group_ids)
        all_mask = self._gather_rows(mask.long(), 0).bool()
        token_scores = None if scored.token_scores is None else self._gather_rows(scored.token_scores, 0.0)
        segment_ids = None if scored.segment_ids is None else self._gather_rows(scored.segment_ids.to(device), -1)
        correct = None if outcomes.correct is None else self.accelerator.gather(outcomes.correct.to(device))
        batch = mask.shape[0]
        rows = slice(self.accelerator.process_index * batch, (self.accelerator.process_index + 1) * batch)
        scorable = AdvantageInputs(rewards.nan_to_num(0.0), group_ids, all_mask & ~unscorable[:, None], token_scores,
                                   segment_ids)
        return GlobalBatch(scorable, all_mask, correct, rows)

    def _apply(self, output: dict[str, Any], result: AdvantageResult, kept: Tensor, rows: slice, width: int) -> Tensor:
        """Stage 4: this process's rows of ``A``; rollouts the filter dropped leave TRL's loss."""
        if not kept.all():
            trl_surface.drop_from_loss(output, kept[rows], self.accelerator.gather)
        return result.advantages[rows, :width].contiguous()

    # ------------------------------------------------------------------ metrics and samples

    def _log_step(self, mode: str, batch: GlobalBatch, result: AdvantageResult, filter_metrics: dict[str, float],
                  rollout: Rollout) -> None:
        """The step's metrics: outcomes, the filter's and the method's diagnostics, advantages, segments, PRM
        scores, entropy."""
        from prpo.grading import extract_final_answer

        metrics = trl_surface.metrics(self, mode)
        inputs, mask = batch.inputs, batch.mask
        outcome = inputs.outcome_rewards  # with the default grader: its verdicts (R also carries the overlong penalty)
        if batch.correct is not None:
            outcome = batch.correct.float()
            metrics["accuracy"].append(outcome.mean().item())
        has_answer = torch.tensor([extract_final_answer(t) is not None for t in rollout.outcomes.texts], device=mask.device)
        metrics["final_answer_rate"].append(self.accelerator.gather(has_answer).float().mean().item())
        _, dense = torch.unique(inputs.group_ids, return_inverse=True)
        n_groups = int(dense.max()) + 1
        low = outcome.new_full((n_groups,), math.inf).scatter_reduce_(0, dense, outcome, "amin")
        high = outcome.new_full((n_groups,), -math.inf).scatter_reduce_(0, dense, outcome, "amax")
        metrics["frac_groups_same_outcome"].append((low == high).float().mean().item())
        valid = result.advantages[mask]
        metrics["advantages/mean"].append(valid.mean().item())
        metrics["advantages/std"].append(valid.std(unbiased=False).item())
        for key, value in {**filter_metrics, **result.metrics}.items():
            metrics[key].append(value)
        if inputs.token_scores is None:
            return
        segment_ids, token_scores = inputs.segment_ids, inputs.token_scores
        counts = num_segments(segment_ids)
        metrics["segments/per_response"].append(counts.float().mean().item())
        metrics["segments/mean_length"].append((mask.sum() / counts.sum().clamp(min=1)).item())
        starts = mask.clone()
        starts[:, 1:] &= segment_ids[:, 1:] != segment_ids[:, :-1]
        metrics["prm/score_mean"].append(token_scores[starts].mean().item())
        metrics["prm/first_segment_mean"].append(token_scores[:, 0][mask[:, 0]].mean().item())
        if rollout.entropy_sums is not None:
            total, count = self.accelerator.reduce(rollout.entropy_sums, reduction="sum").tolist()
            metrics["sampling_entropy"].append(total / max(count, 1.0))

    def _write_samples(self, inputs: list[dict[str, Any]], scored: Scored, outcomes: Outcomes, advantages: Tensor,
                       mask: Tensor, kept: list[bool]) -> None:
        """Append up to `samples_per_step` rows (whole process batches first) to samples.jsonl.

        ``kept[i]``: whether the rollout filter kept row i (always True without a filter).
        """
        limit = self.args.samples_per_step
        per_process = len(inputs) if limit < 0 else min(len(inputs), -(-limit // self.accelerator.num_processes))
        lengths = mask.sum(dim=1).tolist()
        spans = scored.spans if scored.spans is not None else [[(0, n)] for n in lengths]
        rewards = outcomes.rewards.tolist()
        rows = []
        for i in range(per_process):
            texts = scored.texts[i] if scored.texts is not None else [outcomes.texts[i]]
            seg_scores = scored.scores[i] if scored.scores is not None else [None] * len(texts)
            segments = [
                {"text": text, "tokens": end - start, "prm_score": score,
                 "advantage_mean": advantages[i, start:end].mean().item() if end > start else 0.0}
                for text, score, (start, end) in zip(texts, seg_scores, spans[i], strict=True)
            ]
            rows.append({
                "step": self.state.global_step + 1, "prompt_id": row_prompt_id(inputs[i]), "prompt": inputs[i]["prompt"],
                "problem": row_problem(inputs[i]), "answer": inputs[i].get("answer"), "response": outcomes.texts[i],
                "length": lengths[i], "correct": None if outcomes.correct is None else bool(outcomes.correct[i]),
                "reward": None if math.isnan(rewards[i]) else rewards[i], "kept": kept[i], "segments": segments,
            })
        rows = gather_object(rows)
        if self.accelerator.is_main_process:
            self.run_files.write_samples(rows if limit < 0 else rows[:limit])
