"""Shared helpers for the engine, bundle and train-CLI tests (not a test module)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from studio.core.events import TERMINAL_EVENTS, StepLogged
from studio.core.recipe import Recipe

# Waits are only there so a broken engine fails the test instead of hanging it.
HANG_GUARD_S = 900


def write_learnable_dataset(path: Path, count: int = 40) -> Path:
    """An alpaca dataset whose answers are all the same sentence: quick to learn."""
    rows = [
        {"instruction": f"Say hello number {i % 5}.", "input": "", "output": "Hello there, friend!"}
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tiny_recipe(tmp_path: Path, model_dir: Path, **changes) -> Recipe:
    """A recipe for a tiny model that trains a dozen steps on the CPU in seconds."""
    dataset = tmp_path / "data.jsonl"
    if not dataset.exists():
        write_learnable_dataset(dataset)
    sections = {
        "model": {"source": str(model_dir)},
        "quantization": {"compute_dtype": "float32"},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
        "dataset": {"path": str(dataset), "max_length": 64, "validation_split": 0.1},
        "training": {
            "max_steps": 12,
            "batch_size": 4,
            "learning_rate": 1e-2,
            "lr_scheduler": "constant",
            "optimizer": "adamw_torch",
            "save_steps": 4,
            "eval_steps": 6,
            "gradient_checkpointing": False,
            "device": "cpu",
            "seed": 7,
        },
        "output": {"dir": str(tmp_path / "bundle")},
    }
    for name, values in changes.items():
        sections.setdefault(name, {}).update(values)
    return Recipe().with_changes(**sections)


def collect(runner, *, until=None, guard_s: float = HANG_GUARD_S) -> list:
    """Poll ``runner`` until ``until(event)`` is true or a terminal event arrives."""
    events: list = []
    deadline = time.monotonic() + guard_s
    while time.monotonic() < deadline:
        for event in runner.poll(timeout=0.2):
            events.append(event)
            if (until is not None and until(event)) or isinstance(event, TERMINAL_EVENTS):
                return events
    raise AssertionError(f"the engine sent nothing conclusive; events so far: {events[-5:]}")


def stop_after_step(recipe, step: int) -> list:
    """Run ``recipe``, ask it to stop once step ``step`` is logged, and return every event
    (the last one the job's terminal event)."""
    from studio.core.engine import EngineRunner
    from studio.core.events import StepLogged

    runner = EngineRunner(recipe)
    runner.start()
    events = collect(runner, until=lambda e: isinstance(e, StepLogged) and e.step >= step)
    runner.stop()
    events += collect(runner)
    runner.join()
    return events


def losses_by_step(events_or_dicts) -> dict[int, float]:
    out: dict[int, float] = {}
    for item in events_or_dicts:
        if isinstance(item, StepLogged):
            out[item.step] = item.loss
        elif isinstance(item, dict) and item.get("type") == "StepLogged":
            out[item["step"]] = item["loss"]
    return out
