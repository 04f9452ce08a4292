"""Atomic writes: a file or folder is either complete at its final path or absent.

Each writer fills a temporary sibling (same folder, so the final rename stays on one file
system) and renames it into place; a crash leaves at most a ``.tmp-*`` sibling behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a flushed temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
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
    return Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))


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
    old = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-", dir=target.parent))
    os.replace(target, old / "previous")
    try:
        os.replace(filled, target)
    except BaseException:
        os.replace(old / "previous", target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return target
