"""``qlora-studio train`` and ``chat`` as a user runs them: real subprocesses, real exit codes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from engine_helpers import HANG_GUARD_S, tiny_recipe  # noqa: E402

from studio.core.bundle import read_bundle  # noqa: E402
from studio.core.engine.checkpoints import checkpoints_dir, list_checkpoints  # noqa: E402
from studio.core.recipe import save_recipe  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict:
    env = dict(os.environ)
    env.pop("QLORA_STUDIO_FAKE_GPUS", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["HF_HUB_OFFLINE"] = "1"
    return env


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "studio", *args],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=HANG_GUARD_S,
        **kwargs,
    )


def _recipe_file(tmp_path, model_dir, **changes) -> Path:
    return save_recipe(tiny_recipe(tmp_path, model_dir, **changes), tmp_path / "recipe.toml")


def test_train_succeeds_and_chat_compares(tiny_models, tmp_path):
    recipe = _recipe_file(tmp_path, tiny_models["llama"], training={"max_steps": 6})
    done = cli("train", str(recipe))
    assert done.returncode == 0, done.stderr
    bundle = Path(done.stdout.strip().splitlines()[-1])
    assert bundle == tmp_path / "bundle"
    assert read_bundle(bundle).steps == 6
    assert "[training]" in done.stderr and "6/6" in done.stderr and "Done: 6 steps" in done.stderr

    chat = cli(
        "chat", str(bundle), "--prompt", "Say hello number 1.", "--compare", "--max-new-tokens", "6"
    )
    assert chat.returncode == 0, chat.stderr
    assert "with adapter (bundle)" in chat.stdout
    assert "base model (adapter disabled)" in chat.stdout

    again = cli("train", str(recipe))
    assert again.returncode == 2
    assert "already exists" in again.stderr and "--overwrite" in again.stderr


def test_malformed_dataset_exits_2_naming_the_line(tiny_models, tmp_path):
    data = tmp_path / "broken.jsonl"
    good = '{"instruction": "Hi", "input": "", "output": "Hello"}'
    data.write_text(f"{good}\n{good}\n{good}\nnot json at all\n")
    recipe = _recipe_file(tmp_path, tiny_models["llama"], dataset={"path": str(data)})
    done = cli("train", str(recipe))
    assert done.returncode == 2, done.stderr
    assert "line 4" in done.stderr and "broken.jsonl" in done.stderr
    assert "Traceback" not in done.stderr


def test_notes_on_settings_without_effect_come_first(tiny_models, tmp_path):
    recipe = _recipe_file(
        tmp_path,
        tiny_models["llama"],
        training={"epochs": 3.0, "lr_scheduler": "constant", "warmup_steps": 2},
        dataset={"path": str(tmp_path / "missing.jsonl")},  # stops the job early
    )
    done = cli("train", str(recipe))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    notes = [i for i, line in enumerate(lines) if line.startswith("note: ")]
    assert len(notes) == 2 and notes == [0, 1], done.stderr
    assert "training.epochs = 3.0 has no effect" in lines[0]
    assert "training.warmup_steps = 2 has no effect" in lines[1]


def test_bad_recipe_exits_2_without_starting(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("schema_version = 1\n[training]\nbatch_sise = 4\n")
    done = cli("train", str(recipe))
    assert done.returncode == 2
    assert "training.batch_sise" in done.stderr and "unknown key" in done.stderr
    bundle = cli("chat", str(tmp_path), "--prompt", "hi")
    assert bundle.returncode == 2 and "manifest.json is missing" in bundle.stderr


def test_ctrl_c_stops_with_a_checkpoint_and_resume_finishes(tiny_models, tmp_path):
    recipe = _recipe_file(
        tmp_path,
        tiny_models["llama"],
        training={"max_steps": 400, "save_steps": 1000, "eval_steps": 1000},
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "studio", "train", str(recipe)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=REPO,
    )
    # Wait for training to be under way: the step bar shows up on stderr.
    seen = ""
    deadline = time.monotonic() + HANG_GUARD_S
    # (any step past 0: the bar refreshes every few steps, so a given count may never show)
    while "training:" not in seen or not re.search(r"\b[1-9]\d*/400", seen):
        assert time.monotonic() < deadline and process.poll() is None, seen
        seen += os.read(process.stderr.fileno(), 4096).decode(errors="replace")
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=HANG_GUARD_S)
    assert process.returncode == 130, seen + err
    assert "checkpoint kept" in err and "--resume" in err
    checkpoints = list_checkpoints(checkpoints_dir(tmp_path / "bundle"))
    assert checkpoints, err
    stopped_at = checkpoints[-1][0]
    assert 1 <= stopped_at < 400
    assert not (tmp_path / "bundle").exists()

    # Finish from the checkpoint with fewer steps in all, so the test stays short.
    text = recipe.read_text().replace("max_steps = 400", f"max_steps = {stopped_at + 3}")
    recipe.write_text(text)
    done = cli("train", str(recipe), "--resume")
    assert done.returncode == 0, done.stderr
    assert "Resuming from" in done.stderr
    info = read_bundle(tmp_path / "bundle")
    assert info.steps == stopped_at + 3
    assert [m["step"] for m in info.metrics if m["type"] == "StepLogged"] == list(
        range(1, stopped_at + 4)
    )


@pytest.mark.parametrize("flag", ["--help"])
def test_train_help_does_not_import_torch(flag):
    done = cli("train", flag)
    assert done.returncode == 0 and "--resume" in done.stdout and "--overwrite" in done.stdout
