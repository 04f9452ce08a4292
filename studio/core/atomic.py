"""Atomic writes: a file or folder is either complete at its final path or absent.

Each writer fills a temporary sibling (same folder, so the final rename stays on one file
system) and renames it into place; a crash leaves at most a ``.tmp-*`` sibling behind. File and
folder siblings carry the writing process's PID (``.tmp-<name>-<pid>-<random>``), so
`clean_stale_siblings` can remove those whose writer is gone.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a flushed temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def temporary_sibling_dir(target: Path) -> Path:
    """A new empty folder beside ``target`` to fill before `replace_dir`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-{os.getpid()}-", dir=target.parent))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's live process
        return True
    return True


def clean_stale_siblings(target: Path, *, legacy: bool = False) -> list[Path]:
    """Remove ``.tmp-<name>-<pid>-*`` and ``.old-<name>-<pid>-*`` siblings of ``target`` whose
    process is gone (left by a writer killed mid-way); returns what was removed.

    With ``legacy`` (the caller holds a lock that keeps every other writer of ``target``
    away), siblings without a PID, from older releases, are removed too.
    """
    target = Path(target)
    name = re.escape(target.name)
    with_pid = re.compile(rf"^\.(?:tmp|old)-{name}-(\d+)-[A-Za-z0-9_]{{8}}$")
    without_pid = re.compile(rf"^\.(?:tmp|old)-{name}-[A-Za-z0-9_]{{8}}$")
    removed: list[Path] = []
    try:
        children = list(target.parent.iterdir())
    except OSError:
        return removed
    for child in children:
        match = with_pid.match(child.name)
        stale = (match is not None and not _pid_alive(int(match.group(1)))) or (
            legacy and match is None and without_pid.match(child.name) is not None
        )
        if not stale:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
        if not child.exists():
            removed.append(child)
    return removed


def replace_dir(filled: Path, target: Path, *, overwrite: bool) -> Path:
    """Move the complete folder ``filled`` to ``target``.

    An existing ``target`` is kept unless ``overwrite``; then it is first renamed aside and
    removed only after the new folder is in place, so there is never a moment with neither.
    Raises `FileExistsError` when ``target`` exists and ``overwrite`` is false.
    """
    filled, target = Path(filled), Path(target)
    if not target.exists():
        os.replace(filled, target)
        return target
    if not overwrite:
        raise FileExistsError(f"{target} already exists; choose another folder or overwrite it")
    old = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-{os.getpid()}-", dir=target.parent))
    os.replace(target, old / "previous")
    try:
        os.replace(filled, target)
    except BaseException:
        os.replace(old / "previous", target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return target
