"""The training engine: a job that runs a recipe in its own process.

This is the engine's public face for front ends (the window reaches the engine only through
it; an import-linter contract checks that):

- `EngineRunner` starts a job in a child process and relays its typed events;
- `prepare_process_machinery` starts multiprocessing's helper early, off the GUI thread;
- `inspect_output` / `check_start` / `OutputState`: the one rule for what a start may do with
  an existing bundle and checkpoints (resume or start over, replace or refuse);
- `preflight`: what a front end checks before it starts a run (the output folder's lock held
  by another live run, the rule above, a broken local model folder), raising the same
  bad-input errors the engine would; `check_unlocked` / `OutputLockedError` for the lock alone;
- `check_recipe_against_shape`: recipe values that depend on the model (LoRA targets).
"""

from studio.core.engine.errors import OutputLockedError
from studio.core.engine.lock import check_unlocked
from studio.core.engine.output import OutputState, check_start, inspect_output
from studio.core.engine.preflight import preflight
from studio.core.engine.runner import EngineRunner, prepare_process_machinery
from studio.core.engine.validation import check_recipe_against_shape

__all__ = [
    "EngineRunner",
    "OutputLockedError",
    "OutputState",
    "check_recipe_against_shape",
    "check_start",
    "check_unlocked",
    "inspect_output",
    "preflight",
    "prepare_process_machinery",
]
