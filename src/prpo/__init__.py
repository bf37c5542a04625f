"""prpo: PRPO (arXiv 2601.07182) and its baselines on TRL's `GRPOTrainer`.

    from prpo import PRPOConfig, PRPOTrainer, load_prm, compute_advantages

The names below are imported on first use (module `__getattr__`), so `import prpo` does not load
torch, transformers or TRL.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> module that defines it.
_EXPORTS = {
    "PRPOTrainer": "prpo.training.trainer",
    "PRPOConfig": "prpo.training.config",
    "ConfigError": "prpo.training.config",
    "load_config": "prpo.training.run_config",
    "compute_advantages": "prpo.advantages",
    "register_advantage": "prpo.advantages",
    "ADVANTAGES": "prpo.advantages",
    "load_prm": "prpo.prm",
    "register_prm": "prpo.prm",
    "ProcessRewardModel": "prpo.prm",
    "load_task": "prpo.tasks",
    "is_correct": "prpo.grading",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from prpo.advantages import ADVANTAGES, compute_advantages, register_advantage
    from prpo.training.config import ConfigError, PRPOConfig
    from prpo.grading import is_correct
    from prpo.prm import ProcessRewardModel, load_prm, register_prm
    from prpo.training.run_config import load_config
    from prpo.tasks import load_task
    from prpo.training.trainer import PRPOTrainer


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'prpo' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
