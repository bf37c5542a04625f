"""prpo's use of TRL's private surface (prpo.training.trl_surface): holds for the installed TRL, and a change is named."""

from __future__ import annotations

import inspect

import pytest
import trl

from prpo.training import trl_surface
from prpo.training.trainer import PRPOTrainer


def test_the_installed_trl_has_every_hook_attribute_and_fact_prpo_relies_on():
    assert trl_surface.problems() == []
    trl_surface.check()


def test_every_private_hook_prpo_overrides_is_listed():
    """A new override of a private GRPOTrainer method must be listed in trl_surface.HOOKS (and so checked)."""
    overridden = {name for name, value in vars(PRPOTrainer).items()
                  if name.startswith("_") and not name.startswith("__") and callable(value)
                  and hasattr(trl.GRPOTrainer, name)}
    assert overridden == set(trl_surface.HOOKS)


def test_trainer_touches_trl_privates_only_through_the_surface():
    source = inspect.getsource(inspect.getmodule(PRPOTrainer))
    for attribute in trl_surface.ATTRIBUTES:
        assert f"self.{attribute}" not in source, attribute
    assert trl_surface.LOSS_MASK not in source and "trl.models" not in source


class _Renamed(trl.GRPOTrainer):
    """A TRL whose loss hook was renamed and whose reward hook takes other parameters."""

    _compute_loss = None

    def _calculate_rewards(self, inputs, prompts, completions):  # completion_ids_list dropped
        return None


def test_a_changed_trl_is_refused_naming_each_hook_and_version():
    found = trl_surface.problems(_Renamed, "9.0.0")
    assert found[0] == "TRL 9.0.0 installed; prpo's private-surface checks were written for TRL 1.16.0"
    assert "hook _compute_loss: not a method of _Renamed" in found
    assert ("hook _calculate_rewards: parameters ('inputs', 'prompts', 'completions'), expected "
            "('inputs', 'prompts', 'completions', 'completion_ids_list')") in found
    assert any(line.startswith("hook _compute_loss: its source no longer contains") for line in found)


def test_a_dropped_attribute_is_named():
    class NoLogs(trl.GRPOTrainer):
        def __init__(self):
            self._metrics = self._step = self._tokenizer = None

    found = trl_surface.problems(NoLogs)
    assert found == ["attribute _logs: no longer set in NoLogs.__init__"]


def test_check_raises_with_the_list(monkeypatch):
    monkeypatch.setattr(trl_surface, "problems", lambda: ["hook _generate: not a method of GRPOTrainer"])
    trl_surface.check.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=r"changed \(prpo/training/trl_surface.py\):\n- hook _generate"):
            trl_surface.check()
    finally:
        trl_surface.check.cache_clear()
