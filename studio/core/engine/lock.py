"""One run per output folder: a lock file beside it, held for the run's whole life.

The lock is ``<output.dir>.lock``, a small JSON file ``{pid, started, host, command}``. The
engine process takes it before it looks at the output folder and releases it on every exit
path; the CLI and the window call `check_unlocked` before they spawn an engine, so a second
run is refused at once (both raise `OutputLockedError`, which front ends count as bad input).

Taking it is atomic: the new file is written and ``flock``-ed under a temporary name, then
``os.link``-ed to the lock's name, which fails when the name exists (the same guarantee as
``O_CREAT | O_EXCL``, and the file is never seen half written or unlocked). The holder keeps
the file open with an exclusive ``flock``, which the kernel drops when the process dies
however it dies (``kill -9`` too); so a lock file that nobody holds ``flock`` on belongs to a
dead run and is taken over. File systems without ``flock`` fall back to checking whether the
recorded PID is alive on this host.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import socket
import sys
from pathlib import Path

from studio.core.engine.errors import OutputLockedError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: only the PID check
    fcntl = None


def lock_path(output_dir: str | Path) -> Path:
    """The lock file of a run writing to ``output_dir``: ``<output.dir>.lock``."""
    output_dir = Path(output_dir)
    return output_dir.with_name(output_dir.name + ".lock")


def pid_alive(pid: int) -> bool:
    """True when a process with this PID exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return False
    return True


def read_lock(path: str | Path) -> dict:
    """The holder recorded in a lock file ({} when it cannot be read)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_holder(holder: dict) -> str:
    """``process 1234 (qlora-studio train r.toml) on host, started 2026-12-01 21:50:03 UTC``."""
    pid = holder.get("pid", "?")
    command = holder.get("command")
    host = holder.get("host")
    started = holder.get("started")
    text = f"process {pid}"
    if command:
        text += f" ({command})"
    if host and host != socket.gethostname():
        text += f" on {host}"
    if started:
        text += f", started {started}"
    return text


def _locked_message(output_dir: Path, path: Path, holder: dict) -> str:
    return (
        f"output.dir {output_dir} is in use by another run: {describe_holder(holder)}. Wait "
        "for it to finish or stop it, or choose another [output] dir. (Lock file: "
        f"{path}; it is taken over automatically once that process has ended.)"
    )


def _try_flock(fd: int) -> bool | None:
    """True: we now hold the exclusive flock; False: someone else does; None: no flock here."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        return None  # ENOLCK, EOPNOTSUPP: this file system has no flock
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _holder_alive(holder: dict) -> bool:
    """Without flock: the recorded process is alive (a lock from another host counts as held)."""
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    if holder.get("host") not in (None, socket.gethostname()):
        return True
    return pid_alive(pid)


class OutputLock:
    """The lock on one output folder, held by this process until `release`."""

    def __init__(self, output_dir: str | Path, path: Path, fd: int, took_over: dict | None):
        self.output_dir = Path(output_dir)
        self.path = path
        self._fd: int | None = fd
        self.took_over = took_over  # the dead holder's record when the lock was stale

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file and let go of it; safe to call more than once."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            if _same_file(fd, self.path):
                self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(fd)

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _command_line() -> str:
    argv = [os.path.basename(sys.argv[0] or "python")] + sys.argv[1:]
    return " ".join(argv)[:300]


def acquire(output_dir: str | Path, *, command: str | None = None) -> OutputLock:
    """Take the lock on ``output_dir`` for this process.

    Raises `OutputLockedError` naming the holder when a live run holds it; takes over a lock
    whose holder is gone (then ``OutputLock.took_over`` is the dead holder's record). Raises
    OSError when the lock file cannot be written (a read-only or full file system).
    """
    output_dir = Path(output_dir)
    path = lock_path(output_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "pid": os.getpid(),
        "started": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "host": socket.gethostname(),
        "command": command or _command_line(),
    }
    took_over: dict | None = None
    for _attempt in range(50):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _try_flock(fd)
            try:
                os.write(fd, (json.dumps(record) + "\n").encode("utf-8"))
                os.fsync(fd)
            except OSError as exc:  # name the file: a full disk says nothing else
                os.close(fd)
                raise OSError(exc.errno, exc.strerror, str(path)) from exc
            try:
                os.link(tmp, path)  # atomic; fails when a lock file exists
            except FileExistsError:
                pass
            else:
                return OutputLock(output_dir, path, fd, took_over)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        os.close(fd)
        # A lock file exists: is its holder alive?
        try:
            other = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue  # released meanwhile: try again
        try:
            got = _try_flock(other)
            holder = read_lock(path)
            if got is False or (got is None and _holder_alive(holder)):
                raise OutputLockedError(_locked_message(output_dir, path, holder))
            if not _same_file(other, path):
                continue  # replaced meanwhile: look again
            # Stale: its holder died without releasing it. Remove it while we hold its flock,
            # so nobody else can take it over at the same moment, then take it ourselves.
            took_over = holder or took_over
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        finally:
            os.close(other)
    raise OutputLockedError(
        f"output.dir {output_dir}: could not take the lock {path} (it kept changing); "
        "another run is starting on the same folder. Try again."
    )


def check_unlocked(output_dir: str | Path) -> None:
    """Raise `OutputLockedError` when a live run holds ``output_dir``'s lock; takes nothing.

    A front end calls this before it spawns an engine, so a second run is refused at once; the
    engine still takes the lock itself (see `acquire`).
    """
    output_dir = Path(output_dir)
    path = lock_path(output_dir)
    if not path.exists():
        return
    holder = read_lock(path)
    pid = holder.get("pid")
    if not isinstance(pid, int):
        # Being written or damaged: ask the kernel whether anybody holds it.
        held = _probe_flock(path)
        if held:
            raise OutputLockedError(_locked_message(output_dir, path, holder))
        return
    if holder.get("host") not in (None, socket.gethostname()):
        raise OutputLockedError(_locked_message(output_dir, path, holder))
    if not pid_alive(pid):
        return  # stale: the engine takes it over
    if _probe_flock(path) is False:
        return  # the PID was reused by an unrelated process: nobody holds the lock
    raise OutputLockedError(_locked_message(output_dir, path, holder))


def _probe_flock(path: Path) -> bool | None:
    """True when someone holds the flock on ``path``; False when nobody; None when unknown."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return None
        return False
    finally:
        os.close(fd)  # closing drops the probe's shared lock
