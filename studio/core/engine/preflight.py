"""What a front end checks before it spawns an engine, so bad input is refused at once.

`preflight` runs, in the front end's own process and in this order: the output folder's lock
(another live run on the same output is refused), the resume / overwrite rule
(`studio.core.engine.output.check_start`) and, for a local model folder, the checks of
`studio.core.models.check_model_folder`. Each raises a bad-input error (`OutputLockedError`,
`OutputExistsError`, `CheckpointError`, `ModelSourceError`) with what to do. The engine makes
the same checks again itself (it takes the lock for real), so a front end that skips this
still gets the same messages, only later.
"""

from __future__ import annotations

from pathlib import Path

from studio.core.engine.lock import check_unlocked
from studio.core.engine.output import check_start, inspect_output


def preflight(recipe, *, resume: bool, overwrite: bool, check_model: bool = True) -> None:
    """Raise the first bad-input error that a run of ``recipe`` would fail with at its start."""
    check_unlocked(recipe.output.dir)
    # Sizes only: the engine hashes the checkpoints itself before it resumes.
    check_start(inspect_output(recipe.output.dir, hashes=False), resume=resume, overwrite=overwrite)
    if check_model:
        source = recipe.model.source.strip()
        folder = Path(source).expanduser()
        if source and not source.startswith("builtin:") and folder.is_dir():
            from studio.core.models import check_model_folder

            if (folder / "config.json").is_file():
                check_model_folder(folder, recipe.model.trust_remote_code)
