"""Faults injected for real: a second run on the same output, kill -9 during training and
during the save, damaged checkpoints, a full or read-only disk. Each ends with a message
that says what happened and what to do (exit 2 or 3), never a traceback, and no lost or
mixed work: the next run resumes from the newest intact checkpoint."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from engine_helpers import HANG_GUARD_S, collect, tiny_recipe  # noqa: E402

from studio.core.bundle import read_bundle  # noqa: E402
from studio.core.engine import EngineRunner  # noqa: E402
from studio.core.engine.checkpoints import checkpoints_dir, list_checkpoints  # noqa: E402
from studio.core.engine.errors import is_bad_input  # noqa: E402
from studio.core.engine.lock import lock_path, read_lock  # noqa: E402
from studio.core.engine.output import inspect_output  # noqa: E402
from studio.core.events import CheckpointSaved, Failed, PhaseChanged  # noqa: E402
from studio.core.recipe import save_recipe  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env.pop("QLORA_STUDIO_FAKE_GPUS", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["HF_HUB_OFFLINE"] = "1"
    env["QLORA_STUDIO_CACHE"] = str(tmp_path / "cache")
    return env


def cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "studio", *args],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        cwd=REPO,
        timeout=HANG_GUARD_S,
    )


def popen(tmp_path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "studio", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(tmp_path),
        cwd=REPO,
    )


def wait_for(condition, what: str, guard_s: float = HANG_GUARD_S):
    deadline = time.monotonic() + guard_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def step_rows(bundle: Path) -> list[int]:
    return [m["step"] for m in read_bundle(bundle).metrics if m["type"] == "StepLogged"]


def no_traceback(text: str) -> None:
    assert "Traceback" not in text and 'File "' not in text, text


# ----------------------------------------------------------------------- 9: one run per output


@pytest.mark.slow
def test_second_run_on_one_output_is_refused_and_a_killed_run_is_taken_over(tiny_models, tmp_path):
    recipe = tiny_recipe(
        tmp_path,
        tiny_models["llama"],
        training={"max_steps": 400, "save_steps": 2, "eval_steps": 1000},
    )
    recipe_file = save_recipe(recipe, tmp_path / "recipe.toml")
    output = Path(recipe.output.dir)
    first = popen(tmp_path, "train", str(recipe_file))
    try:
        holder = wait_for(lambda: read_lock(lock_path(output)).get("pid"), "the engine's lock")
        assert holder != first.pid  # the engine process holds it, not the CLI

        # A second CLI run is refused at once, naming the holder.
        second = cli(tmp_path, "train", str(recipe_file), "--resume")
        assert second.returncode == 2, second.stderr
        assert f"process {holder}" in second.stderr and "started" in second.stderr
        no_traceback(second.stderr)

        # The window's way (an engine started without the CLI's check) is refused by the
        # engine itself, as bad input.
        runner = EngineRunner(recipe, resume=True)
        runner.start()
        terminal = collect(runner)[-1]
        assert isinstance(terminal, Failed) and is_bad_input(terminal), terminal
        assert terminal.error_type == "OutputLockedError" and f"process {holder}" in (
            terminal.message
        )

        # kill -9 the engine once a checkpoint exists: the lock file stays behind.
        wait_for(lambda: list_checkpoints(checkpoints_dir(output)), "a checkpoint")
        os.kill(holder, signal.SIGKILL)
        _, err = first.communicate(timeout=HANG_GUARD_S)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 3, err
    no_traceback(err)
    assert read_lock(lock_path(output)).get("pid") == holder

    # The next run takes the stale lock over and finishes from the checkpoint.
    stopped_at = list_checkpoints(checkpoints_dir(output))[-1][0]
    text = recipe_file.read_text().replace("max_steps = 400", f"max_steps = {stopped_at + 2}")
    recipe_file.write_text(text)
    done = cli(tmp_path, "train", str(recipe_file), "--resume")
    assert done.returncode == 0, done.stderr
    assert f"Took over the lock {lock_path(output)}" in done.stderr
    assert f"process {holder}" in done.stderr
    assert not lock_path(output).exists()
    assert step_rows(output) == list(range(1, stopped_at + 3))


# ------------------------------------------------------- 7: kill -9 during the save, tmp folders


@pytest.mark.slow
def test_kill_during_the_save_resumes_without_an_extra_step(tiny_models, tmp_path):
    recipe = tiny_recipe(
        tmp_path,
        tiny_models["llama"],
        training={"max_steps": 3, "save_steps": 1, "eval_steps": 1000},
    )
    output = Path(recipe.output.dir)
    runner = EngineRunner(recipe)
    runner.start()
    events = collect(runner, until=lambda e: isinstance(e, PhaseChanged) and e.phase == "saving")
    runner.kill()
    runner.join()
    assert events[-1].phase == "saving"
    assert not output.exists()
    assert inspect_output(output).latest_checkpoint[0] == 3

    # A writer of the bundle killed (-9) mid-way leaves its temporary folder behind, and one
    # killed while it rewrote the status file leaves that file's temporary.
    code = (
        "import os, sys, tempfile; from pathlib import Path; "
        "from studio.core.atomic import temporary_sibling_dir; "
        "from studio.core.runs import status_path; "
        "d = temporary_sibling_dir(Path(sys.argv[1])); (d / 'adapter_model.safetensors')"
        ".write_bytes(b'half'); s = status_path(Path(sys.argv[1])); "
        "f = tempfile.mkstemp(prefix=f'.tmp-{s.name}-{os.getpid()}-', dir=s.parent)[1]; "
        "print(d, f, flush=True); os.kill(os.getpid(), 9)"
    )
    killed = subprocess.run(
        [sys.executable, "-c", code, str(output)],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
    )
    assert killed.returncode == -9
    leftover, status_leftover = map(Path, killed.stdout.split())
    assert leftover.is_dir() and leftover.name.startswith(".tmp-bundle-")
    assert status_leftover.is_file() and status_leftover.name.startswith(".tmp-bundle.run.json-")

    recipe_file = save_recipe(recipe, tmp_path / "recipe.toml")
    done = cli(tmp_path, "train", str(recipe_file), "--resume")
    assert done.returncode == 0, done.stderr
    assert "Done: 3 steps" in done.stderr
    assert step_rows(output) == [1, 2, 3]
    assert read_bundle(output).steps == 3
    assert not leftover.exists() and f"Removed {leftover}" in done.stderr
    assert not status_leftover.exists() and f"Removed {status_leftover}" in done.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".old-"))]


# ------------------------------------------------------------ 8: a damaged newest checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["adapter", "trainer_state"])
def test_damaged_newest_checkpoint_is_skipped_and_resume_says_so(tiny_models, tmp_path, damage):
    recipe = tiny_recipe(
        tmp_path,
        tiny_models["llama"],
        training={"max_steps": 6, "save_steps": 2, "eval_steps": 1000},
    )
    output = Path(recipe.output.dir)
    runner = EngineRunner(recipe)
    runner.start()
    collect(runner, until=lambda e: isinstance(e, CheckpointSaved) and e.step == 4)
    runner.kill()
    runner.join()
    newest = checkpoints_dir(output) / "checkpoint-4"
    assert [s for s, _ in list_checkpoints(checkpoints_dir(output))] == [2, 4]

    name = "adapter_model.safetensors" if damage == "adapter" else "trainer_state.json"
    with open(newest / name, "r+b") as handle:
        handle.truncate(handle.seek(0, 2) // 2)
    assert [s for s, _ in list_checkpoints(checkpoints_dir(output))] == [2]
    assert inspect_output(output).latest_checkpoint[0] == 2

    recipe_file = save_recipe(recipe, tmp_path / "recipe.toml")
    done = cli(tmp_path, "train", str(recipe_file), "--resume")
    assert done.returncode == 0, done.stderr
    no_traceback(done.stderr)
    assert f"{newest} is damaged ({name} is" in done.stderr
    assert "resuming from checkpoint-2 (step 2), the newest intact one" in done.stderr
    assert step_rows(output) == [1, 2, 3, 4, 5, 6]


# ---------------------------------------------------------------- 6: a full or read-only disk


@contextlib.contextmanager
def tmpfs(folder: Path, size: str):
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path) -> Path:
    """Write a file until the file system is full; returns it."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 20, 64 << 10, 4 << 10, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def _log_named(stderr: str) -> Path:
    marker = "The details (traceback) are in "
    assert marker in stderr, stderr
    return Path(stderr.split(marker, 1)[1].split("\n", 1)[0].rstrip("."))


