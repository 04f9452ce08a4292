"""The run's log file: where a failed run's traceback goes, so no message has to show one.

One place: ``<output.dir>.log``, beside the bundle folder (it outlives the checkpoints, which
are removed when a run finishes). Each failure appends a block with the time, the process,
the phase, the message and the traceback. When that file cannot be written (the disk is full
or read-only, which may be why the run failed) the block goes to
``<cache>/logs/<output name>-<hash>.log`` instead (`studio.core.paths.cache_dir`). Messages
name the file the block went to.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from pathlib import Path


def log_path(output_dir: str | Path) -> Path:
    """The run's log file: ``<output.dir>.log``."""
    output_dir = Path(output_dir)
    return output_dir.with_name(output_dir.name + ".log")


def _fallback_path(output_dir: Path) -> Path:
    from studio.core.paths import cache_dir

    digest = hashlib.sha256(str(output_dir.absolute()).encode()).hexdigest()[:12]
    return cache_dir() / "logs" / f"{output_dir.name or 'run'}-{digest}.log"


def append_log(output_dir: str | Path, title: str, text: str) -> Path | None:
    """Append a block to the run's log; returns the file written, None when none could be."""
    output_dir = Path(output_dir)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    block = f"=== {stamp}, process {os.getpid()}: {title}\n{text.rstrip()}\n\n"
    for path in (log_path(output_dir), _fallback_path(output_dir)):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(block)
                handle.flush()
            return path
        except OSError:
            continue
    return None


def log_failure(output_dir: str | Path, failed) -> Path | None:
    """Write a `Failed` event's message and traceback to the run's log; returns the file."""
    text = f"phase: {failed.phase}\nerror: {failed.error_type}\n\n{failed.message}\n"
    if failed.details:
        text += f"\n{failed.details}"
    return append_log(output_dir, f"the job failed ({failed.error_type})", text)


LOG_REFERENCE = "The details (traceback) are in"


def with_log_reference(message: str, path: Path | None) -> str:
    """``message`` plus the sentence naming the log file (unchanged when there is none)."""
    if path is None or str(path) in message:
        return message
    return f"{message}\n{LOG_REFERENCE} {path}."
