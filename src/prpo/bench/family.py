"""Task families: the plug-in point of `prpo bench --family MODULE:NAME`.

A family is any object with these members (see `TaskFamily`; `prpo.bench.arithmetic_family.ARITHMETIC` is one):

- ``name``: a short name for the results;
- ``levels``: difficulty levels, easiest first (`Level`: a name, the steps per problem, the token budget);
- ``task(split, n, level, seed)``: a `prpo.tasks.Task` of ``n`` distinct problems of ``split``
  (``"train"`` or ``"test"``, never sharing a problem), each ``Example.meta["solution"]`` the reference
  solution, one step per line, ending with an ``Answer: X`` line;
- ``warm_solution(example, rng)``: a solution of ``example`` carrying the family's systematic errors,
  for the supervised warm start (later lines carry on from a wrong value, so its answer is wrong too);
- ``evidence(problem, text, final)``: the step checker the benchmark PRM uses on a response prefix
  ``text``: ``(wrong, right)``, whether some step so far is wrong, and how many steps so far are
  checkably right. ``final``: ``text`` is the whole response (a step touching the end of a non-final
  prefix may still go on). A missing answer line is the PRM's business, not the checker's.

A researcher's own structured task is one ``.py`` file holding such an object:
``prpo bench --family path/to/my_family.py:FAMILY``. The PRM on a family's checker is
`prpo.bench.prm.FamilyPRM`, the PRM type ``bench_family``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from prpo.tasks import Example, Task


@dataclass(frozen=True)
class Level:
    """One difficulty level: problems of ``steps`` (low, high) steps, responses of at most ``max_completion_length`` tokens."""

    name: str
    steps: tuple[int, int]
    max_completion_length: int


@runtime_checkable
class TaskFamily(Protocol):
    """Problems with reference step solutions, warm-start solutions with systematic errors, and a step checker."""

    name: str
    levels: Sequence[Level]

    def task(self, split: str, n: int, level: Level, seed: int) -> Task: ...

    def warm_solution(self, example: Example, rng: random.Random) -> str: ...

    def evidence(self, problem: str, text: str, final: bool) -> tuple[bool, int]: ...


def load_family(spec: str) -> TaskFamily:
    """The family named by ``MODULE:NAME`` (an importable module) or ``path/to/file.py:NAME``."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--family {spec!r}: expected MODULE:NAME or path/to/file.py:NAME")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise ValueError(f"--family {spec!r}: no file {path}")
        name = f"prpo_bench_family_{hashlib.blake2b(str(path.resolve()).encode(), digest_size=6).hexdigest()}"
        module = sys.modules.get(name)
        if module is None:
            loader = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(loader)
            sys.modules[name] = module
            loader.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    family = getattr(module, attr, None)
    if family is None:
        raise ValueError(f"--family {spec!r}: {module_name} has no attribute {attr!r}")
    missing = [m for m in ("name", "levels", "task", "warm_solution", "evidence") if not hasattr(family, m)]
    if missing:
        raise ValueError(f"--family {spec!r}: {attr} lacks {', '.join(missing)} (see prpo.bench.family.TaskFamily)")
    if not family.levels:
        raise ValueError(f"--family {spec!r}: {attr}.levels is empty; give at least one Level")
    return family


def level_named(family: TaskFamily, name: str) -> Level:
    """The family's level called ``name``; the error lists the known ones."""
    for level in family.levels:
        if level.name == name:
            return level
    raise ValueError(f"family {family.name!r} has no level {name!r}; levels: {', '.join(l.name for l in family.levels)}")
