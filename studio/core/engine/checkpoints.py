"""Where a run keeps its Trainer checkpoints, and which of them can be resumed from.

Checkpoints live in ``<output.dir>.checkpoints/checkpoint-<step>/``. The Trainer writes
``trainer_state.json`` last, so a checkpoint without it was cut short (a killed process) and
is never resumed from.
"""

from __future__ import annotations

import re
from pathlib import Path

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# A checkpoint is complete once the Trainer wrote its state file (written last).
CHECKPOINT_COMPLETE_FILE = "trainer_state.json"


def checkpoint_step(path: str | Path) -> int:
    """The step of a ``checkpoint-<step>`` folder."""
    return int(CHECKPOINT_RE.match(Path(path).name).group(1))


def checkpoints_dir(output_dir: str | Path) -> Path:
    """Where a run's Trainer checkpoints go: ``<output.dir>.checkpoints``."""
    output_dir = Path(output_dir)
    return output_dir.with_name(output_dir.name + ".checkpoints")


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """The complete checkpoints in ``folder`` as (step, path), oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = CHECKPOINT_RE.match(child.name)
        if match and (child / CHECKPOINT_COMPLETE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def last_checkpoint(folder: str | Path) -> Path | None:
    """The newest complete checkpoint in ``folder`` (a killed save leaves an incomplete one)."""
    found = list_checkpoints(folder)
    return found[-1][1] if found else None
