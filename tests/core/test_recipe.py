"""The recipe: TOML round trips, errors that name the key and the allowed values, paths
relative to the recipe file, the schema version."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from studio.core.recipe import (
    BUILTIN_DATASET,
    BUILTIN_MODEL,
    COMPUTE_DTYPES,
    OPTIMIZERS,
    SCHEMA_VERSION,
    FieldSpec,
    Recipe,
    RecipeError,
    field_spec,
    field_specs,
    load_recipe,
    recipe_to_toml,
    save_recipe,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "recipes" / "smollm2-sample.toml"


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
        ("lora", "r = 0", "lora.r", "0 is too small; use 1 up to 1024"),
        ("lora", "r = 8.5", "lora.r", "not a whole number"),
        ("lora", "dropout = 1.5", "lora.dropout", "1.5 is too large; use 0.0 up to 0.9"),
        ("lora", "target_modules = 'attention'", "lora.target_modules", "'all-linear'"),
        ("lora", "target_modules = []", "lora.target_modules", "non-empty list"),
        ("lora", "target_modules = [1, 2]", "lora.target_modules", "list of strings"),
        ("dataset", "format = 'sharegpt'", "dataset.format", "'alpaca', 'chat', 'text'"),
        ("dataset", "max_length = 4", "dataset.max_length", "4 is too small; use 8 up to"),
        ("training", "optimizer = 'sgd'", "training.optimizer", "'paged_adamw_8bit'"),
        ("training", "device = 'tpu'", "training.device", "'cuda:N'"),
        ("training", "batch_size = 0", "training.batch_size", "0 is too small; use 1 up to"),
        ("training", "learning_rate = 'fast'", "training.learning_rate", "not a number"),
        ("training", "learning_rate = nan", "training.learning_rate", "out of range"),
        ("training", "max_steps = 0", "training.max_steps", "positive count or -1"),
        ("training", "max_steps = -2", "training.max_steps", "positive count or -1"),
        ("training", "learning_rate = inf", "training.learning_rate", "use 1e-06 up to 0.5"),
        ("training", "seed = -1", "training.seed", "-1 is too small; use 0 up to 4294967295"),
        ("training", "seed = 4294967296", "training.seed", "is too large; use 0 up to 4294967295"),
        ("training", "device = 'cuda:x'", "training.device", "'cuda:N'"),
        ("training", "lr_scheduler = 'step'", "training.lr_scheduler", "'constant'"),
        ("training", "epochs = 0", "training.epochs", "0.0 is too small; use 0.01 up to"),
        ("dataset", "validation_split = 0.9", "dataset.validation_split", "use 0.0 up to 0.5"),
        ("lora", "alpha = 5000", "lora.alpha", "5000 is too large; use 1 up to 4096"),
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


# --------------------------------------------------------------------------- defaults


def test_defaults_are_the_shipped_recipe_key_by_key():
    shipped, defaults = load_recipe(SHIPPED).to_dict(), Recipe().to_dict()
    differ = [
        f"{spec.dotted}: shipped {shipped[spec.section][spec.key]!r}, "
        f"Recipe() {defaults[spec.section][spec.key]!r}"
        for spec in field_specs()
        if spec.dotted != "output.dir"
        and shipped[spec.section][spec.key] != defaults[spec.section][spec.key]
    ]
    assert differ == []
    assert Recipe().output.dir == "runs/smollm2-sample"  # the shipped file says ../runs/...
    assert load_recipe(SHIPPED).output.dir == str(REPO / "runs" / "smollm2-sample")
    assert load_recipe(SHIPPED).notes() == () and Recipe().notes() == ()


# --------------------------------------------------------------------------- field metadata


def test_field_specs_cover_every_key_in_order():
    specs = field_specs()
    assert all(isinstance(spec, FieldSpec) for spec in specs)
    tree = Recipe().to_dict()
    assert [s.dotted for s in specs] == [
        f"{section}.{key}"
        for section, body in tree.items()
        if section != "schema_version"
        for key in body
    ]
    spec = field_spec("training.max_steps")
    assert (spec.section, spec.key, spec.dotted) == ("training", "max_steps", "training.max_steps")
    assert spec.type is int and spec.default == Recipe().training.max_steps
    assert spec.label == "Max steps" and "-1" in spec.help
    assert field_spec("lora.target_modules").type == (str | tuple[str, ...])
    assert field_spec("lora.dropout").type is float
    assert field_spec("quantization.double_quant").type is bool
    assert field_spec("dataset.max_length").step == 64
    assert field_spec("lora.dropout").step == 0.05 and field_spec("lora.dropout").decimals == 2


def test_unknown_spec_is_a_key_error_naming_it():
    with pytest.raises(KeyError, match="'training.batchsize' is not a recipe key"):
        field_spec("training.batchsize")


@pytest.mark.parametrize("spec", field_specs(), ids=lambda s: s.dotted)
def test_every_key_is_described(spec):
    assert spec.label and spec.label == spec.label.strip() and len(spec.label) <= 40
    assert spec.help.endswith(".") and len(spec.help) >= 40
    if spec.choices is not None:
        assert spec.default in spec.choices
        if spec.choice_help is not None:
            assert set(spec.choice_help) == set(spec.choices)
        assert set(spec.choice_labels or {}) <= set(spec.choices)
    if spec.type in (int, float) and spec.key != "max_steps":
        assert spec.minimum is not None and spec.maximum is not None, "numbers have bounds"
    if spec.minimum is not None:
        assert spec.minimum <= spec.default <= spec.maximum
    if spec.type is float:
        assert spec.decimals is not None
    # the metadata lives on the dataclass field itself
    section_type = type(getattr(Recipe(), spec.section))
    meta = {f.name: f.metadata for f in dataclasses.fields(section_type)}[spec.key]
    assert meta["help"] == spec.help and meta["label"] == spec.label


def test_the_ui_choice_texts_live_in_core():
    assert field_spec("quantization.mode").choice_labels == {
        "4bit": "4-bit",
        "8bit": "8-bit",
        "none": "none (16/32-bit)",
    }
    assert field_spec("quantization.quant_type").choice_labels == {"nf4": "NF4", "fp4": "FP4"}
    assert "NormalFloat4" in field_spec("quantization.quant_type").choice_help["nf4"]
    assert set(field_spec("quantization.compute_dtype").choice_help) == set(COMPUTE_DTYPES)
    optimizer = field_spec("training.optimizer")
    assert optimizer.choices == OPTIMIZERS
    assert "8 bytes of state" in optimizer.choice_help["adamw_torch"]


def _bounded():
    return [s for s in field_specs() if s.minimum is not None or s.maximum is not None]


@pytest.mark.parametrize("spec", _bounded(), ids=lambda s: s.dotted)
def test_bounds_are_inclusive_and_enforced(spec):
    for edge in (spec.minimum, spec.maximum):
        value = spec.type(edge)
        recipe = Recipe().with_changes(**{spec.section: {spec.key: value}})
        assert getattr(getattr(recipe, spec.section), spec.key) == value
    nudge = 1 if spec.type is int else 10 ** -(spec.decimals or 2)
    for value, words in ((spec.minimum - nudge, "too small"), (spec.maximum + nudge, "too large")):
        value = spec.type(value)
        with pytest.raises(RecipeError) as caught:
            Recipe().with_changes(**{spec.section: {spec.key: value}})
        assert caught.value.key == spec.dotted and str(value) in str(caught.value)
        if spec.key != "max_steps":  # -2 gets the hand-written rule's wording
            assert words in str(caught.value)
            assert f"use {spec.minimum!r} up to {spec.maximum!r}" in str(caught.value)


@pytest.mark.parametrize(
    "spec", [s for s in field_specs() if s.type is float], ids=lambda s: s.dotted
)
def test_floats_must_be_finite(spec):
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(RecipeError, match="out of range") as caught:
            Recipe().with_changes(**{spec.section: {spec.key: value}})
        assert caught.value.key == spec.dotted


@pytest.mark.parametrize("spec", [s for s in field_specs() if s.choices], ids=lambda s: s.dotted)
def test_every_choice_is_accepted_and_others_are_not(spec):
    for choice in spec.choices:
        Recipe().with_changes(**{spec.section: {spec.key: choice}})
    with pytest.raises(RecipeError) as caught:
        Recipe().with_changes(**{spec.section: {spec.key: "bogus"}})
    assert caught.value.key == spec.dotted
    assert "'bogus' is not allowed; use one of " + ", ".join(map(repr, spec.choices)) in str(
        caught.value
    )


def test_max_steps_is_minus_one_or_a_positive_count():
    assert Recipe().with_changes(training={"max_steps": -1}).training.max_steps == -1
    assert Recipe().with_changes(training={"max_steps": 1}).training.max_steps == 1
    for bad in (0, -2, -100):
        with pytest.raises(RecipeError, match="use a positive count or -1"):
            Recipe().with_changes(training={"max_steps": bad})


def test_the_seed_bound_is_what_the_libraries_accept():
    from transformers import set_seed

    top = field_spec("training.seed").maximum
    set_seed(int(top))
    with pytest.raises(ValueError):
        set_seed(int(top) + 1)
    assert Recipe().with_changes(training={"seed": int(top)}).training.seed == top


# --------------------------------------------------------------------------- notes


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"quantization": {"mode": "8bit", "quant_type": "fp4"}}, "quantization.quant_type"),
        ({"quantization": {"mode": "none", "quant_type": "fp4"}}, "quantization.quant_type"),
        ({"quantization": {"mode": "8bit", "double_quant": True}}, "quantization.double_quant"),
        ({"quantization": {"mode": "none", "fp32_upcast": True}}, "quantization.fp32_upcast"),
        ({"training": {"max_steps": 10, "epochs": 3.0}}, "training.epochs"),
        ({"training": {"lr_scheduler": "constant", "warmup_steps": 5}}, "training.warmup_steps"),
        ({"dataset": {"validation_split": 0.0}, "training": {"eval_steps": 5}}, "eval_steps"),
    ],
)
def test_settings_without_effect_are_noted(changes, key):
    notes = Recipe().with_changes(**changes).notes()
    assert len([n for n in notes if key in n]) == 1, notes
    note = next(n for n in notes if key in n)
    assert "has no effect" in note


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"quantization": {"mode": "8bit", "double_quant": False}},  # nothing asked for
        {"quantization": {"mode": "8bit", "double_quant": False, "quant_type": "nf4"}},
        {"quantization": {"mode": "none", "double_quant": False, "fp32_upcast": False}},
        {"quantization": {"mode": "8bit", "double_quant": False}, "lora": {"use_dora": True}},
        {"training": {"max_steps": -1, "epochs": 3.0}},  # epochs are used
        {"training": {"lr_scheduler": "constant", "warmup_steps": 0}},
        {"dataset": {"validation_split": 0.0}},  # eval_steps left at its default
        {"quantization": {"mode": "4bit", "quant_type": "fp4", "double_quant": True}},
    ],
)
def test_consistent_settings_have_no_notes(changes):
    assert Recipe().with_changes(**changes).notes() == ()


# --------------------------------------------------------------------------- encoding


def test_a_byte_order_mark_is_skipped(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + "[lora]\nr = 4  # café\n".encode())
    assert load_recipe(path).lora.r == 4


def test_a_file_that_is_not_utf8_names_the_file_and_byte(tmp_path):
    path = tmp_path / "latin1.toml"
    text = "# Recette de café\n[lora]\nr = 4\n"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    offset = text.encode("latin-1").index(b"\xe9")
    message = str(caught.value)
    assert caught.value.source == str(path) and message.startswith(f"{path}: recipe: ")
    assert f"byte {offset} (0xe9, line 1)" in message and "save the file as UTF-8" in message


def test_a_bad_byte_after_a_byte_order_mark_counts_from_the_file_start(tmp_path):
    path = tmp_path / "mixed.toml"
    data = b"\xef\xbb\xbf[lora]\nr = 4\n# \xff\n"
    path.write_bytes(data)
    offset = data.index(0xFF)
    with pytest.raises(RecipeError, match=rf"byte {offset} \(0xff, line 3\)"):
        load_recipe(path)


def _studio(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "QLORA_STUDIO_FAKE_GPUS"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "studio", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )


@pytest.mark.parametrize("command", ["estimate", "train"])
def test_the_cli_refuses_a_latin1_recipe_with_exit_2(tmp_path, command):
    path = tmp_path / "bad.toml"
    path.write_bytes("# café\n[lora]\nr = 4\n".encode("latin-1"))
    done = _studio(command, str(path))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "UnicodeDecodeError" not in done.stderr
    assert str(path) in done.stderr and "byte 5" in done.stderr and "UTF-8" in done.stderr


def test_the_cli_reads_past_a_byte_order_mark(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf[lora]\nr = 0\n")  # parsed: the value's error, not TOML's
    done = _studio("estimate", str(path))
    assert done.returncode == 2
    assert "lora.r: 0 is too small" in done.stderr and "TOML" not in done.stderr
