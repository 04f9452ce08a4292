"""Recipe values checked against the model's shape: LoRA targets the model does not have."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from studio.core.engine.validation import check_recipe_against_shape, check_target_modules
from studio.core.models import read_shape
from studio.core.recipe import Recipe, RecipeError

REPO = Path(__file__).resolve().parents[2]


def test_known_targets_pass(tiny_models):
    shape = read_shape(tiny_models["llama"])
    check_target_modules("all-linear", shape)
    check_target_modules(("q_proj", "v_proj"), shape)
    check_target_modules(("self_attn.o_proj", "lm_head", "embed_tokens"), shape)
    check_target_modules(("c_attn",), read_shape(tiny_models["gpt2"]))


def test_unknown_target_names_what_the_model_has(tiny_models):
    shape = read_shape(tiny_models["llama"])
    recipe = Recipe().with_changes(lora={"target_modules": ["q_proj", "query_key_value"]})
    with pytest.raises(RecipeError, match="lora.target_modules") as info:
        check_recipe_against_shape(recipe, shape)
    text = str(info.value)
    assert "'query_key_value'" in text and "'q_proj'" not in text
    assert "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj" in text
    assert "all-linear" in text
    # GPT-2 has Conv1D linears with other names: llama's names are not there.
    with pytest.raises(RecipeError, match="c_attn, c_proj, c_fc"):
        check_target_modules(("q_proj",), read_shape(tiny_models["gpt2"]))


def test_estimate_exits_2_for_a_target_the_model_lacks(tiny_models):
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    env.pop("QLORA_STUDIO_FAKE_GPUS", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "studio",
            "estimate",
            "--model",
            str(tiny_models["qwen2"]),
            "--target-modules",
            "q_proj,wqkv",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 2, done.stderr
    assert "'wqkv'" in done.stderr and "q_proj, k_proj" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_train_refuses_a_target_the_model_lacks_as_bad_input(tiny_models, tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from engine_helpers import tiny_recipe

    from studio.core.recipe import save_recipe

    recipe = tiny_recipe(
        tmp_path, tiny_models["llama"], lora={"target_modules": ["q_proj", "query_key_value"]}
    )
    recipe_file = save_recipe(recipe, tmp_path / "recipe.toml")
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    env.pop("QLORA_STUDIO_FAKE_GPUS", None)
    done = subprocess.run(
        [sys.executable, "-m", "studio", "train", str(recipe_file)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 2, done.stderr
    assert "lora.target_modules" in done.stderr and "'query_key_value'" in done.stderr
    assert "Traceback" not in done.stderr
    assert "[loading]" not in done.stderr  # refused before the weights were loaded
