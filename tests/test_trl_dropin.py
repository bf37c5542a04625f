"""PRPOTrainer as a drop-in for TRL's GRPOTrainer: the examples/ scripts, GRPO vs PRPO from one seed, data and reward plumbing."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from transformers import set_seed
from trl import GRPOTrainer

from prpo.training.config import ConfigError, PRPOConfig
from prpo.prm import FunctionPRM, PRMError, as_prm
from prpo.training.rewards import OutcomeReward, declared_reward_range, outcome_reward_range
from prpo.tasks.rows import check_dataset, prompt_key, row_problem, row_prompt_id
from prpo.training.trainer import PRPOTrainer

from conftest import REPO_ROOT, assert_close_scaled

SYSTEM = {"role": "system", "content": "Reason step by step, then give the answer in \\boxed{}."}
# Settings the test changes in both scripts: small and fast, and the same loss for GRPO and PRPO.
SMALL = dict(num_generations=4, per_device_train_batch_size=8, max_completion_length=16, max_steps=2, seed=0,
             save_strategy="no", report_to=[], use_cpu=True, learning_rate=1e-3, beta=0.001, delta=3.0,
             loss_type="dapo", use_bias_correction_kl=False, bf16=False)


def example(name: str):
    """Import examples/<name>.py as a module (the scripts are not part of the package)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def math_dataset() -> Dataset:
    """TRL's DeepMath layout: a conversational prompt and a `solution`; no prompt_id, problem or answer."""
    rows = [(3, 4), (12, 5), (7, 8), (20, 1)]
    return Dataset.from_list([
        {"prompt": [SYSTEM, {"role": "user", "content": f"What is {a} + {b}?"}], "solution": str(a + b)} for a, b in rows
    ])


class RecordingPRM:
    """A plain function PRM: scores from segment lengths in [0.1, 0.9]; keeps the problems it was shown."""

    def __init__(self):
        self.problems: list[str] = []

    def __call__(self, problems: list[str], segments: list[list[str]]) -> list[list[float]]:
        self.problems += problems
        return [[0.1 + 0.2 * (len(text) % 5) for text in row] for row in segments]


