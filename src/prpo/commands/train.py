"""`prpo train [CONFIG.yaml] [--key value ...] [--dry-run] [--resume]`.

Without CONFIG it runs the offline quickstart (configs/quickstart.yaml). Keys override the YAML
with dotted names (`--task.limit 8`, `--prm.type arithmetic`, `--learning_rate 2e-6`). The
resolved config is written to `<output_dir>/config.yaml`, the commit, library versions, threads and
start/end times to `<output_dir>/provenance.json` (`prpo.provenance`); the final model to `<output_dir>/final`.
With an `eval_task` the policy is evaluated (greedy) on its problems before and after training and
the before/after table is printed (`eval_before_after: false` skips it); every run ends with the
report (`curves.png`, `report.html`) in `output_dir`.
Several processes: `accelerate launch [--config_file zero3.yaml] -m prpo.cli train CONFIG.yaml`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from prpo.training.config import ConfigError
from prpo.training.output_dir import OutputDirError
from prpo.training.run_config import RunConfig, TaskConfig, load_config
from prpo.models import SMOLLM2_ALIAS, cache_root, smollm2_gguf

BUNDLED = Path(__file__).resolve().parents[1] / "configs"  # package data; `configs/` in a checkout links here
QUICKSTART = BUNDLED / "quickstart.yaml"
FLAGS = {"--dry-run", "--resume", "--overwrite"}
USAGE = f"""usage: prpo train [CONFIG.yaml | NAME] [--key value ...] [--dry-run] [--resume]

  CONFIG.yaml   run config (default: configs/quickstart.yaml, the offline SmolLM2 arithmetic run)
  NAME          a config shipped with prpo, by file name without .yaml: {", ".join(sorted(p.stem for p in BUNDLED.glob("*.yaml")))}
  --key value   override a config key; dotted keys reach into sections (--task.limit 8)
  --dry-run     validate the config, build the task, PRM spec and model path, print the resolved
                config and exit (no weights are loaded); offline, it lists the hub datasets and
                models a real run would download instead of failing on them
  --resume      continue from the last checkpoint in output_dir (optimizer, scheduler, RNG, data order)
  --overwrite   start over in an output_dir that holds a run, deleting that run's files (without it, or
                --resume, such a folder is refused before the first step)
"""


def _split_argv(argv: list[str]) -> tuple[str | None, set[str], list[str]]:
    config = argv[0] if argv and not argv[0].startswith("--") else None
    rest = argv[1:] if config is not None else argv
    flags = {a for a in rest if a in FLAGS}
    return config, flags, [a for a in rest if a not in FLAGS]


def config_path(argument: str | None) -> Path:
    """The config file: the quickstart without an argument, a shipped config by its name, else the path given."""
    if argument is None:
        return QUICKSTART
    bundled = BUNDLED / f"{argument}.yaml"
    return bundled if not Path(argument).exists() and "/" not in argument and bundled.is_file() else Path(argument)


def load_task_section(section: TaskConfig, key: str):
    """`prpo.tasks.load_task` on a task section; a bad section raises ConfigError naming it."""
    from prpo.tasks import load_task

    try:
        return load_task(
            section.name, data_file=section.data_file, dataset_id=section.dataset_id, split=section.split,
            limit=section.limit, template=section.template, **section.options,
        )
    except (ValueError, FileNotFoundError, OSError) as err:
        raise ConfigError(key, str(err)) from err


def check_prm_spec(spec: dict) -> None:
    """Validate a PRM spec against its adapter's Config without loading any weights."""
    from prpo.prm.base import PRM_REGISTRY, PRMError, build_config

    kind = spec.get("type")
    try:
        entry = PRM_REGISTRY.lookup(kind)
    except ValueError as err:
        raise ConfigError("prm.type", str(err)) from None
    fields = {k: v for k, v in spec.items() if k != "type"}
    try:
        build_config(entry.Config, fields, where=f"prm (type {kind!r})")
    except PRMError as err:
        raise ConfigError("prm", str(err)) from err


