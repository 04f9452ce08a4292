"""The command line starts light: ``--version`` and ``--help`` answer without importing torch
(or Qt), through both ``python -m studio`` and the installed ``qlora-studio`` script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from studio import __version__

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "PySide6", "pyqtgraph")


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``args`` with Python's import trace on (``PYTHONPROFILEIMPORTTIME``) from the repo."""
    return subprocess.run(
        args,
        cwd=REPO,
        env={**os.environ, **(env or {}), "PYTHONPROFILEIMPORTTIME": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def imported_modules(stderr: str) -> set[str]:
    """Top-level packages named in a ``-X importtime`` trace."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            names.add(name.partition(".")[0])
    return names


def assert_light(done: subprocess.CompletedProcess) -> None:
    seen = imported_modules(done.stderr)
    assert "studio" in seen, "no import trace: PYTHONPROFILEIMPORTTIME had no effect"
    assert not seen & set(HEAVY), f"imported {sorted(seen & set(HEAVY))}"


def test_python_m_studio_version():
    done = run_cli(sys.executable, "-m", "studio", "--version")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"qlora-studio {__version__}"
    assert_light(done)


def _script(name: str) -> Path:
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(f"{path} is missing: install the project (bash scripts/setup.sh --dev)")
    return path


def test_qlora_studio_help_lists_the_commands():
    done = run_cli(str(_script("qlora-studio")), "--help")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("usage: qlora-studio")
    for command in ("gui", "gpus", "estimate", "train", "chat"):
        assert command in done.stdout
    assert_light(done)


def test_qlora_studio_version_and_gpus_help():
    done = run_cli(str(_script("qlora-studio")), "--version")
    assert done.returncode == 0 and done.stdout.strip() == f"qlora-studio {__version__}"
    done = run_cli(sys.executable, "-m", "studio", "gpus", "--help")
    assert done.returncode == 0 and "--json" in done.stdout
    assert_light(done)


def test_unknown_command_is_bad_input():
    done = run_cli(sys.executable, "-m", "studio", "frobnicate")
    assert done.returncode == 2
    assert "frobnicate" in done.stderr
