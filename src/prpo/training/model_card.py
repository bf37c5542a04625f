"""Model cards (README.md) for the model folders a `prpo train` run saves: checkpoints, `final/`, the run.

    card = ModelCard(base_model="smollm2", method="prpo", task="arithmetic", config_yaml=..., about=...)
    trainer.add_callback(ModelCardCallback(card))   # every checkpoint-N/ and the run directory
    card.write(run_dir / "final")

The card names the base model (a hub id; the offline alias `smollm2` is SmolLM2-135M-Instruct),
the method, the paper (PRPO, arXiv 2601.07182), the task and the run's resolved config, and says
how to load the folder. LoRA folders also get their adapter's base reference set to the configured
name (`name_adapter_base`), never the absolute path of one machine's model cache.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from transformers import TrainerCallback

from prpo.models import ADAPTER_CONFIG, SMOLLM2_ALIAS, SMOLLM2_HUB_ID

CARD_FILE = "README.md"
PAPER_ID = "2601.07182"
PAPER_TITLE = "PRPO: Aligning Process Reward with Outcome Reward in Policy Optimization"


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """What a card says: `base_model` as configured, the `method`, the training `task`, the resolved
    config (YAML text) and `about`, free text on what the run is (e.g. the demo's purpose)."""

    base_model: str
    method: str
    task: str
    config_yaml: str
    about: str = ""

    def text(self, folder: Path) -> str:
        """The card for `folder` (its kind, adapter or full model, decides the loading lines)."""
        hub_id = SMOLLM2_HUB_ID if self.base_model == SMOLLM2_ALIAS else self.base_model
        adapter = (folder / ADAPTER_CONFIG).is_file()
        tags = dict.fromkeys(["prpo", "trl", self.method, "reinforcement-learning"])  # ordered, no repeats
        header = "\n".join(
            ["---", f"base_model: {hub_id}", f"library_name: {'peft' if adapter else 'transformers'}", "tags:",
             *(f"- {tag}" for tag in tags), "---"]
        )
        method = "PRPO" if self.method == "prpo" else f"the `{self.method}` baseline of the prpo library"
        lines = [
            header, "", f"# {folder.name}", "",
            f"{'A LoRA adapter' if adapter else 'A full model'} trained from **{hub_id}** with {method} (Ding et al., *{PAPER_TITLE}*, "
            f"[arXiv {PAPER_ID}](https://arxiv.org/abs/{PAPER_ID})) on the `{self.task}` task.",
        ]
        if self.about:
            lines += ["", self.about.strip()]
        lines += [
            "", "## Use", "",
            "```bash", f"prpo eval {folder.name} --benchmark {self.task}", "```", "",
            f"`prpo eval`, `prpo train` (`model.model_name_or_path`) and `prpo.models.load_policy` take this folder"
            + (f"; they load the base model named in {ADAPTER_CONFIG} (`{self.base_model}`) and merge the adapter."
               if adapter else "."),
            "", "## Config", "", "```yaml", self.config_yaml.rstrip(), "```", "",
            "## Citation", "", f"PRPO: arXiv {PAPER_ID} (https://arxiv.org/abs/{PAPER_ID}).", "",
        ]
        return "\n".join(lines)

    def write(self, folder: str | Path) -> Path:
        """Write `folder/README.md` (replacing the generic card TRL or PEFT saved there)."""
        folder = Path(folder)
        path = folder / CARD_FILE
        path.write_text(self.text(folder), encoding="utf-8")
        return path


class ModelCardCallback(TrainerCallback):
    """Writes the card into every `checkpoint-N/` the trainer saves and into the run directory."""

    def __init__(self, card: ModelCard):
        self.card = card

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.card.write(Path(args.output_dir) / f"checkpoint-{state.global_step}")
            self.card.write(Path(args.output_dir))


def name_adapter_base(model, base_model: str) -> None:
    """Make a PEFT model save `base_model` (the configured name) as its adapters' base reference."""
    for config in getattr(model, "peft_config", {}).values():
        config.base_model_name_or_path = base_model


def header_comment(config_file: Path) -> str:
    """The comment block a YAML config opens with, without the `# ` marks (what the run is for)."""
    lines = []
    for line in Path(config_file).read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return "\n".join(lines)
