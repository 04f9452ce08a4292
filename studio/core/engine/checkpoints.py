"""Where a run keeps its Trainer checkpoints, and which of them can be resumed from.

Checkpoints live in ``<output.dir>.checkpoints/checkpoint-<step>/``. Once the Trainer has
written a checkpoint's files, the engine's `manifest_callback` (a ``TrainerCallback.on_save``)
writes ``studio-checkpoint.json`` into it, last and atomically: every other file with its size
and sha256. A checkpoint counts only when that manifest is there and every file it lists is
present with the same size and hash: a save cut short (a killed process, a full disk) has no
manifest, and a file truncated or changed later fails the check. `list_checkpoints` returns
only verified checkpoints; `scan_checkpoints` says why each other one was refused.

Front ends deciding which question to ask (resume or start over?) check with
``hashes=False``: the manifest and every file's size, without reading the files, so Start in
the window never spends seconds hashing an optimizer state on the GUI thread. The engine
always checks the hashes before it resumes, and falls back to the newest intact checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# Written last into a checkpoint, after the Trainer's own files: its presence and contents
# make the checkpoint complete.
CHECKPOINT_MANIFEST = "studio-checkpoint.json"
MANIFEST_FORMAT = 1
# Kept for readers of older code: the Trainer writes this file last among its own.
CHECKPOINT_COMPLETE_FILE = "trainer_state.json"


def checkpoint_step(path: str | Path) -> int:
    """The step of a ``checkpoint-<step>`` folder."""
    return int(CHECKPOINT_RE.match(Path(path).name).group(1))


def checkpoints_dir(output_dir: str | Path) -> Path:
    """Where a run's Trainer checkpoints go: ``<output.dir>.checkpoints``."""
    output_dir = Path(output_dir)
    return output_dir.with_name(output_dir.name + ".checkpoints")


# --------------------------------------------------------------------------- the manifest

_hash_cache: dict[tuple, str] = {}
_hash_lock = threading.Lock()


def _sha256(path: Path, stat: os.stat_result | None = None) -> str:
    """sha256 of a file; cached by (path, inode, size, mtime) so re-checks are cheap."""
    stat = stat or path.stat()
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    with _hash_lock:
        known = _hash_cache.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    with _hash_lock:
        if len(_hash_cache) > 4096:
            _hash_cache.clear()
        _hash_cache[key] = value
    return value


def _files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.name != CHECKPOINT_MANIFEST and not p.name.startswith(".tmp-")
    )


def write_manifest(checkpoint: str | Path, step: int | None = None) -> Path:
    """Write ``studio-checkpoint.json`` into a checkpoint the Trainer has finished writing."""
    from studio.core.atomic import atomic_write_text

    checkpoint = Path(checkpoint)
    files = {}
    for path in _files(checkpoint):
        stat = path.stat()
        files[path.relative_to(checkpoint).as_posix()] = {
            "size": stat.st_size,
            "sha256": _sha256(path, stat),
        }
    manifest = {
        "format": MANIFEST_FORMAT,
        "step": checkpoint_step(checkpoint) if step is None else step,
        "files": files,
    }
    return atomic_write_text(
        checkpoint / CHECKPOINT_MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    )


def verify_checkpoint(checkpoint: str | Path, *, hashes: bool = True) -> str | None:
    """None when ``checkpoint`` is complete and intact; else why not, for people.
    ``hashes=False`` checks only the manifest and the files' sizes (no file is read)."""
    checkpoint = Path(checkpoint)
    manifest_file = checkpoint / CHECKPOINT_MANIFEST
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        files = manifest["files"]
        if not isinstance(files, dict) or not files:
            raise ValueError("no files listed")
    except FileNotFoundError:
        return f"it has no {CHECKPOINT_MANIFEST}: its save did not finish"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"its {CHECKPOINT_MANIFEST} cannot be read ({exc})"
    for name, entry in sorted(files.items()):
        path = checkpoint / name
        try:
            stat = path.stat()
        except OSError:
            return f"{name} is missing"
        try:
            size, sha = int(entry["size"]), str(entry["sha256"])
        except (KeyError, TypeError, ValueError):
            return f"its {CHECKPOINT_MANIFEST} entry for {name} cannot be read"
        if stat.st_size != size:
            return f"{name} is {stat.st_size} bytes, but {size} were saved"
        if not hashes:
            continue
        try:
            if _sha256(path, stat) != sha:
                return f"{name} has changed since it was saved (its sha256 differs)"
        except OSError as exc:
            return f"{name} cannot be read ({exc.strerror or exc})"
    return None


def scan_checkpoints(
    folder: str | Path, *, hashes: bool = True
) -> list[tuple[int, Path, str | None]]:
    """Every ``checkpoint-<step>`` folder in ``folder`` as (step, path, why it is refused or
    None when intact), oldest first (``hashes``: as `verify_checkpoint`)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    try:
        children = list(folder.iterdir())
    except OSError:
        return []
    for child in children:
        match = CHECKPOINT_RE.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child, verify_checkpoint(child, hashes=hashes)))
    return sorted(found, key=lambda item: item[0])


def list_checkpoints(folder: str | Path, *, hashes: bool = True) -> list[tuple[int, Path]]:
    """The complete, verified checkpoints in ``folder`` as (step, path), oldest first
    (``hashes``: as `verify_checkpoint`)."""
    return [
        (step, path) for step, path, why in scan_checkpoints(folder, hashes=hashes) if why is None
    ]


def last_checkpoint(folder: str | Path) -> Path | None:
    """The newest verified checkpoint in ``folder`` (a save cut short or damaged is skipped)."""
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def manifest_callback():
    """A ``TrainerCallback`` that writes the manifest into each checkpoint the Trainer saved.

    Put it before any callback that announces the checkpoint, so the checkpoint is complete
    by the time anyone hears of it.
    """
    from transformers import TrainerCallback

    class CheckpointManifestCallback(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if not args.should_save:
                return
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if path.is_dir():
                write_manifest(path, state.global_step)

    return CheckpointManifestCallback()
