"""What a run may do with its output folder: the one resume / overwrite rule.

A run writes its bundle to ``output.dir`` and its checkpoints to ``<output.dir>.checkpoints``.
Before a run starts, `inspect_output` says what is there and `check_start` says whether the
run may start with the given ``resume`` / ``overwrite`` choice. The engine calls `check_start`
before anything else; the CLI calls it before spawning the engine (exit 2 at once); the window
asks its questions from `OutputState` (resume or start over, replace the bundle) and then calls
`check_start` with the answers, so all three follow the same rule:

- an existing bundle folder is replaced only with ``overwrite`` (whether the run starts over or
  resumes: a resumed run writes its bundle there too);
- checkpoints of an earlier run are either resumed (``resume``) or discarded (``overwrite``),
  never silently (a ``resume`` without a checkpoint starts from step 0, with a warning).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from studio.core.engine.checkpoints import checkpoints_dir, list_checkpoints
from studio.core.engine.errors import CheckpointError, OutputExistsError


@dataclass(frozen=True)
class OutputState:
    """What an output folder holds before a run: the bundle and the resumable checkpoints."""

    output_dir: Path
    bundle_exists: bool
    checkpoints: tuple[tuple[int, Path], ...]

    @property
    def resumable(self) -> bool:
        return bool(self.checkpoints)

    @property
    def latest_checkpoint(self) -> tuple[int, Path] | None:
        """(step, path) of the checkpoint a resume would continue from."""
        return self.checkpoints[-1] if self.checkpoints else None

    @property
    def checkpoints_dir(self) -> Path:
        return checkpoints_dir(self.output_dir)


def inspect_output(output_dir: str | Path, *, hashes: bool = True) -> OutputState:
    """What ``output_dir`` and its checkpoints folder hold now. ``hashes=False`` (a front
    end choosing its questions) checks the checkpoints' manifests and sizes without reading
    their files; the engine checks the hashes before it resumes."""
    output_dir = Path(output_dir)
    return OutputState(
        output_dir=output_dir,
        bundle_exists=output_dir.exists(),
        checkpoints=tuple(list_checkpoints(checkpoints_dir(output_dir), hashes=hashes)),
    )


def check_start(state: OutputState, *, resume: bool, overwrite: bool) -> None:
    """Raise `OutputExistsError` or `CheckpointError` (bad input, with what to do) when a run
    may not start on ``state`` with these choices; return None when it may."""
    if state.bundle_exists and not overwrite:
        what = "resuming writes the bundle there too. " if resume else ""
        raise OutputExistsError(
            f"output.dir {state.output_dir} already exists; {what}Pass --overwrite (in the "
            "window: confirm replacing it) to replace it, or choose another [output] dir."
        )
    if not resume and state.checkpoints and not overwrite:
        step = state.checkpoints[-1][0]
        raise CheckpointError(
            f"{state.checkpoints_dir} holds checkpoints of an earlier run of this recipe (the "
            f"newest at step {step}). Pass --resume to continue that run, or --overwrite to "
            "start again from step 0."
        )