def resolve_policy(config: RunConfig) -> str:
    from prpo.models import resolve_model

    try:
        return resolve_model(config.model.model_name_or_path)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError("model.model_name_or_path", str(err)) from err


def _is_cached(repo_id: str) -> bool:
    """Whether the hub model `repo_id` is in the local Hugging Face cache (its config.json is)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _dry_run_task(section: TaskConfig, key: str, downloads: list[str]) -> str:
    """Load a task section; a hub dataset that cannot be reached is listed in `downloads` instead."""
    from prpo.tasks.sources import HubUnavailable

    try:
        task = load_task_section(section, key)
    except ConfigError as err:
        if not isinstance(err.__cause__, HubUnavailable):
            raise
        downloads.append(f"dataset {err.__cause__.dataset_id} ({err.__cause__.split})")
        return f"{key} {section.name}: not checked (hub dataset {err.__cause__.dataset_id}, not reachable)"
    return f"{key} {task.name}: {len(task)} problems"


def _tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path) if Path(path).is_dir() else None


def dry_run(config: RunConfig) -> None:
    """Everything that needs no weights: task rows, PRM spec, model path, trainer arguments.

    What cannot be checked offline (a hub dataset not in the cache) and the hub models that are not
    cached are reported as what a real run would download; everything else fails as a real run would.
    """
    downloads: list[str] = []
    lines = [_dry_run_task(config.task, "task", downloads)]
    if config.eval_task is not None:
        lines.append(_dry_run_task(config.eval_task, "eval_task", downloads))
    name = config.model.model_name_or_path
    if name == SMOLLM2_ALIAS:  # converted by the first real run, never by a dry run (it takes half a minute)
        lines.append(f"policy: {name} (from {smollm2_gguf()}, converted once into {cache_root() / 'models'} by a real run)")
    else:
        path = resolve_policy(config)
        lines.append(f"policy: {path}")
        if not Path(path).is_dir() and not _is_cached(path):
            downloads.append(f"model {path}")
    lines.append(f"update: {config.training.batch_summary()}")
    prm = config.training.prm
    if prm is not None:
        check_prm_spec(prm)
        model = prm.get("model")
        if isinstance(model, str) and not Path(model).expanduser().is_dir() and not _is_cached(model):
            downloads.append(f"PRM {model}")
    lines.append("a real run downloads: " + (", ".join(downloads) if downloads else "nothing (all local or cached)"))
    print("".join(f"# {line}\n" for line in lines), end="", file=sys.stderr)
    print(config.to_yaml(effective=True), end="")


class RunStopped(Exception):
    """The run stopped before its end with a checkpoint to resume from; the message says how.

    ``preempted``: stopped on request (SIGTERM), which is a success (exit 0), not a failure (exit 3).
    """

    def __init__(self, message: str, preempted: bool = False):
        super().__init__(message)
        self.preempted = preempted


def train(config: RunConfig, *, resume: bool, config_file: Path = QUICKSTART, overrides: list[str] | None = None,
          overwrite: bool = False) -> None:
    from trl import get_peft_config, get_quantization_config

    from prpo.training.model_card import ModelCard, header_comment
    from prpo.prm.base import PRMOutage
    from prpo.provenance import record_finish, record_start
    from prpo.training import trl_surface
    from prpo.training.output_dir import check_disk, checkpoint_bytes, prepare_output_dir
    from prpo.training.preemption import Preempted

    from prpo.training.run import train_and_report
    from prpo.training.trainer import PRPOTrainer

    start = time.perf_counter()
    args = config.training
    task = load_task_section(config.task, "task")
    eval_task = None if config.eval_task is None else load_task_section(config.eval_task, "eval_task")
    path = resolve_policy(config)
    tokenizer = _tokenizer(path)
    model = config.model
    init_kwargs = {"revision": model.model_revision, "dtype": model.dtype, "attn_implementation": model.attn_implementation}
    quantization = get_quantization_config(model)
    if quantization is not None:
        init_kwargs["quantization_config"] = quantization
    args.model_init_kwargs = {**{k: v for k, v in init_kwargs.items() if v is not None}, **(args.model_init_kwargs or {})}
    output_dir = Path(args.output_dir)
    prepare_output_dir(output_dir, resume=resume, overwrite=overwrite, main=args.process_index == 0)
    if args.process_index == 0:
        (output_dir / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
        record_start(output_dir)
    trainer = PRPOTrainer(
        path,
        args=args,
        train_dataset=task.to_dataset(tokenizer),
        grader=task.grade,
        eval_dataset=None if eval_task is None else eval_task.to_dataset(tokenizer),
        processing_class=None,
        peft_config=get_peft_config(model),
    )
    check_disk(output_dir, checkpoint_bytes(trainer.model))
    if not args.eval_before_after:
        eval_task = None
    card = ModelCard(model.model_name_or_path, args.method, task.name, config.to_yaml(), header_comment(config_file))
    try:
        data = train_and_report(trainer, eval_task, max_new_tokens=args.max_completion_length,
                         batch_size=args.per_device_eval_batch_size, final_dir=output_dir / "final", resume=resume,
                         card=card)
    except Preempted as stop:
        command = " ".join(["prpo train", str(config_file), *(overrides or []), "--resume"])
        raise RunStopped(f"{stop} (the last completed step); continue with: {command}", preempted=True) from stop
    except PRMOutage as outage:
        checkpoint = trl_surface.save_checkpoint(trainer)
        command = " ".join(["prpo train", str(config_file), *(overrides or []), "--resume"])
        raise RunStopped(f"the PRM server {outage.url} did not answer for {outage.waited:.0f} s "
                         f"(max_outage_seconds; last error: {outage.last_error}); saved {checkpoint} (step "
                         f"{trainer.state.global_step}, the last completed); continue with: {command}") from outage
    if args.process_index == 0:
        record_finish(output_dir)
        print(end_block(data, args.seed, time.perf_counter() - start, output_dir / "report.html"), flush=True)


def end_block(data: dict | None, seed: int, seconds: float, report: Path) -> str:
    """What the run ends with: before, after, change, the test, the seed, the time and the report, and in words
    whether training helped (one-sided exact McNemar test at `SIGNIFICANCE`)."""
    from prpo.evaluation.evaluate import SIGNIFICANCE

    lines = [f"== prpo train done: seed {seed}, {seconds // 60:.0f} min {seconds % 60:.0f} s =="]
    if data is not None:
        before, after, test = data["before"]["accuracy"], data["after"]["accuracy"], data["mcnemar"]
        lines.append(f"held-out accuracy {100 * before:.1f}% -> {100 * after:.1f}% ({100 * (after - before):+.1f} "
                     f"points), one-sided McNemar p = {test['p_value']:.2g} ({test['improved']} problems improved, "
                     f"{test['worsened']} worsened)")
        if test["p_value"] < SIGNIFICANCE:
            lines.append(f"training improved the model significantly (p < {SIGNIFICANCE})")
        elif after < before:
            lines.append("training made the model worse on these problems: no improvement")
        else:
            lines.append(f"no significant improvement (p = {test['p_value']:.2g} >= {SIGNIFICANCE}): this run does not show "
                         "that training helped")
    lines.append(f"report: {report}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    argument, flags, overrides = _split_argv(list(argv))
    try:
        path = config_path(argument)
        config = load_config(path, overrides)
        if "--dry-run" in flags:
            dry_run(config)
            return 0
        train(config, resume="--resume" in flags, config_file=path, overrides=overrides,
              overwrite="--overwrite" in flags)
    except (ConfigError, OutputDirError) as err:
        print(f"prpo train: error: {err}", file=sys.stderr)
        return 1
    except RunStopped as stop:
        print(f"prpo train: stopped: {stop}", file=sys.stderr)
        return 0 if stop.preempted else 3
    return 0
