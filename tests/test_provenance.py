"""Provenance written by the tools: commit and dirty flag from a real git checkout, the file's round trip."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from prpo.provenance import (PROVENANCE_FILE, code_version, describe, provenance, read_provenance, record_finish,
                             record_start)

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git checkout with a package folder ``pkg/`` and a ``docs/`` folder, one commit."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "pkg" / "code.py").write_text("x = 1\n")
    (tmp_path / "docs" / "notes.md").write_text("notes\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "first")
    return tmp_path


def test_clean_checkout_names_its_commit(repo: Path):
    assert code_version(repo / "pkg") == {"commit": _git(repo, "rev-parse", "HEAD"), "dirty": False}


def test_changed_or_new_code_is_dirty_and_files_elsewhere_are_not(repo: Path):
    (repo / "docs" / "notes.md").write_text("changed\n")
    (repo / "docs" / "results.jsonl").write_text("{}\n")
    assert code_version(repo / "pkg")["dirty"] is False
    (repo / "pkg" / "new.py").write_text("y = 2\n")
    assert code_version(repo / "pkg")["dirty"] is True
    (repo / "pkg" / "new.py").unlink()
    (repo / "pkg" / "code.py").write_text("x = 2\n")
    assert code_version(repo / "pkg")["dirty"] is True


def test_outside_git_there_is_no_commit(tmp_path: Path):
    assert code_version(tmp_path) == {"commit": None, "dirty": None}


def test_provenance_names_versions_threads_and_cores():
    entry = provenance()
    assert entry["versions"]["torch"] == torch.__version__
    assert entry["versions"]["transformers"] and entry["versions"]["trl"] and entry["versions"]["prpo"]
    assert entry["torch_threads"] == torch.get_num_threads()
    assert entry["cpu_count"] == os.cpu_count()
    if (Path(__file__).resolve().parents[1] / ".git").exists():  # this checkout: a 40-hex commit
        assert len(entry["commit"]) == 40 and int(entry["commit"], 16) >= 0


def test_each_invocation_is_one_entry_with_start_and_finish(tmp_path: Path):
    record_start(tmp_path)
    first = read_provenance(tmp_path)
    assert len(first) == 1 and first[0]["started"] and first[0]["finished"] is None
    record_finish(tmp_path)
    record_start(tmp_path)  # a resumed run keeps its earlier part
    entries = read_provenance(tmp_path)
    assert len(entries) == 2 and entries[0]["finished"] >= entries[0]["started"] and entries[1]["finished"] is None
    assert not list(tmp_path.glob("*.tmp"))


def test_finish_without_start_and_a_bad_file_are_errors_naming_the_file(tmp_path: Path):
    with pytest.raises(ValueError, match="no started entry"):
        record_finish(tmp_path)
    (tmp_path / PROVENANCE_FILE).write_text(json.dumps({"commit": "x"}))
    with pytest.raises(ValueError, match=PROVENANCE_FILE):
        read_provenance(tmp_path)


def test_describe_warns_on_several_commits_dirty_and_unrecorded():
    clean = {"commit": "a" * 40, "dirty": False}
    assert describe([clean, clean]) == ("code: commit aaaaaaaaaaaa", [])
    line, warnings = describe([clean, {"commit": "b" * 40, "dirty": True}, {"commit": None, "dirty": None}])
    assert line == "code: commit aaaaaaaaaaaa, bbbbbbbbbbbb"
    assert warnings == ["runs come from 2 different commits: aaaaaaaaaaaa, bbbbbbbbbbbb",
                        "1 of 3 invocations ran with uncommitted changes to the code",
                        "1 of 3 invocations record no commit"]
    assert describe([]) == ("code: no commit recorded", [])
