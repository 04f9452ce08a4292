"""Helpers for the export tests (core and window): training small bundles to export."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "core"))

from engine_helpers import collect, tiny_recipe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ("Say hello number 3.", "What is a comet?")


def train(recipe):
    """Run ``recipe`` in the engine and return the bundle folder (fails the test otherwise)."""
    from studio.core.engine import EngineRunner
    from studio.core.events import Finished

    runner = EngineRunner(recipe)
    runner.start()
    events = collect(runner)
    runner.join()
    assert isinstance(events[-1], Finished), events[-1]
    return Path(events[-1].bundle_dir)


def tiny_bundle(root: Path, model_dir: Path, kind: str) -> Path:
    """A 4-bit NF4 bundle (bf16 compute) of a copy of the tiny model ``model_dir``, trained
    for 12 steps; the copy is the base, so a test can take it away."""
    folder = root / kind
    folder.mkdir(parents=True)
    base = shutil.copytree(model_dir, folder / "base")
    recipe = tiny_recipe(
        folder,
        base,
        quantization={"compute_dtype": "bfloat16"},
        output={"dir": str(folder / "bundle")},
    )
    return train(recipe)


def builtin_bundle(root: Path) -> Path:
    """The shipped sample recipe on the built-in model (its 40 steps: the sign-off is learnt)."""
    from studio.core.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "smollm2-sample.toml").with_changes(
        output={"dir": str(root / "smollm2-sample")}
    )
    return train(recipe)


def greedy_ids(model, input_ids, new_tokens: int = 8) -> list[int]:
    """The first ``new_tokens`` greedy tokens of ``model`` after ``input_ids``."""
    import torch

    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=0,
        )
    return out[0, input_ids.shape[1] :].tolist()
