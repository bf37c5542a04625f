"""Process reward models behind one protocol: `load_prm(spec).score(problems, segments)`."""

from prpo.prm.base import (
    PRM_REGISTRY,
    PRMError,
    ProcessRewardModel,
    check_inputs,
    load_prm,
    register_prm,
    validate_scores,
)
from prpo.prm.arithmetic import ArithmeticPRM

__all__ = [
    "PRM_REGISTRY",
    "PRMError",
    "ProcessRewardModel",
    "ArithmeticPRM",
    "check_inputs",
    "load_prm",
    "register_prm",
    "validate_scores",
]
