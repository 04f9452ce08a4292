"""Shared fixtures: tiny random models (see tiny_models.py) and isolated caches."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny_models import make_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """One folder per tiny model kind, built once per test session."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {kind: make_tiny_model(root / kind, kind) for kind in ("llama", "qwen2", "gpt2")}


@pytest.fixture(autouse=True)
def _no_fake_gpus(monkeypatch):
    """Tests see no simulated GPUs unless they set QLORA_STUDIO_FAKE_GPUS themselves."""
    monkeypatch.delenv("QLORA_STUDIO_FAKE_GPUS", raising=False)


@pytest.fixture(scope="session", autouse=True)
def _session_runs_root(tmp_path_factory):
    """Runs trained by module- or session-scoped fixtures are recorded here, not in ~."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QLORA_STUDIO_RUNS_ROOT", str(tmp_path_factory.mktemp("runs-root")))
        yield


@pytest.fixture(autouse=True)
def isolated_runs_root(tmp_path, monkeypatch):
    """The run library (studio.core.runs) of each test is its own, never ~/qlora-studio."""
    folder = tmp_path / "runs-root"
    monkeypatch.setenv("QLORA_STUDIO_RUNS_ROOT", str(folder))
    return folder
