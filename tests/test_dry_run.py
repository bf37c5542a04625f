"""`prpo train --dry-run` offline: it checks what it can locally and lists what a real run would download."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from prpo.commands import train as train_command

PAPER = Path(__file__).resolve().parents[1] / "configs" / "paper-qwen2.5-math-1.5b.yaml"
DOWNLOADS = ("# a real run downloads: dataset DigitalLearningGmbH/MATH-lighteval (train), "
             "dataset HuggingFaceH4/MATH-500 (test), model Qwen/Qwen2.5-Math-1.5B, PRM Qwen/Qwen2.5-Math-PRM-7B\n")


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """Offline with empty dataset and model caches, and no $PRPO_DATA_DIR: a fresh machine without network."""
    import datasets.config
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE  # conftest sets HF_HUB_OFFLINE=1 before any import
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("PRPO_DATA_DIR", raising=False)


def test_paper_dry_run_offline_lists_the_downloads(empty_hub_cache, capsys):
    assert train_command.main([str(PAPER), "--dry-run"]) == 0
    out = capsys.readouterr()
    assert out.err.startswith(
        "# task math: not checked (hub dataset DigitalLearningGmbH/MATH-lighteval, not reachable)\n"
        "# eval_task math500: not checked (hub dataset HuggingFaceH4/MATH-500, not reachable)\n"
        "# policy: Qwen/Qwen2.5-Math-1.5B\n"
    )
    assert DOWNLOADS in out.err
    printed = yaml.safe_load(out.out)
    assert printed["prm"]["model"] == "Qwen/Qwen2.5-Math-PRM-7B"
    # the summary and the printed YAML agree on the accumulation this launch trains with (1 process)
    assert "gradient_accumulation_steps 64)" in out.err and printed["gradient_accumulation_steps"] == 64
    assert printed["prompts_per_step"] == 128


def test_paper_dry_run_offline_with_local_data_lists_only_the_models(empty_hub_cache, fixture_data, capsys):
    code = train_command.main([str(PAPER), "--dry-run", "--task.options.data_dir", str(fixture_data),
                               "--task.options.skip_bad_rows", "true", "--eval_task.options.data_dir", str(fixture_data)])
    err = capsys.readouterr().err
    assert code == 0, err
    # math_train_answers.json: 5 rows, 1 with an empty answer skipped; math500.jsonl: 5 rows.
    assert "# task math: 4 problems\n# eval_task math500: 5 problems\n" in err
    assert "# a real run downloads: model Qwen/Qwen2.5-Math-1.5B, PRM Qwen/Qwen2.5-Math-PRM-7B\n" in err


def test_dry_run_offline_still_fails_on_what_it_can_check(empty_hub_cache, capsys):
    assert train_command.main([str(PAPER), "--dry-run", "--prm.rigth", "1"]) == 1
    assert "unknown field 'rigth'" in capsys.readouterr().err
    assert train_command.main([str(PAPER), "--dry-run", "--task.options.data_dir", "/no/such/dir"]) == 1
    assert "math_train_answers.json: no such data file" in capsys.readouterr().err


def test_a_real_run_offline_fails_fast_and_clearly(empty_hub_cache, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_command.main([str(PAPER), "--output_dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("prpo train: error: config key 'task': hub dataset 'DigitalLearningGmbH/MATH-lighteval' "
                          "(split train) is not in the local cache and the hub cannot be reached")
    assert "use local files (data_file, or data_dir / $PRPO_DATA_DIR" in err
    assert not out.exists()  # it failed before writing anything


def test_dry_run_of_the_smollm2_alias_converts_nothing(tmp_path, monkeypatch, capsys):
    """The GGUF is converted by the first real run, never by a dry run (an empty cache stays empty)."""
    monkeypatch.setenv("PRPO_CACHE_DIR", str(tmp_path / "cache"))
    config = Path(__file__).resolve().parents[1] / "configs" / "cpu-tiny.yaml"
    assert train_command.main([str(config), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "# policy: smollm2 (from " in err and f"converted once into {tmp_path / 'cache' / 'models'} by a real run" in err
    assert "converting" not in err and not (tmp_path / "cache").exists()