def test_the_prpo_example_trains_two_steps(tiny_causal_lm_dir, tmp_path, monkeypatch):
    """examples/prpo_math.py as written, on a tiny Qwen2 and a local DeepMath-style dataset."""
    monkeypatch.chdir(tmp_path)  # the script writes to ./prpo-math
    prm = RecordingPRM()
    trainer = example("prpo_math").build(str(tiny_causal_lm_dir), math_dataset(), prm=prm, **SMALL,
                                         min_gap=3, activation_checkpointing=False)
    initial = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()

    steps = [json.loads(line) for line in (tmp_path / "prpo-math" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in steps if "reward" in row] == [1, 2]
    questions = {f"What is {a} + {b}?" for a, b in [(3, 4), (12, 5), (7, 8), (20, 1)]}
    assert prm.problems and set(prm.problems) <= questions  # the last user message, not the system prompt
    samples = [json.loads(line) for line in (tmp_path / "prpo-math" / "samples.jsonl").read_text().splitlines()]
    for sample in samples:
        assert sample["prompt_id"] == prompt_key(sample["prompt"]) and sample["problem"] in questions
        assert sample["correct"] is None and sample["answer"] is None
        # accuracy_reward read the `solution` column: a random model is wrong, 0 -> reward_range [0, 1] -> -1.
        assert sample["reward"] == -1.0
    assert any(not torch.equal(a, b.detach()) for a, b in zip(initial, trainer.model.parameters()))


def test_grpo_and_prpo_differ_only_in_the_advantages(tiny_causal_lm_dir, tmp_path, monkeypatch):
    """Both examples from one seed: same rollouts and TRL's loss code; PRPO's A[B, T] replaces GRPO's A[B]."""
    monkeypatch.chdir(tmp_path)
    grpo = example("grpo_math").build(str(tiny_causal_lm_dir), math_dataset(), **SMALL, activation_checkpointing=False)
    prpo = example("prpo_math").build(str(tiny_causal_lm_dir), math_dataset(), prm=RecordingPRM(), **SMALL,
                                      min_gap=3, activation_checkpointing=False)
    # TRL's loss code: PRPOTrainer._compute_loss hands over to it unchanged without kl_clamp (checked below).
    assert PRPOTrainer.compute_loss is GRPOTrainer.compute_loss and prpo.args.kl_clamp is None
    outputs = []
    for trainer in (grpo, prpo):
        trainer.model.train()
        batch = next(iter(trainer.get_train_dataloader()))
        set_seed(0)
        outputs.append((batch, trainer._generate_and_score_completions(batch)))
    (batch, out_g), (batch_p, out_p) = outputs
    assert [row["prompt"] for row in batch] == [row["prompt"] for row in batch_p]
    assert out_g.keys() == out_p.keys()
    logps = {key for key in out_g if key.endswith("per_token_logps") and out_g[key] is not None}
    for key in out_g.keys() - {"advantages"} - logps:
        assert torch.equal(out_g[key], out_p[key]), key
    for key in logps:  # PRPOTrainer forwards each prompt once (shared_prefix: auto): equal to float rounding
        assert_close_scaled(out_p[key], out_g[key])
    assert out_g["advantages"].shape == (8,) and out_p["advantages"].shape == out_p["completion_ids"].shape
    mask = out_p["completion_mask"].bool()
    assert not torch.equal(out_g["advantages"][:, None].expand_as(mask)[mask], out_p["advantages"][mask])

    # GRPO's loss code on PRPO's advantages is PRPO's loss.
    grpo.current_gradient_accumulation_steps = prpo.current_gradient_accumulation_steps = 1  # set by the train loop
    with torch.no_grad():
        loss_p = prpo.compute_loss(prpo.model, out_p)
        loss_g = grpo.compute_loss(grpo.model, {**out_g, "advantages": out_p["advantages"]})
    assert loss_p.item() == pytest.approx(loss_g.item(), rel=1e-6, abs=1e-7)

    # A response every reward function returned None for gets A = 0 (TRL's rule) and leaves the others as they were:
    # here every R is 0, so beta = 0 and each A is the response's own Z (fixed prior), whatever its group.
    before = out_p["advantages"].clone()
    prpo._rollout.outcomes.rewards[0] = math.nan
    after = prpo.rollout_advantages(batch_p, out_p, prpo._rollout, "eval")
    assert torch.all(after[0] == 0) and torch.equal(after[1:], before[1:])


def test_the_docs_show_the_example_scripts():
    """docs/trl.md's side-by-side code is examples/grpo_math.py and prpo_math.py without their docstrings."""
    section = (REPO_ROOT / "docs" / "trl.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)[:2]
    for block, name in zip(blocks, ("grpo_math", "prpo_math"), strict=True):
        script = (REPO_ROOT / "examples" / f"{name}.py").read_text()
        code = script[script.index('"""', 3) + 3:]
        assert [line for line in block.splitlines() if line] == [line for line in code.splitlines() if line], name


# ----------------------------------------------------------------------------- data and rewards, no model


def test_prompt_ids_are_content_hashes_stable_across_processes():
    prompt = [SYSTEM, {"role": "user", "content": "What is 3 + 4?"}]
    code = "import sys; from prpo.tasks.rows import prompt_key; print(prompt_key(eval(sys.argv[1])))"
    ids = {subprocess.run([sys.executable, "-c", code, repr(prompt)], capture_output=True, text=True, check=True,
                          env={"PYTHONHASHSEED": seed, "HF_HUB_OFFLINE": "1"}).stdout.strip() for seed in ("1", "2")}
    assert ids == {prompt_key(prompt)} and len(prompt_key(prompt)) == 16
    assert prompt_key(json.loads(json.dumps(prompt))) == prompt_key(prompt)  # equal prompts -> one group
    assert prompt_key("What is 3 + 4?") != prompt_key([{"role": "user", "content": "What is 3 + 4?"}])
    assert row_prompt_id({"prompt": "p", "prompt_id": "q7"}) == "q7"
    assert row_prompt_id({"prompt": "p"}) == prompt_key("p")


def test_problem_falls_back_to_the_last_user_message():
    chat = [SYSTEM, {"role": "user", "content": "first"}, {"role": "assistant", "content": "a"},
            {"role": "user", "content": "second"}]
    assert row_problem({"prompt": chat}) == "second"
    assert row_problem({"prompt": chat, "problem": "given"}) == "given"
    assert row_problem({"prompt": "plain text prompt"}) == "plain text prompt"
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    assert row_problem({"prompt": parts}) == "What is shown?"


def test_outcome_is_the_weighted_sum_of_reward_functions_mapped_by_reward_range():
    args = PRPOConfig(output_dir="unused", use_cpu=True, reward_range=[0.0, 3.0])
    outcome = OutcomeReward(None, args, outcome_reward_range([len], args))
    nan = math.nan
    r = torch.tensor([[1.0, 0.5], [nan, 1.0], [nan, nan], [0.0, 0.0]])
    outcomes = outcome.combine(["a", "b", "c", "d"], r, torch.tensor([2.0, 1.0]))
    # R = 2*1 + 0.5 = 2.5; None skipped: 1; all None: NaN; 0. Mapped [0, 3] -> [-1, 1]: -1 + 2R/3.
    expected = [-1 + 2 * 2.5 / 3, -1 + 2 / 3, nan, -1.0]
    rewards = outcomes.rewards.tolist()
    assert rewards[:2] + rewards[3:] == pytest.approx(expected[:2] + expected[3:])
    assert math.isnan(rewards[2]) and outcomes.texts == ["a", "b", "c", "d"] and outcomes.correct is None


def with_range(low: float, high: float):
    def reward(completions, **kwargs):
        return [low] * len(completions)

    reward.reward_range = (low, high)
    return reward


def test_reward_range_is_taken_from_the_reward_functions_when_each_declares_it(caplog):
    # R = 2 r1 - 1 r2 with r1 in [0, 1] and r2 in [-1, 3]: low = 2*0 - 3 = -3, high = 2*1 - (-1) = 3
    assert declared_reward_range([with_range(0, 1), with_range(-1, 3)], [2.0, -1.0]) == (-3.0, 3.0)
    assert declared_reward_range([with_range(0, 1), with_range(0, 1)], None) == (0.0, 2.0)
    assert declared_reward_range([with_range(0, 1), len], None) is None  # one undeclared: unknown
    args = PRPOConfig(output_dir="unused", use_cpu=True)
    with caplog.at_level("WARNING", logger="prpo.training.rewards"):
        assert outcome_reward_range(with_range(0, 1), args) == (0.0, 1.0)  # a single function, as TRL accepts
        assert not caplog.records
        assert outcome_reward_range([len], args) is None
    assert len(caplog.records) == 1 and "set reward_range" in caplog.text and "halve" in caplog.text
    given = PRPOConfig(output_dir="unused", use_cpu=True, reward_range=[0.0, 2.0])
    assert outcome_reward_range([with_range(0, 1)], given) == (0.0, 2.0)  # the config's range wins
    # declared [0, 1] maps a 0/1 accuracy onto the paper's -1/+1, as reward_range [0, 1] does
    outcome = OutcomeReward(None, args, outcome_reward_range([with_range(0, 1)], args))
    assert outcome.combine(["a", "b"], torch.tensor([[0.0], [1.0]]), torch.tensor([1.0])).rewards.tolist() == [-1.0, 1.0]


def test_reward_range_with_the_built_in_grader_is_refused():
    args = PRPOConfig(output_dir="u", use_cpu=True, prm={"type": "arithmetic"}, reward_range=[0, 1])
    with pytest.raises(ValueError, match="reward_range=.*mapped twice: remove reward_range"):
        PRPOTrainer("not-loaded", args=args)  # refused before the model is loaded
    from prpo.training.run_config import build_config

    with pytest.raises(ConfigError) as info:
        build_config({"model": {"model_name_or_path": "x"}, "task": {"name": "arithmetic"}, "reward_range": [0, 1],
                      "prm": {"type": "arithmetic"}, "use_cpu": True})
    assert info.value.key == "reward_range" and "remove it" in str(info.value)


def test_check_dataset_needs_answer_only_for_the_default_grader(qwen_tokenizer):
    data = math_dataset()
    check_dataset(data, qwen_tokenizer, 2048, needs_answer=False)
    with pytest.raises(ValueError, match="lacks the 'answer' column .* pass reward_funcs"):
        check_dataset(data, qwen_tokenizer, 2048)
    rows = data.to_list()
    clash = Dataset.from_list([{**rows[0], "problem": "x"}, {**rows[0], "problem": "y"}])  # one prompt, two problems
    with pytest.raises(ValueError, match=f"row 1 \\(prompt_id '{prompt_key(rows[0]['prompt'])}'\\).*shared"):
        check_dataset(clash, qwen_tokenizer, 2048, needs_answer=False)
    no_user = Dataset.from_list([{"prompt": [SYSTEM], "solution": "1"}])
    with pytest.raises(ValueError, match="the prompt's last user message .* non-empty"):
        check_dataset(no_user, qwen_tokenizer, 2048, needs_answer=False)


@pytest.mark.parametrize("key, value, reason", [
    ("scale_rewards", "group", "outcome_scale='group'"),
    ("scale_rewards", "batch", "GRPO advantages that PRPO replaces"),
    ("multi_objective_aggregation", "normalize_then_sum", "z-score"),
    ("importance_sampling_level", "sequence", "erasing PRPO's per-token credit"),
    ("max_tool_calling_iterations", 3, "tool calling is not supported"),
    ("loss_type", "luspo", "not one of"),
    ("reward_range", [1.0, 0.0], "low must be below high"),
    ("reward_range", [0.0], "two finite numbers"),
])
def test_trl_options_that_change_the_advantages_are_refused(key, value, reason):
    with pytest.raises(ConfigError) as info:
        PRPOConfig(output_dir="unused", use_cpu=True, **{key: value})
    assert info.value.key == key and reason in str(info.value)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(tools=[len]), ValueError, "tools is not supported"),
    (dict(environment_factory=object), ValueError, "environment_factory is not supported"),
    (dict(reward_funcs=[len], grader=len), ValueError, "pass one"),
    (dict(reward_funcs=[len], args=PRPOConfig(output_dir="u", use_cpu=True, prm={"type": "arithmetic"},
                                              overlong_len=64)), ValueError, "get_soft_overlong_punishment"),
    (dict(args=PRPOConfig(output_dir="u", use_cpu=True)), ValueError, "pass prm="),
])
def test_constructor_refusals_name_the_argument(kwargs, error, words):
    kwargs.setdefault("args", PRPOConfig(output_dir="u", use_cpu=True, prm={"type": "arithmetic"}))
    with pytest.raises(error, match=words):
        PRPOTrainer("not-loaded", **kwargs)  # refused before the model is loaded


def test_positional_args_in_the_old_order_are_refused():
    with pytest.raises(TypeError, match="GRPOTrainer's argument order"):
        PRPOTrainer("not-loaded", PRPOConfig(output_dir="u", use_cpu=True))


def test_a_prm_is_a_spec_an_object_or_a_function():
    assert type(as_prm("arithmetic")).__name__ == "ArithmeticPRM"
    assert type(as_prm({"type": "arithmetic"})).__name__ == "ArithmeticPRM"
    prm = RecordingPRM()
    wrapped = as_prm(prm)
    assert isinstance(wrapped, FunctionPRM) and wrapped.score(["q"], [["ab", "abc"]]) == [[0.1 + 0.2 * 2, 0.1 + 0.2 * 3]]
    assert as_prm(wrapped) is wrapped
    with pytest.raises(PRMError, match="got int"):
        as_prm(3)


def test_import_prpo_is_light():
    code = "import sys, prpo; print(sorted(m for m in ('torch', 'trl', 'transformers') if m in sys.modules)); prpo.PRPOConfig"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"HF_HUB_OFFLINE": "1"})
    assert out.stdout.strip() == "[]"
