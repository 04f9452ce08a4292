"""One run per output folder: the lock beside it, tried by real second processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from studio.core.engine.errors import OutputLockedError
from studio.core.engine.lock import acquire, check_unlocked, lock_path, read_lock

REPO = Path(__file__).resolve().parents[2]

HOLD = """
import sys
from studio.core.engine.lock import acquire
from studio.core.engine.errors import OutputLockedError
try:
    lock = acquire(sys.argv[1], command="holder " + sys.argv[2])
except OutputLockedError:
    print("refused", flush=True)
else:
    print("held", flush=True)
sys.stdin.read()
"""


def _holder(output: Path, name: str = "a") -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", HOLD, str(output), name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_a_live_holder_refuses_others_and_a_killed_one_is_taken_over(tmp_path):
    output = tmp_path / "bundle"
    holder = _holder(output)
    try:
        assert holder.stdout.readline().strip() == "held"
        record = read_lock(lock_path(output))
        assert record["pid"] == holder.pid and record["command"] == "holder a"
        with pytest.raises(OutputLockedError, match=f"process {holder.pid} \\(holder a\\)"):
            acquire(output)
        with pytest.raises(OutputLockedError, match="started"):
            check_unlocked(output)
    finally:
        holder.kill()  # SIGKILL: no chance to release
        holder.wait()
    assert lock_path(output).exists()  # the dead holder's file stays behind
    check_unlocked(output)  # ... and no longer blocks anybody
    lock = acquire(output)
    assert lock.took_over["pid"] == holder.pid
    assert read_lock(lock_path(output))["pid"] == os.getpid()
    lock.release()
    assert not lock_path(output).exists()


def test_processes_racing_for_one_lock_get_it_once(tmp_path):
    output = tmp_path / "bundle"
    racers = [_holder(output, str(i)) for i in range(4)]
    try:
        answers = sorted(p.stdout.readline().strip() for p in racers)
    finally:
        for p in racers:
            p.kill()
            p.wait()
    assert answers == ["held", "refused", "refused", "refused"]


def test_stale_lock_race_after_a_kill(tmp_path):
    output = tmp_path / "bundle"
    first = _holder(output)
    assert first.stdout.readline().strip() == "held"
    first.kill()
    first.wait()
    racers = [_holder(output, str(i)) for i in range(3)]
    try:
        answers = sorted(p.stdout.readline().strip() for p in racers)
    finally:
        for p in racers:
            p.kill()
            p.wait()
    assert answers == ["held", "refused", "refused"]
