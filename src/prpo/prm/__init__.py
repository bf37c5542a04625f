"""Process reward models behind one protocol: `load_prm(spec).score(problems, segments)`.

Adapters, chosen by `type` in a config: `step_tag` (Qwen2.5-Math-PRM family), `shepherd`
(Math-Shepherd-style causal LMs), `arithmetic` (rule-based verifier), `remote` (HTTP client of
`prpo serve-prm`), `cached` (LRU cache around another PRM), `bench_family` (the benchmark's PRM
on a task family's step checker, `prpo.prm.family.FamilyPRM`).
"""

from prpo.prm.base import (
    PRM_REGISTRY,
    FunctionPRM,
    PRMError,
    ProcessRewardModel,
    as_prm,
    check_inputs,
    load_prm,
    register_prm,
    validate_scores,
)
from prpo.prm.arithmetic import ArithmeticPRM
from prpo.prm.step_tag import StepTagPRM
from prpo.prm.shepherd import ShepherdPRM
from prpo.prm.remote import RemotePRM
from prpo.prm.cached import CachedPRM
from prpo.prm.family import FamilyPRM

__all__ = [
    "PRM_REGISTRY",
    "PRMError",
    "ProcessRewardModel",
    "ArithmeticPRM",
    "CachedPRM",
    "FamilyPRM",
    "FunctionPRM",
    "RemotePRM",
    "ShepherdPRM",
    "StepTagPRM",
    "as_prm",
    "check_inputs",
    "load_prm",
    "register_prm",
    "validate_scores",
]
