"""Provenance of a result: which code, libraries and machine wrote it, and when.

`prpo train` and `prpo bench` record `provenance()` in what they write (a run folder's
``provenance.json``, ``bench.json``), so a committed number names the commit that produced it.
``dirty`` is whether the ``prpo`` package's own files differ from that commit (tracked changes or
new files under its folder); files elsewhere in the checkout (docs, results) do not count.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

PROVENANCE_FILE = "provenance.json"
PACKAGE_DIR = Path(__file__).resolve().parent
LIBRARIES = ("prpo", "torch", "transformers", "trl", "accelerate", "peft")


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_version(folder: Path = PACKAGE_DIR) -> dict[str, Any]:
    """``{"commit", "dirty"}`` of the git checkout holding ``folder`` (default: the ``prpo`` package), dirty
    when a file under ``folder`` differs from the commit or is new; both None outside git (a wheel)."""
    commit = _git(folder, "rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git(folder, "status", "--porcelain", "--untracked-files=all", "--", ".")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def provenance() -> dict[str, Any]:
    """Commit and dirty flag, library versions, torch's thread count, the machine's cores, Python, host."""
    import torch

    return {**code_version(), "versions": {name: _version(name) for name in LIBRARIES},
            "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "host": platform.node()}


def record_start(folder: Path) -> dict[str, Any]:
    """Append this invocation (``provenance()`` and ``started``) to ``folder/provenance.json``; returns it.

    The file is a list, one entry per invocation: a resumed run keeps the entries of its earlier parts.
    """
    entry = {**provenance(), "started": now(), "finished": None}
    _write(folder, read_provenance(folder) + [entry])
    return entry


def record_finish(folder: Path) -> None:
    """Set ``finished`` on the last entry of ``folder/provenance.json``."""
    entries = read_provenance(folder)
    if not entries:
        raise ValueError(f"{folder / PROVENANCE_FILE}: no started entry to finish")
    entries[-1]["finished"] = now()
    _write(folder, entries)


def read_provenance(folder: Path) -> list[dict[str, Any]]:
    """The entries of ``folder/provenance.json`` (empty when there is none)."""
    path = folder / PROVENANCE_FILE
    if not path.exists():
        return []
    entries = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of invocations, got {type(entries).__name__}")
    return entries


def _write(folder: Path, entries: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_whole(folder / PROVENANCE_FILE, json.dumps(entries, indent=2) + "\n")


def write_whole(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it: a kill never leaves half a file."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def describe(entries: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """One line naming the commit(s) of ``entries``, and warnings: several commits, a dirty tree, no commit."""
    commits = sorted({str(entry.get("commit"))[:12] for entry in entries if entry.get("commit")})
    warnings = []
    if len(commits) > 1:
        warnings.append(f"runs come from {len(commits)} different commits: {', '.join(commits)}")
    dirty = sum(1 for entry in entries if entry.get("dirty"))
    if dirty:
        warnings.append(f"{dirty} of {len(entries)} invocations ran with uncommitted changes to the code")
    unknown = sum(1 for entry in entries if not entry.get("commit"))
    if unknown:
        warnings.append(f"{unknown} of {len(entries)} invocations record no commit")
    line = f"code: commit {', '.join(commits)}" if commits else "code: no commit recorded"
    return line, warnings
