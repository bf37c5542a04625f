"""Run config: validation errors name the key, overrides, round trip, shipped configs, `prpo train --dry-run`."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from prpo.commands import train as train_command
from prpo.training.config import ConfigError, PRPOConfig, derive_accumulation
from prpo.training.run_config import apply_overrides, build_config, load_config, parse_value

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BASE = {
    "model": {"model_name_or_path": "some/model"},
    "task": {"name": "arithmetic"},
    "prm": {"type": "arithmetic"},
    "output_dir": "unused",
    "num_generations": 4,
    "per_device_train_batch_size": 8,
}


def _error(**changes) -> ConfigError:
    data = {**BASE, **changes}
    with pytest.raises(ConfigError) as info:
        build_config(data)
    return info.value


@pytest.mark.parametrize(
    "changes, key, words",
    [
        ({"learnin_rate": 1e-6}, "learnin_rate", "did you mean 'learning_rate'"),
        ({"task": {"name": "math", "limt": 3}}, "task.limt", "did you mean 'limit'"),
        ({"model": {"model_name_or_path": "m", "dtyp": "bfloat16"}}, "model.dtyp", "did you mean 'dtype'"),
        ({"modle": {}}, "modle", "did you mean 'model'"),
        ({"learning_rate": "fast"}, "learning_rate", "expected float"),
        ({"num_generations": 4.5}, "num_generations", "expected int"),
        ({"bf16": "yes"}, "bf16", "bool"),
        ({"lr_scheduler_type": "sometimes"}, "lr_scheduler_type", "one of linear"),
        ({"normalization": "batch"}, "normalization", "'batch' is not one of fixed_prior, group"),
        ({"prm": None}, "prm", "PRM"),
    ],
)
def test_bad_yaml_config_names_the_key(changes, key, words):
    err = _error(**changes)
    assert err.key == key
    assert words in str(err) and key in str(err)


PYTHON_BASE = {"output_dir": "unused", "prm": {"type": "arithmetic"}, "num_generations": 4,
               "per_device_train_batch_size": 8}


@pytest.mark.parametrize(
    "changes, key, words",
    [
        # one field at a time: the key, the bad value, the accepted values (and the nearest one)
        ({"method": "prp"}, "method", "'prp' is not one of dr_grpo, grpo, "),
        ({"method": "prp"}, "method", "; did you mean 'prpo'"),
        ({"method": "nosuch"}, "method", "'nosuch' is not one of"),
        ({"segmenter": "bogus"}, "segmenter", "'bogus' is not one of entropy, fixed, marker"),
        ({"segmenter": "markr"}, "segmenter", "did you mean 'marker'"),
        ({"normalization": "batch"}, "normalization", "'batch' is not one of fixed_prior, group"),
        ({"outcome_scale": "grup"}, "outcome_scale", "is not one of none, group; did you mean 'group'"),
        ({"loss_type": "vespo"}, "loss_type", "'vespo' is not one of grpo, bnpo, dr_grpo, dapo, cispo, sapo"),
        ({"k": -3}, "k", "must be >= 0, got -3"),
        ({"k": "5"}, "k", "expected int, got str '5'"),
        ({"sigma0": 0.0}, "sigma0", "must be > 0, got 0.0"),
        ({"eps": -1e-6}, "eps", "must be > 0"),
        ({"min_gap": 0}, "min_gap", "must be > 0"),
        ({"segment_length": 0}, "segment_length", "must be > 0"),
        ({"overlong_len": 0}, "overlong_len", "must be > 0"),
        ({"grading_timeout": 0.0}, "grading_timeout", "must be > 0"),
        ({"prompts_per_step": 0}, "prompts_per_step", "must be > 0"),
        ({"collapse_drop": 1.0}, "collapse_drop", "must be < 1"),
        ({"collapse_window": 0}, "collapse_window", "must be > 0"),
        ({"temperature": 0.0}, "temperature", "must be > 0"),
        ({"marker": ""}, "marker", "non-empty"),
        ({"prm": {"right": 0.9}}, "prm.type", "required"),
        ({"advantage_options": []}, "advantage_options", "expected dict"),
        # combinations
        ({"correct_reward": -1.0, "wrong_reward": 1.0}, "correct_reward", "must exceed wrong_reward"),
        ({"num_generations": 3}, "generation_batch_size", "divisible by num_generations"),
        ({"delta": 1.1}, "delta", "dual clip"),
        ({"advantage_options": {"tau": 0.2}}, "advantage_options.tau", "method 'prpo' takes"),
        ({"advantage_options": {"mu0": 0.3}}, "advantage_options.mu0", "set the top-level key 'mu0'"),
        ({"method": "pure", "advantage_options": {"separator_ends": True}}, "advantage_options.separator_ends",
         "follows the segmenter"),
        ({"max_completion_length": 12, "min_gap": 10}, "min_gap", "2 * min_gap"),
        ({"overlong_len": 8192}, "overlong_len", "can never apply"),
        ({"remove_unused_columns": True}, "remove_unused_columns", "prompt_id"),
        ({"prompts_per_step": 3}, "prompts_per_step", "3 prompts x num_generations 4 = 12 rollouts"),
        ({"prompts_per_step": 4, "gradient_accumulation_steps": 3}, "gradient_accumulation_steps", "needs 2"),
        ({"prompts_per_step": 4, "steps_per_generation": 2}, "steps_per_generation", "leave it unset"),
    ],
)
def test_bad_python_config_names_the_key(changes, key, words):
    with pytest.raises(ConfigError) as info:
        PRPOConfig(**{**PYTHON_BASE, **changes})
    assert info.value.key == key
    assert words in str(info.value) and key in str(info.value)


def test_a_method_or_segmenter_registered_later_is_accepted():
    from prpo.advantages import ADVANTAGES, register_advantage
    from prpo.segmentation import SEGMENTERS, register_segmenter

    register_advantage("test_later", uses_prm=False)(lambda inputs: inputs.mask.float())
    register_segmenter("test_halves")(lambda inputs: inputs.mask.long().cumsum(dim=1).sub(1))
    try:
        args = PRPOConfig(**{**PYTHON_BASE, "method": "test_later", "segmenter": "test_halves"})
        assert (args.method, args.segmenter, args.uses_prm(), args.segmenter_kwargs()) == ("test_later", "test_halves", False, {})
    finally:
        ADVANTAGES.pop("test_later")
        SEGMENTERS.pop("test_halves")


@pytest.mark.parametrize(
    "prompts, generations, per_device, processes, accumulation",
    [(128, 8, 16, 1, 64), (128, 8, 16, 8, 8), (128, 8, 16, 16, 4), (128, 8, 8, 16, 8), (16, 8, 32, 1, 4)],
)
def test_accumulation_is_derived_from_the_paper_unit(prompts, generations, per_device, processes, accumulation):
    # accumulation = prompts x G / (per-device rows x processes): 128 x 8 = 1024 = 16 x 8 x 8 = 16 x 16 x 4 ...
    assert derive_accumulation(prompts, generations, per_device, processes) == accumulation


def test_paper_unit_on_processes_that_cannot_make_it_is_refused():
    with pytest.raises(ConfigError) as info:
        derive_accumulation(128, 8, 16, 3)  # 1024 rollouts are not a multiple of 48
    assert info.value.key == "prompts_per_step" and "16 x 3 processes = 48" in str(info.value)


def test_prompts_per_step_sets_the_update_on_this_launch():
    args = PRPOConfig(**{**PYTHON_BASE, "prompts_per_step": 128, "num_generations": 8, "per_device_train_batch_size": 16})
    # one process: 128 x 8 = 1024 rollouts = 16 rows x 64 micro-steps, one optimiser update per generation batch
    assert (args.gradient_accumulation_steps, args.steps_per_generation, args.generation_batch_size) == (64, 64, 1024)
    assert args.batch_summary().startswith("128 prompts x 8 rollouts = 1024 rollouts per optimiser step (1 processes")


@pytest.mark.parametrize("segmenter, separator_ends", [("marker", True), ("entropy", False), ("fixed", False)])
def test_pure_gets_the_outcome_values_and_the_segmenters_separator_ends(segmenter, separator_ends):
    args = PRPOConfig(**{**PYTHON_BASE, "method": "pure", "segmenter": segmenter, "wrong_reward": 0.0,
                         "advantage_options": {"tau": 0.2}})
    assert args.advantage_kwargs() == {"correct_reward": 1.0, "wrong_reward": 0.0, "separator_ends": separator_ends,
                                       "tau": 0.2}


def test_kl_and_vllm_correction_defaults_are_the_papers():
    args = PRPOConfig(**PYTHON_BASE)
    # plain k3 as a loss term (no importance weight on the KL); no vLLM importance-sampling correction
    assert (args.beta, args.use_bias_correction_kl, args.vllm_importance_sampling_correction) == (0.001, False, False)


def test_missing_sections_are_named():
    assert _error(model=None).key == "model"
    assert _error(task={"limit": 2}).key == "task.name"
    assert _error(model={"dtype": "float32"}).key == "model.model_name_or_path"


def test_valid_config_builds_paper_defaults():
    config = build_config(BASE)
    args = config.training
    assert isinstance(args, PRPOConfig)
    assert (args.method, args.segmenter, args.k, args.min_gap) == ("prpo", "entropy", 5, 10)
    assert (args.epsilon, args.delta, args.beta, args.loss_type) == (0.2, 3.0, 0.001, "dapo")
    assert (args.learning_rate, args.weight_decay, args.max_grad_norm) == (1e-6, 0.01, 1.0)
    # constant after a warm-up of warmup_steps = 0: the paper's constant rate (tests/test_schedule.py)
    assert (args.lr_scheduler_type.value, args.warmup_steps) == ("constant_with_warmup", 0)
    assert (args.num_generations, args.temperature, args.max_completion_length) == (4, 1.0, 2048)
    assert math.isclose(args.sigma0, math.sqrt(1 / 24)) and args.mu0 == 0.5
    assert args.advantage_kwargs() == {
        "normalization": "fixed_prior", "mu0": 0.5, "sigma0": args.sigma0, "outcome_scale": "none", "eps": 1e-6,
    }
    assert build_config({**BASE, "method": "grpo", "prm": None}).training.advantage_kwargs() == {"eps": 1e-6}


def test_overrides_use_dotted_keys_and_yaml_values():
    data = apply_overrides(BASE, ["--task.limit", "8", "--learning_rate=2e-6", "--prm.noise", "0.1",
                                  "--report_to", "[tensorboard]", "--task.options.seed", "3"])
    assert data["task"] == {"name": "arithmetic", "limit": 8, "options": {"seed": 3}}
    assert data["learning_rate"] == 2e-6 and data["prm"] == {"type": "arithmetic", "noise": 0.1}
    assert data["report_to"] == ["tensorboard"]
    assert BASE["task"] == {"name": "arithmetic"}  # the input is left alone
    assert parse_value("1e-6") == 1e-6 and parse_value("true") is True and parse_value("prpo") == "prpo"
    with pytest.raises(ConfigError) as info:
        apply_overrides(BASE, ["--task.limit"])
    assert info.value.key == "task.limit"
    with pytest.raises(ConfigError) as info:
        apply_overrides(BASE, ["--output_dir.sub", "1"])
    assert info.value.key == "output_dir"


def test_resolved_config_round_trips(tmp_path):
    config = build_config({**BASE, "learning_rate": 3e-6, "eval_task": {"name": "arithmetic", "split": "test"}})
    text = config.to_yaml()
    data = yaml.safe_load(text)
    assert data["learning_rate"] == 3e-6 and data["method"] == "prpo" and data["task"]["limit"] is None
    assert "lora_r" in data["model"] and "beta" in data  # every key, defaults included
    path = tmp_path / "config.yaml"
    path.write_text(text)
    again = load_config(path)
    assert again.to_yaml() == text
    assert again.training.generation_batch_size == config.training.generation_batch_size


def test_shipped_configs_validate_and_the_paper_config_has_the_paper_settings():
    for name in ("quickstart.yaml", "cpu-tiny.yaml"):
        assert load_config(CONFIGS / name).training.method == "prpo"
    paper = load_config(CONFIGS / "paper-qwen2.5-math-1.5b.yaml")
    args = paper.training
    assert paper.model.model_name_or_path == "Qwen/Qwen2.5-Math-1.5B"
    assert args.prm == {"type": "step_tag", "model": "Qwen/Qwen2.5-Math-PRM-7B"}
    assert (paper.task.name, paper.eval_task.name) == ("math", "math500")
    assert (args.epsilon, args.delta, args.beta, args.loss_type, args.learning_rate) == (0.2, 3.0, 0.001, "dapo", 1e-6)
    assert (args.num_generations, args.temperature, args.top_p) == (8, 1.0, 1.0)
    assert (args.max_prompt_length, args.max_completion_length, args.overlong_len) == (2048, 2048, 2048)
    assert (args.k, args.min_gap, args.normalization) == (5, 10, "fixed_prior")
    assert (args.use_bias_correction_kl, args.vllm_importance_sampling_correction) == (False, False)
    # 128 prompts x 8 rollouts per optimiser step, fully on-policy: here (1 process) 16 rows x 64 micro-steps;
    # on one 8-GPU node 16 x 8 x 8 = 1024, on 16 processes 16 x 16 x 4
    assert (args.prompts_per_step, args.gradient_accumulation_steps, args.generation_batch_size) == (128, 64, 1024)
    assert args.steps_per_generation == args.gradient_accumulation_steps and args.num_iterations == 1
    per_device = args.per_device_train_batch_size
    assert [derive_accumulation(128, 8, per_device, n) for n in (8, 16)] == [8, 4]


def test_dry_run_prints_the_resolved_config(tiny_causal_lm_dir, capsys):
    code = train_command.main([str(CONFIGS / "cpu-tiny.yaml"), "--dry-run",
                               "--model.model_name_or_path", str(tiny_causal_lm_dir), "--method", "pure"])
    out = capsys.readouterr()
    assert code == 0, out.err
    data = yaml.safe_load(out.out)
    assert data["method"] == "pure" and data["model"]["model_name_or_path"] == str(tiny_causal_lm_dir)
    assert "task arithmetic: 8 problems" in out.err


def test_dry_run_of_the_paper_config_on_local_data(shared_data, capsys):
    code = train_command.main([
        str(CONFIGS / "paper-qwen2.5-math-1.5b.yaml"), "--dry-run",
        "--task.options.data_dir", str(shared_data), "--task.options.skip_bad_rows", "true",
        "--eval_task.options.data_dir", str(shared_data),
    ])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert yaml.safe_load(out.out)["prm"]["model"] == "Qwen/Qwen2.5-Math-PRM-7B"
    assert "# update: 128 prompts x 8 rollouts = 1024 rollouts per optimiser step (1 processes" in out.err


@pytest.mark.parametrize(
    "args, words",
    [
        (["--learnin_rate", "1e-6"], "'learnin_rate': unknown key; did you mean 'learning_rate'"),
        (["--prm.rigth", "0.9"], "unknown field 'rigth'"),
        (["--task.name", "nosuchtask"], "unknown task 'nosuchtask'"),
        (["--model.model_name_or_path", "./no/such/folder"], "does not exist"),
    ],
)
def test_dry_run_of_a_bad_config_exits_1_with_the_error(args, words, capsys):
    code = train_command.main([str(CONFIGS / "cpu-tiny.yaml"), "--dry-run", *args])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("prpo train: error:") and words in err


def test_missing_config_file_is_an_error(tmp_path, capsys):
    assert train_command.main([str(tmp_path / "nope.yaml"), "--dry-run"]) == 1
    assert "does not exist" in capsys.readouterr().err