@pytest.mark.slow
def test_disk_full_during_training_names_the_folder_and_keeps_the_checkpoint(tiny_models, tmp_path):
    with tmpfs(tmp_path / "disk", "64m") as disk:
        recipe = tiny_recipe(
            tmp_path,
            tiny_models["llama"],
            training={"max_steps": 60, "save_steps": 2, "eval_steps": 1000},
            output={"dir": str(disk / "bundle")},
        )
        output = Path(recipe.output.dir)
        recipe_file = save_recipe(recipe, tmp_path / "recipe.toml")
        run = popen(tmp_path, "train", str(recipe_file))
        try:
            wait_for(lambda: list_checkpoints(checkpoints_dir(output)), "the first checkpoint")
            filler = fill(disk)
            _, err = run.communicate(timeout=HANG_GUARD_S)
        finally:
            if run.poll() is None:
                run.kill()
                run.communicate()
        assert run.returncode == 3, err
        no_traceback(err)
        assert "the disk is full (ENOSPC)" in err
        assert str(checkpoints_dir(output)) in err
        kept = list_checkpoints(checkpoints_dir(output))
        assert kept and f"The checkpoint {kept[-1][1]} is kept" in err
        assert "Traceback" in _log_named(err).read_text()
        assert not lock_path(output).exists()

        filler.unlink()  # space again: the kept checkpoint resumes
        text = recipe_file.read_text().replace("max_steps = 60", f"max_steps = {kept[-1][0] + 1}")
        recipe_file.write_text(text)
        done = cli(tmp_path, "train", str(recipe_file), "--resume")
        assert done.returncode == 0, done.stderr
        assert read_bundle(output).steps == kept[-1][0] + 1


