"""The training engine: a job that runs a recipe in its own process.

This is the engine's public face for front ends (the window reaches the engine only through
it; an import-linter contract checks that):

- `EngineRunner` starts a job in a child process and relays its typed events;
- `prepare_process_machinery` starts multiprocessing's helper early, off the GUI thread;
- `inspect_output` / `check_start` / `OutputState`: the one rule for what a start may do with
  an existing bundle and checkpoints (resume or start over, replace or refuse).
"""

from studio.core.engine.output import OutputState, check_start, inspect_output
from studio.core.engine.runner import EngineRunner, prepare_process_machinery

__all__ = [
    "EngineRunner",
    "OutputState",
    "check_start",
    "inspect_output",
    "prepare_process_machinery",
]
