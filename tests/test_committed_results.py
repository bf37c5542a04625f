"""Every results folder committed under docs/ rebuilds its committed summary from its committed raw files.

Benchmark folders and the demo's seed folders (docs/quickstart-runs/, `prpo.training.seed_summary`).

A folder is one that holds a ``bench.json``. Either its raw runs are committed beside it and
``prpo bench --summary-only`` on a copy gives back ``summary.json`` number for number, from runs that
name one clean commit; or it says that its raw files are lost (`LOST_MARKER`) and holds no runs at
all. A doc can then never again cite raw files that are not there.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from prpo.bench.summary import code_provenance
from prpo.commands.bench import main as bench_main
from prpo.training.seed_summary import SUMMARY_FILE as SEED_SUMMARY
from prpo.training.seed_summary import summarize

DOCS = Path(__file__).resolve().parents[1] / "docs"
LOST_MARKER = "RAW_FILES_LOST.md"
FOLDERS = sorted(path.parent for path in DOCS.rglob("bench.json"))


def same_numbers(rebuilt, committed, where: str = "summary.json") -> None:
    """Equal structure and equal values; floats to 1e-12 relative (NaN equals NaN)."""
    if isinstance(committed, dict):
        assert isinstance(rebuilt, dict) and rebuilt.keys() == committed.keys(), f"{where}: keys differ"
        for key in committed:
            same_numbers(rebuilt[key], committed[key], f"{where}.{key}")
    elif isinstance(committed, list):
        assert isinstance(rebuilt, list) and len(rebuilt) == len(committed), f"{where}: lengths differ"
        for index, (a, b) in enumerate(zip(rebuilt, committed)):
            same_numbers(a, b, f"{where}[{index}]")
    elif isinstance(committed, float) and not isinstance(committed, bool):
        assert isinstance(rebuilt, (int, float)), f"{where}: {rebuilt!r} is not a number"
        assert (math.isnan(committed) and math.isnan(rebuilt)) or math.isclose(
            rebuilt, committed, rel_tol=1e-12, abs_tol=1e-15), f"{where}: {rebuilt!r} != {committed!r}"
    else:
        assert rebuilt == committed, f"{where}: {rebuilt!r} != {committed!r}"


def test_same_numbers_tells_a_changed_number_and_accepts_nan():
    same_numbers({"a": [1, 0.1 + 0.2, float("nan")]}, {"a": [1, 0.3, float("nan")]})
    with pytest.raises(AssertionError, match=r"summary.json.a\[1\]"):
        same_numbers({"a": [1, 0.31]}, {"a": [1, 0.3]})
    with pytest.raises(AssertionError, match="keys differ"):
        same_numbers({"b": 1}, {"a": 1})


def test_docs_hold_results_folders():
    assert len(FOLDERS) >= 2, "docs/ should hold the committed benchmark results"


@pytest.mark.parametrize("folder", FOLDERS, ids=[str(path.relative_to(DOCS)) for path in FOLDERS])
def test_committed_summary_rebuilds_from_committed_raw_files(folder: Path, tmp_path: Path):
    runs = sorted((folder / "runs").glob("*/*/*/seed-*/eval.jsonl"))
    if (folder / LOST_MARKER).exists():
        assert not runs, f"{folder} says its raw files are lost but holds runs: remove {LOST_MARKER}"
        assert "summary only" in (folder / LOST_MARKER).read_text()
        return
    assert runs, f"{folder}: bench.json but no raw runs under runs/ and no {LOST_MARKER}"
    assert (folder / "summary.json").exists(), f"{folder}: no committed summary.json"
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    (copy / "summary.json").unlink()
    assert bench_main(["--summary-only", "--output", str(copy)]) == 0
    same_numbers(json.loads((copy / "summary.json").read_text()), json.loads((folder / "summary.json").read_text()))
    line, warnings = code_provenance(copy)
    assert line.startswith("code: commit ") and not warnings, f"{folder}: {line}; {warnings}"


SEED_FOLDERS = sorted(path.parent for path in (DOCS / "quickstart-runs").rglob(SEED_SUMMARY)
                      if not any(part.startswith("seed-") for part in path.parts))  # not a run's eval summary


@pytest.mark.parametrize("folder", SEED_FOLDERS, ids=[str(path.relative_to(DOCS)) for path in SEED_FOLDERS])
def test_committed_seed_summary_rebuilds_from_committed_run_files(folder: Path):
    """The demo's seeds (`prpo.training.seed_summary`): every per-seed number and the choice, from the records."""
    same_numbers(summarize(folder), json.loads((folder / SEED_SUMMARY).read_text()), f"{folder.name}/{SEED_SUMMARY}")
    for run in folder.rglob("seed-*"):
        entries = json.loads((run / "provenance.json").read_text())
        assert entries and all(e["commit"] and not e["dirty"] and e["finished"] for e in entries), run
