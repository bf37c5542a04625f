"""The wheel, installed outside the repository, runs `prpo train --dry-run` on the configs it ships.

The wheel is built from this checkout without build isolation (offline), installed without its
dependencies into a fresh virtual environment in a temporary folder, and run from there; the
dependencies come from the test environment's site-packages through a path file, which does not
bring this checkout's editable install along.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding only the prpo wheel; returns its python."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(root / "dist"), str(REPO)], check=True, timeout=300)
    [wheel] = (root / "dist").glob("prpo-*.whl")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", "--target",
                    str(site), str(wheel)], check=True, timeout=300)
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _run(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    return subprocess.run([str(python), "-m", "prpo.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_installed_wheel_is_not_this_checkout(installed: Path, tmp_path: Path):
    out = subprocess.run([str(installed), "-c", "import prpo; print(prpo.__file__)"], cwd=tmp_path,
                         capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": ""})
    assert not out.stdout.strip().startswith(str(REPO)) and "site-packages" in out.stdout


def test_dry_run_of_the_quickstart_from_the_wheel(installed: Path, tmp_path: Path):
    done = _run(installed, "train", "--dry-run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "model_name_or_path: smollm2\n" in done.stdout and "method: prpo\n" in done.stdout
    assert "# task arithmetic: 200 problems" in done.stderr and "# policy: smollm2 (from " in done.stderr


def test_shipped_configs_by_name_from_the_wheel(installed: Path, tmp_path: Path):
    done = _run(installed, "train", "paper-qwen2.5-math-1.5b", "--dry-run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Qwen/Qwen2.5-Math-1.5B" in done.stdout
    help_text = _run(installed, "train", "--help", cwd=tmp_path).stdout
    assert "cpu-tiny, paper-qwen2.5-math-1.5b, quickstart" in help_text