@pytest.mark.slow
def test_disk_full_while_writing_the_bundle(tiny_models, tmp_path):
    with tmpfs(tmp_path / "disk", "64m") as disk:
        recipe = tiny_recipe(
            tmp_path,
            tiny_models["llama"],
            training={"max_steps": 2, "save_steps": 2, "eval_steps": 1000},
            output={"dir": str(disk / "bundle")},
        )
        output = Path(recipe.output.dir)
        runner = EngineRunner(recipe)
        runner.start()
        last = collect(runner, until=lambda e: isinstance(e, PhaseChanged) and e.phase == "saving")[
            -1
        ]
        runner.kill()
        runner.join()
        assert isinstance(last, PhaseChanged), last
        assert inspect_output(output).latest_checkpoint[0] == 2
        filler = fill(disk)
        with open(filler, "r+b") as handle:  # room for the lock and the logs, not the bundle
            handle.truncate(filler.stat().st_size - (64 << 10))
        recipe_file = save_recipe(recipe, tmp_path / "recipe.toml")
        done = cli(tmp_path, "train", str(recipe_file), "--resume")
        assert done.returncode == 3, done.stderr
        no_traceback(done.stderr)
        assert "while writing the bundle" in done.stderr or "saving" in done.stderr
        assert "the disk is full (ENOSPC)" in done.stderr and str(disk) in done.stderr
        assert "checkpoint-2 is kept" in done.stderr
        assert not output.exists()
        assert [s for s, _ in list_checkpoints(checkpoints_dir(output))] == [2]


