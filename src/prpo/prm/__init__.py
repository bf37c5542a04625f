"""Process reward models behind one protocol: `load_prm(spec).score(problems, segments)`.

Adapters, chosen by `type` in a config: `step_tag` (Qwen2.5-Math-PRM family), `shepherd`
(Math-Shepherd-style causal LMs), `arithmetic` (rule-based verifier), `remote` (HTTP client of
`prpo serve-prm`), `cached` (LRU cache around another PRM); `bench_family`, the benchmark's PRM on a
task family's step checker, lives with the benchmark (`prpo.bench.prm.FamilyPRM`) and loads by name.

The protocol and `load_prm` load eagerly and need only PyYAML; each adapter is imported when it is
first named (by `load_prm`, or as an attribute of this package), so `import prpo.prm` or
`prpo.prm.remote` loads neither transformers nor TRL.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from prpo.prm.base import (
    PRM_REGISTRY,
    FunctionPRM,
    PRMError,
    PRMOutage,
    ProcessRewardModel,
    as_prm,
    check_inputs,
    load_prm,
    register_prm,
    validate_scores,
)

# Adapter class -> module that defines it, imported on first use.
_ADAPTERS = {
    "ArithmeticPRM": "prpo.prm.arithmetic",
    "CachedPRM": "prpo.prm.cached",
    "RemotePRM": "prpo.prm.remote",
    "ShepherdPRM": "prpo.prm.shepherd",
    "StepTagPRM": "prpo.prm.step_tag",
}

if TYPE_CHECKING:
    from prpo.prm.arithmetic import ArithmeticPRM
    from prpo.prm.cached import CachedPRM
    from prpo.prm.remote import RemotePRM
    from prpo.prm.shepherd import ShepherdPRM
    from prpo.prm.step_tag import StepTagPRM

__all__ = sorted(["PRM_REGISTRY", "PRMError", "PRMOutage", "ProcessRewardModel", "FunctionPRM", "as_prm", "check_inputs",
                  "load_prm", "register_prm", "validate_scores", *_ADAPTERS])


def __getattr__(name: str) -> Any:
    if name not in _ADAPTERS:
        raise AttributeError(f"module 'prpo.prm' has no attribute {name!r}")
    value = getattr(importlib.import_module(_ADAPTERS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_ADAPTERS])
