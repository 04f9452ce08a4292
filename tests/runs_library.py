"""Real short runs for the run-library tests (studio.core.runs; not a test module)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "core"))  # engine_helpers, from tests/ui too

from engine_helpers import collect, tiny_recipe  # noqa: E402

from studio.core.events import CheckpointSaved  # noqa: E402

# Three settings a person might try one after another; they differ in exactly these keys.
SETTINGS = {
    "rank8": {"lora": {"r": 8}},
    "rank16": {"lora": {"r": 16}},
    "fp4-short": {
        "lora": {"r": 16},
        "quantization": {"quant_type": "fp4"},
        "dataset": {"max_length": 48},
    },
}
DIFFERING = ["quantization.quant_type", "lora.r", "dataset.max_length"]


def short_recipe(folder: Path, model_dir: Path, name: str, **extra):
    changes = {key: dict(value) for key, value in SETTINGS[name].items()}
    changes.setdefault("training", {}).update(max_steps=3, save_steps=1, eval_steps=2)
    changes["output"] = {"dir": str(folder / name)}
    for key, value in extra.items():
        changes.setdefault(key, {}).update(value)
    return tiny_recipe(folder, model_dir, **changes)


def train(recipe, *, stop_at_checkpoint: bool = False) -> list:
    """Run ``recipe`` in the engine process; with ``stop_at_checkpoint`` ask it to stop
    once the first checkpoint is written (it then ends as Stopped, resumable)."""
    from studio.core.engine import EngineRunner

    runner = EngineRunner(recipe)
    runner.start()
    if stop_at_checkpoint:
        events = collect(runner, until=lambda e: isinstance(e, CheckpointSaved))
        runner.stop()
        events += collect(runner)
    else:
        events = collect(runner)
    runner.join()
    return events