@pytest.mark.slow
def test_read_only_output_folder(tiny_models, tmp_path):
    with tmpfs(tmp_path / "ro", "1m") as disk:
        remount = subprocess.run(
            ["mount", "-o", "remount,ro", str(disk)], capture_output=True, text=True
        )
        if remount.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {remount.stderr.strip()}")
        recipe = tiny_recipe(
            tmp_path, tiny_models["llama"], output={"dir": str(disk / "runs" / "bundle")}
        )
        recipe_file = save_recipe(recipe, tmp_path / "recipe.toml")
        done = cli(tmp_path, "train", str(recipe_file))
        assert done.returncode == 3, done.stderr
        no_traceback(done.stderr)
        assert "read-only (EROFS)" in done.stderr and str(disk) in done.stderr


def test_torch_writer_on_a_full_disk_is_recognised(tmp_path):
    """torch.save on a full disk says only "[enforce fail at inline_container.cc] unexpected
    pos"; the message must still say the disk is full, and name the folder."""
    import errno

    import torch

    from studio.core.engine.errors import disk_cause, failure_from_exception

    with tmpfs(tmp_path / "small", "1m") as disk:
        try:
            torch.save({"w": torch.zeros(1 << 20)}, disk / "optimizer.pt")  # 4 MiB
        except Exception as exc:  # noqa: BLE001 - whatever torch raises is the subject
            caught = exc
        else:
            pytest.fail("torch.save wrote 4 MiB into a 1 MiB file system")
    # What the user saw before: "[enforce fail at inline_container.cc:672] . unexpected pos"
    # (torch words it so when its zip writer hits the full disk; an OSError when Python does).
    assert disk_cause(caught, [disk])[0] == errno.ENOSPC, repr(caught)
    failed = failure_from_exception(caught, "training", folders=[disk], kept="checkpoint-2")
    assert failed.error_type == "DiskWriteError"
    assert "the disk is full (ENOSPC)" in failed.message and str(disk) in failed.message
    assert "checkpoint-2 is kept" in failed.message


@pytest.mark.slow
def test_kill_while_a_checkpoint_is_being_written(tiny_models, tmp_path):
    """kill -9 the moment checkpoint-4's folder appears (mid-save, or just after): the
    resumed run ends with exactly the recipe's steps, from an intact checkpoint."""
    recipe = tiny_recipe(
        tmp_path,
        tiny_models["llama"],
        training={"max_steps": 6, "save_steps": 2, "eval_steps": 1000},
    )
    output = Path(recipe.output.dir)
    newest = checkpoints_dir(output) / "checkpoint-4"
    runner = EngineRunner(recipe)
    runner.start()
    deadline = time.monotonic() + HANG_GUARD_S
    while not newest.exists():
        assert runner.is_running and time.monotonic() < deadline
    runner.kill()
    runner.join()
    intact = [s for s, _ in list_checkpoints(checkpoints_dir(output))]
    assert intact in ([2], [2, 4]), intact

    recipe_file = save_recipe(recipe, tmp_path / "recipe.toml")
    done = cli(tmp_path, "train", str(recipe_file), "--resume")
    assert done.returncode == 0, done.stderr
    no_traceback(done.stderr)
    assert f"Resuming from {checkpoints_dir(output)}/checkpoint-{intact[-1]}" in done.stderr
    if intact == [2]:  # the kill landed inside the save
        assert "checkpoint-4 is damaged (it has no studio-checkpoint.json" in done.stderr
    assert step_rows(output) == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_chat_refuses_a_damaged_base_model_and_an_endless_reply(tiny_models, tmp_path):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_models["llama"], base)
    recipe = tiny_recipe(tmp_path, base, training={"max_steps": 2, "save_steps": 2})
    recipe_file = save_recipe(recipe, tmp_path / "recipe.toml")
    assert cli(tmp_path, "train", str(recipe_file)).returncode == 0
    bundle = recipe.output.dir

    endless = cli(tmp_path, "chat", bundle, "--prompt", "hi", "--max-new-tokens", "100000000")
    assert endless.returncode == 2, endless.stderr
    assert "more than the base model's context of 256 tokens" in endless.stderr

    weights = base / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size - 4096)
    damaged = cli(tmp_path, "chat", bundle, "--prompt", "hi")
    assert damaged.returncode == 2, damaged.stderr
    assert f"{weights} is not a complete safetensors file" in damaged.stderr
    no_traceback(damaged.stderr)
