"""The model catalog and plans: configs that stand for models not downloaded yet.

The catalog's configs are checked against what their models are known to be: the parameter
count computed from each config (on the meta device) against the published count, and the
4-bit weights the estimator computes against the published 4-bit sizes.
"""

from __future__ import annotations

import json
import shutil

import pytest

from studio.core import catalog
from studio.core.memory import estimate
from studio.core.models import ModelSourceError, read_shape, resolve_model
from studio.core.quant import CPU
from studio.core.recipe import Recipe

GB = 1e9

# The models the catalog must hold (issue 11).
REQUIRED = {
    "llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b", "llama-3.1-70b",
    "mistral-7b-v0.3", "mistral-nemo-12b",
    "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b",
    "qwen2.5-72b",
    "gemma-2-2b", "gemma-2-9b", "gemma-2-27b",
    "phi-3.5-mini",
    "smollm2-135m", "smollm2-360m", "smollm2-1.7b",
}  # fmt: skip


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QLORA_STUDIO_CACHE", str(tmp_path / "cache"))


def test_the_catalog_holds_the_models_people_fine_tune_as_small_configs():
    entries = {e.name: e for e in catalog.catalog_entries()}
    assert set(entries) >= REQUIRED
    for entry in entries.values():
        files = sorted(p.name for p in entry.path.iterdir())
        assert files == ["config.json"], entry.name  # a config only: no weights, no tokenizer
        assert (entry.path / "config.json").stat().st_size < 4096
        assert entry.source == f"catalog:{entry.name}"


def test_each_config_has_the_published_parameter_count():
    for entry in catalog.catalog_entries():
        shape = catalog.catalog_shape(entry.name)
        ratio = shape.total_params / entry.published_params
        assert 0.99 <= ratio <= 1.01, f"{entry.name}: {shape.total_params:,} parameters"


def test_the_shape_read_back_from_the_cache_is_the_shape_read_from_the_config():
    first = catalog.catalog_shape("qwen2.5-0.5b")
    again = catalog.catalog_shape("catalog:qwen2.5-0.5b")  # from the JSON cache this time
    assert again == first
    assert first == read_shape(catalog.catalog_entry("qwen2.5-0.5b").path)


@pytest.mark.parametrize(
    ("name", "low_gb", "high_gb"),
    [
        ("mistral-7b-v0.3", 3.6, 4.4),  # a 7B model in 4-bit: about 4 GB
        ("llama-3.1-8b", 4.5, 6.0),  # 8B, with its large vocabulary's embeddings in bf16
        ("mistral-nemo-12b", 7.2, 8.8),  # 12-13B: about 8 GB
        ("llama-3.1-70b", 35.0, 41.0),  # 70B: about 35 GB of 4-bit linears, plus embeddings
    ],
)
def test_weights_match_the_published_4bit_sizes(name, low_gb, high_gb):
    shape = catalog.catalog_shape(name)
    est = estimate(shape, Recipe(), CPU)
    assert low_gb * GB <= est.weights_bytes <= high_gb * GB
    quantized = sum(est.term(k).bytes for k in ("quantized_linears", "quant_absmax"))
    # the 4-bit linears alone: 4.127 bits per quantized weight with double quantization
    assert quantized == pytest.approx(shape.quantizable_params * 4.127 / 8, rel=0.002)


def test_llama_70b_4bit_linears_are_about_35_gb():
    shape = catalog.catalog_shape("llama-3.1-70b")
    est = estimate(shape, Recipe(), CPU)
    quantized = sum(est.term(k).bytes for k in ("quantized_linears", "quant_absmax"))
    assert 33 * GB <= quantized <= 37 * GB


def test_a_catalog_source_resolves_to_a_plan_only_when_plans_are_allowed():
    planned = resolve_model("catalog:llama-3.1-70b", allow_plan=True)
    assert planned.plan and planned.kind == "catalog"
    assert "Llama-3.1-70B" in planned.display_name and "plan" in planned.display_name
    with pytest.raises(ModelSourceError, match="hf download meta-llama/Llama-3.1-70B"):
        resolve_model("catalog:llama-3.1-70b")  # training: refused, saying what to download
    with pytest.raises(ModelSourceError, match="not in the model catalog.*llama-3.1-8b"):
        resolve_model("catalog:llama-9", allow_plan=True)


def test_a_folder_with_only_a_config_is_a_plan(tmp_path, tiny_models):
    folder = tmp_path / "only-config"
    folder.mkdir()
    shutil.copy(tiny_models["llama"] / "config.json", folder / "config.json")
    with pytest.raises(ModelSourceError, match="no weights"):
        resolve_model(str(folder))
    planned = resolve_model(str(folder), allow_plan=True)
    assert planned.plan and planned.kind == "plan"
    # the same shape, so the same estimate, as the complete folder
    assert read_shape(planned).total_params == read_shape(tiny_models["llama"]).total_params
    # a complete folder is not a plan, even when plans are allowed
    assert not resolve_model(str(tiny_models["llama"]), allow_plan=True).plan


def test_a_plan_folder_still_needs_a_config_transformers_knows(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(ModelSourceError, match="does not\\s+know"):
        resolve_model(str(folder), allow_plan=True)
