"""Adapter bundles: written atomically, verified on reading, loadable with plain PEFT."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest

from studio.core.bundle import BundleError, read_bundle, write_bundle
from studio.core.recipe import Recipe

QUANT = {
    "load_in_4bit": True,
    "load_in_8bit": False,
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_compute_dtype": "float32",
    "bnb_4bit_use_double_quant": True,
    "bnb_4bit_quant_storage": "uint8",
}


@pytest.fixture(scope="module")
def adapted(tiny_models):
    """A 4-bit tiny llama with a LoRA adapter whose weights are random (not a no-op)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    folder = tiny_models["llama"]
    base = AutoModelForCausalLM.from_pretrained(
        folder,
        quantization_config=BitsAndBytesConfig(**QUANT),
        dtype=torch.float32,
        device_map={"": "cpu"},
    )
    torch.manual_seed(0)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
        init_lora_weights=False,
    )
    return get_peft_model(base, config), AutoTokenizer.from_pretrained(folder), folder


def _write(target, adapted, *, overwrite=False):
    model, tokenizer, folder = adapted
    recipe = Recipe().with_changes(
        model={"source": str(folder)}, quantization={"compute_dtype": "float32"}
    )
    metrics = [
        {
            "type": "StepLogged",
            "step": s,
            "max_steps": 3,
            "epoch": s / 3,
            "loss": 3.0 - s / 2,
            "learning_rate": 1e-3,
            "grad_norm": 1.0,
            "tokens_per_second": 100.0,
            "elapsed_s": float(s),
            "eta_s": 3.0 - s,
            "cuda_allocated_bytes": None,
            "cuda_reserved_bytes": None,
            "cuda_peak_bytes": None,
        }
        for s in (1, 2, 3)
    ] + [{"type": "EvalLogged", "step": 3, "eval_loss": 1.7}]
    return write_bundle(
        target,
        save_adapter=lambda f: model.save_pretrained(f),
        save_tokenizer=lambda f: tokenizer.save_pretrained(f),
        recipe=recipe,
        quantization_config=QUANT,
        metrics=metrics,
        base_model={"source": str(folder), "path": str(folder), "display_name": "tiny"},
        run={"steps": 3, "final_loss": 1.5, "final_eval_loss": 1.7, "device": "CPU"},
        estimate={"total_bytes": 123456, "weights_bytes": 1000, "terms": {}},
        measured={"kind": "cpu_peak_rss", "bytes": 654321},
        overwrite=overwrite,
    )


def test_written_bundle_reads_back(adapted, tmp_path):
    target = _write(tmp_path / "bundle", adapted)
    info = read_bundle(target)
    assert info.steps == 3 and info.final_loss == 1.5
    assert info.quantization_config == QUANT
    assert [m["step"] for m in info.metrics] == [1, 2, 3, 3]
    assert info.recipe.quantization.compute_dtype == "float32"
    assert info.manifest["measured_peak"]["bytes"] == 654321
    assert info.manifest["estimate"]["total_bytes"] == 123456
    assert "adapter_model.safetensors" in info.manifest["files"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no temporary left behind


def test_plain_peft_loads_the_bundle(adapted, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    model, _, folder = adapted
    target = _write(tmp_path / "bundle", adapted)
    quant = json.loads((target / "quantization_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(
        folder,
        quantization_config=BitsAndBytesConfig(**quant),
        dtype=torch.float32,
        device_map={"": "cpu"},
    )
    loaded = PeftModel.from_pretrained(base, str(target))
    ids = torch.tensor([[3, 14, 15, 92, 65]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        got = loaded(input_ids=ids).logits
    torch.testing.assert_close(got, expected)


def test_incomplete_or_damaged_bundles_are_refused(adapted, tmp_path):
    target = _write(tmp_path / "bundle", adapted)
    partial = tmp_path / "partial"
    shutil.copytree(target, partial)
    (partial / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        read_bundle(partial)
    damaged = tmp_path / "damaged"
    shutil.copytree(target, damaged)
    with open(damaged / "adapter_model.safetensors", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(BundleError, match="adapter_model.safetensors does not match"):
        read_bundle(damaged)
    missing = tmp_path / "missing"
    shutil.copytree(target, missing)
    (missing / "loss.png").unlink()
    with pytest.raises(BundleError, match="loss.png is missing"):
        read_bundle(missing)
    with pytest.raises(BundleError, match="not a folder"):
        read_bundle(tmp_path / "nowhere")


def test_existing_bundle_is_kept_unless_overwrite(adapted, tmp_path):
    target = _write(tmp_path / "bundle", adapted)
    before = (target / "manifest.json").read_text()
    with pytest.raises(FileExistsError):
        _write(target, adapted)
    assert (target / "manifest.json").read_text() == before
    _write(target, adapted, overwrite=True)
    assert read_bundle(target).steps == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_failed_write_leaves_nothing(adapted, tmp_path):
    model, tokenizer, folder = adapted

    def broken(f):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_bundle(
            tmp_path / "bundle",
            save_adapter=broken,
            save_tokenizer=None,
            recipe=replace(Recipe()),
            quantization_config=None,
            metrics=[],
            base_model={},
            run={},
            estimate=None,
            measured=None,
            overwrite=False,
        )
    assert list(tmp_path.iterdir()) == []
