"""The recipe: TOML round trips, errors that name the key and the allowed values, paths
relative to the recipe file, the schema version."""

from __future__ import annotations

from pathlib import Path

import pytest

from studio.core.recipe import (
    BUILTIN_DATASET,
    BUILTIN_MODEL,
    COMPUTE_DTYPES,
    SCHEMA_VERSION,
    Recipe,
    RecipeError,
    load_recipe,
    recipe_to_toml,
    save_recipe,
)


def _write(folder: Path, text: str, name: str = "recipe.toml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_builtin_model_and_sample():
    recipe = Recipe()
    assert recipe.model.source == BUILTIN_MODEL and recipe.dataset.path == BUILTIN_DATASET
    assert recipe.validate() is recipe


def test_round_trip_keeps_every_value(tmp_path):
    recipe = Recipe().with_changes(
        model={"source": str(tmp_path / "base"), "trust_remote_code": True},
        quantization={
            "quant_type": "fp4",
            "compute_dtype": "float16",
            "double_quant": False,
            "fp32_upcast": False,
        },
        lora={"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        dataset={"path": str(tmp_path / "data.jsonl"), "format": "alpaca", "max_length": 256},
        training={
            "max_steps": -1,
            "epochs": 2.5,
            "learning_rate": 1e-4,
            "device": "cuda:1",
            "optimizer": "adamw_torch",
        },
        output={"dir": str(tmp_path / "out")},
    )
    assert recipe.lora.target_modules == ("q_proj", "v_proj")
    path = save_recipe(recipe, tmp_path / "saved.toml")
    assert load_recipe(path) == recipe
    text = path.read_text()
    assert text.startswith(f"schema_version = {SCHEMA_VERSION}")
    for key in ("quant_type", "compute_dtype", "double_quant", "fp32_upcast", "seed"):
        assert f"{key} = " in text  # every key written out, nothing left to defaults
    assert Recipe.from_dict(Recipe().to_dict()) == Recipe()
    assert not list(tmp_path.glob(".tmp-*"))  # atomic write leaves nothing behind


def test_saving_replaces_an_existing_file(tmp_path):
    path = save_recipe(Recipe(), tmp_path / "r.toml")
    save_recipe(Recipe().with_changes(lora={"r": 4}), path)
    assert load_recipe(path).lora.r == 4


def test_missing_keys_take_defaults(tmp_path):
    recipe = load_recipe(_write(tmp_path, "[lora]\nr = 4\n"))
    assert recipe.lora.r == 4 and recipe.lora.alpha == Recipe().lora.alpha
    assert recipe.quantization == Recipe().quantization


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("[lora]\nrank = 8\n", "lora.rank", "[lora] takes r, alpha"),
        ("[quantisation]\nmode = '4bit'\n", "quantisation", "the sections are model, quantization"),
        ("[training]\nbatchsize = 4\n", "training.batchsize", "batch_size"),
        ("lora = 3\n", "lora", "must be a table"),
    ],
)
def test_unknown_sections_and_keys_are_named(tmp_path, text, key, words):
    path = _write(tmp_path, text)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert caught.value.key == key and caught.value.source == str(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: ") and words in message


@pytest.mark.parametrize(
    ("section", "body", "key", "words"),
    [
        ("quantization", "mode = '3bit'", "quantization.mode", "'4bit', '8bit', 'none'"),
        ("quantization", "quant_type = 'int4'", "quantization.quant_type", "'nf4', 'fp4'"),
        (
            "quantization",
            "compute_dtype = 'fp16'",
            "quantization.compute_dtype",
            ", ".join(repr(d) for d in COMPUTE_DTYPES),
        ),
        ("quantization", "double_quant = 'yes'", "quantization.double_quant", "true or false"),
        ("lora", "r = 0", "lora.r", "1 or more"),
        ("lora", "r = 8.5", "lora.r", "not a whole number"),
        ("lora", "dropout = 1.5", "lora.dropout", "0.0 up to"),
        ("lora", "target_modules = 'attention'", "lora.target_modules", "'all-linear'"),
        ("lora", "target_modules = []", "lora.target_modules", "non-empty list"),
        ("lora", "target_modules = [1, 2]", "lora.target_modules", "list of strings"),
        ("dataset", "format = 'sharegpt'", "dataset.format", "'alpaca', 'chat', 'text'"),
        ("dataset", "max_length = 4", "dataset.max_length", "8 or more"),
        ("training", "optimizer = 'sgd'", "training.optimizer", "'paged_adamw_8bit'"),
        ("training", "device = 'tpu'", "training.device", "'cuda:N'"),
        ("training", "batch_size = 0", "training.batch_size", "1 or more"),
        ("training", "learning_rate = 'fast'", "training.learning_rate", "not a number"),
        ("training", "learning_rate = nan", "training.learning_rate", "out of range"),
        ("training", "max_steps = 0", "training.max_steps", "positive count or -1"),
        ("model", "source = ' '", "model.source", BUILTIN_MODEL),
        ("output", "dir = ''", "output.dir", "is empty"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(tmp_path, section, body, key, words):
    with pytest.raises(RecipeError) as caught:
        load_recipe(_write(tmp_path, f"[{section}]\n{body}\n"))
    assert caught.value.key == key
    assert words in str(caught.value)


def test_ints_are_accepted_for_floats(tmp_path):
    recipe = load_recipe(_write(tmp_path, "[training]\nepochs = 3\n"))
    assert recipe.training.epochs == 3.0 and isinstance(recipe.training.epochs, float)


def test_with_changes_validates():
    with pytest.raises(RecipeError, match="lora.r"):
        Recipe().with_changes(lora={"r": -1})
    with pytest.raises(RecipeError, match="lora.rank"):
        Recipe().with_changes(lora={"rank": 4})


def test_relative_paths_resolve_against_the_recipe_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    (folder / "models" / "mine").mkdir(parents=True)
    path = _write(
        folder,
        "[model]\nsource = 'models/mine'\n"
        "[dataset]\npath = 'data/train.jsonl'\n"
        "[output]\ndir = '../runs/first'\n",
    )
    monkeypatch.chdir(tmp_path)  # somewhere else than the recipe's folder
    recipe = load_recipe(Path("project") / "recipe.toml")
    assert recipe.model.source == str((folder / "models" / "mine").resolve())
    assert recipe.dataset.path == str((folder / "data" / "train.jsonl").resolve())
    assert recipe.output.dir == str((tmp_path / "runs" / "first").resolve())
    assert load_recipe(path) == recipe


@pytest.mark.parametrize(
    ("source", "resolved"),
    [
        ("./base", "{folder}/base"),
        ("base.gguf", "{folder}/base.gguf"),
        ("/opt/models/base", "/opt/models/base"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
        ("gpt2", "gpt2"),
        (BUILTIN_MODEL, BUILTIN_MODEL),
    ],
)
def test_model_sources_stay_hub_ids_unless_they_are_paths(tmp_path, source, resolved):
    path = _write(
        tmp_path, f"[model]\nsource = '{source}'\n[dataset]\npath = '{BUILTIN_DATASET}'\n"
    )
    recipe = load_recipe(path)
    assert recipe.model.source == resolved.format(folder=tmp_path.resolve())
    assert recipe.dataset.path == BUILTIN_DATASET


def test_absolute_paths_are_kept(tmp_path):
    data = tmp_path / "elsewhere" / "d.jsonl"
    recipe = load_recipe(_write(tmp_path, f"[dataset]\npath = '{data}'\n"))
    assert recipe.dataset.path == str(data)


@pytest.mark.parametrize("version", ["2", "0", "'1'", "true", "1.0"])
def test_schema_version_mismatch(tmp_path, version):
    path = _write(tmp_path, f"schema_version = {version}\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert caught.value.key == "schema_version"
    assert f"schema_version = {SCHEMA_VERSION}" in str(caught.value)
    assert str(path) in str(caught.value)


def test_invalid_toml_names_the_file_and_line(tmp_path):
    path = _write(tmp_path, "[lora]\nr = 8\nalpha = = 3\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    message = str(caught.value)
    assert str(path) in message and "not valid TOML" in message and "line 3" in message


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(RecipeError, match="file not found") as caught:
        load_recipe(path)
    assert str(path) in str(caught.value)


def test_recipe_to_toml_is_loadable_text(tmp_path):
    text = recipe_to_toml(Recipe())
    assert "[quantization]" in text and 'mode = "4bit"' in text
    assert load_recipe(_write(tmp_path, text)).quantization == Recipe().quantization
