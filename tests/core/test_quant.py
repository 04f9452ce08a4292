"""Device and dtype rules, and BitsAndBytesConfig mapping checked by really loading tiny
models with bitsandbytes on the CPU."""

from __future__ import annotations

import json

import pytest

from studio.core.gpu import FAKE_GPUS_ENV, GpuDiscovery, GpuInfo, discover_gpus
from studio.core.quant import (
    CPU,
    DeviceTarget,
    QuantError,
    bnb_config_kwargs,
    compute_dtype_choices,
    make_bnb_config,
    resolve_compute_dtype,
    resolve_device,
)
from studio.core.recipe import QuantizationSection

GIB = 1024**3
TURING = GpuInfo(0, "NVIDIA GeForce RTX 2080 Ti", 11 * GIB, 10 * GIB, GIB, (7, 5), "550.54")
AMPERE = GpuInfo(1, "NVIDIA RTX A6000", 48 * GIB, 47 * GIB, GIB, (8, 6), "550.54")
BOTH = GpuDiscovery((TURING, AMPERE), None, "nvml")
NONE = GpuDiscovery((), "no NVIDIA driver found", "none")


# --- devices ----------------------------------------------------------------------------------


def test_resolve_device():
    assert resolve_device("auto", BOTH) == DeviceTarget("cuda", TURING)
    assert resolve_device("cuda", BOTH) == DeviceTarget("cuda", TURING)
    assert resolve_device("cuda:1", BOTH) == DeviceTarget("cuda", AMPERE)
    assert resolve_device("cpu", BOTH) == CPU
    assert resolve_device("auto", NONE) == CPU


@pytest.mark.parametrize(
    ("requested", "discovery", "words"),
    [
        ("cuda", NONE, "no NVIDIA driver found"),
        ("cuda:0", NONE, "use 'auto' or 'cpu'"),
        ("cuda:7", BOTH, "found cuda:0 (NVIDIA GeForce RTX 2080 Ti), cuda:1"),
        ("gpu", BOTH, "use 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ("cuda:x", BOTH, "is not allowed"),
    ],
)
def test_resolve_device_errors(requested, discovery, words):
    with pytest.raises(QuantError) as caught:
        resolve_device(requested, discovery)
    assert caught.value.key == "training.device"
    assert words in str(caught.value)


def test_device_target_names_and_torch_devices(monkeypatch):
    assert (CPU.name, CPU.torch_device, CPU.bf16_supported) == ("CPU", "cpu", True)
    turing = DeviceTarget("cuda", TURING)
    assert turing.name == "GPU 0: NVIDIA GeForce RTX 2080 Ti"
    assert turing.torch_device == "cuda:0" and not turing.bf16_supported
    assert DeviceTarget("cuda", AMPERE).torch_device == "cuda:1"
    monkeypatch.setenv(
        FAKE_GPUS_ENV,
        json.dumps(
            [
                {
                    "name": "NVIDIA GeForce RTX 2080 Ti",
                    "total_mib": 11264,
                    "free_mib": 10900,
                    "compute_capability": [7, 5],
                }
            ]
        ),
    )
    simulated = resolve_device("auto", discover_gpus())
    assert simulated.kind == "cuda" and simulated.name.endswith("(simulated)")
    assert simulated.torch_device == "cpu"  # training on simulated hardware runs on the CPU
    assert not simulated.bf16_supported  # but the rules are those of the simulated GPU


# --- compute dtypes ---------------------------------------------------------------------------


def test_bf16_refused_below_ampere_with_the_reason():
    choices = compute_dtype_choices(DeviceTarget("cuda", TURING))
    assert {k for k, v in choices.items() if v is None} == {"auto", "float16", "float32"}
    reason = choices["bfloat16"]
    assert "Ampere" in reason and "8.0" in reason and "7.5" in reason and "float16" in reason
    with pytest.raises(QuantError) as caught:
        resolve_compute_dtype("bfloat16", DeviceTarget("cuda", TURING))
    assert caught.value.key == "quantization.compute_dtype"
    assert str(caught.value) == f"quantization.compute_dtype: {reason}"


def test_auto_and_explicit_dtypes_per_device():
    turing, ampere = DeviceTarget("cuda", TURING), DeviceTarget("cuda", AMPERE)
    assert resolve_compute_dtype("auto", turing) == "float16"
    assert resolve_compute_dtype("auto", ampere) == "bfloat16"
    assert resolve_compute_dtype("auto", CPU) == "bfloat16"
    assert all(v is None for v in compute_dtype_choices(ampere).values())
    for dtype in ("bfloat16", "float16", "float32"):
        assert resolve_compute_dtype(dtype, ampere) == dtype
    for dtype in ("float16", "float32"):
        assert resolve_compute_dtype(dtype, turing) == dtype
    for dtype in ("bfloat16", "float32"):
        assert resolve_compute_dtype(dtype, CPU) == dtype


def test_float16_refused_on_cpu():
    reason = compute_dtype_choices(CPU)["float16"]
    assert "CPU" in reason and "bfloat16 or float32" in reason
    with pytest.raises(QuantError, match="bfloat16 or float32"):
        resolve_compute_dtype("float16", CPU)


def test_unknown_dtype_names_the_allowed_ones():
    with pytest.raises(QuantError, match="auto, bfloat16, float16, float32") as caught:
        resolve_compute_dtype("fp8", CPU)
    assert caught.value.key == "quantization.compute_dtype"


# --- BitsAndBytesConfig -----------------------------------------------------------------------


def test_4bit_kwargs_state_every_field():
    quant = QuantizationSection(mode="4bit", quant_type="fp4", double_quant=False)
    assert bnb_config_kwargs(quant, "float16") == {
        "load_in_4bit": True,
        "load_in_8bit": False,
        "bnb_4bit_quant_type": "fp4",
        "bnb_4bit_compute_dtype": "float16",
        "bnb_4bit_use_double_quant": False,
        "bnb_4bit_quant_storage": "uint8",
    }


def test_8bit_and_none_kwargs():
    assert bnb_config_kwargs(QuantizationSection(mode="8bit"), "bfloat16") == {
        "load_in_4bit": False,
        "load_in_8bit": True,
        "llm_int8_threshold": 6.0,
        "llm_int8_has_fp16_weight": False,
    }
    assert bnb_config_kwargs(QuantizationSection(mode="none"), "float32") is None
    assert make_bnb_config(QuantizationSection(mode="none"), "float32") is None


def test_kwargs_need_a_resolved_dtype():
    with pytest.raises(QuantError, match="resolve"):
        bnb_config_kwargs(QuantizationSection(), "auto")


def test_make_bnb_config_overrides_the_library_defaults():
    import torch

    config = make_bnb_config(QuantizationSection(quant_type="nf4", double_quant=True), "bfloat16")
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4"  # library default: fp4
    assert config.bnb_4bit_compute_dtype == torch.bfloat16  # library default: float32
    assert config.bnb_4bit_use_double_quant is True  # library default: False
    assert config.bnb_4bit_quant_storage == torch.uint8
    eight = make_bnb_config(QuantizationSection(mode="8bit"), "bfloat16")
    assert eight.load_in_8bit and eight.llm_int8_threshold == 6.0
    assert eight.llm_int8_has_fp16_weight is False


def _load(folder, quant: QuantizationSection, compute_dtype: str):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        folder,
        quantization_config=make_bnb_config(quant, compute_dtype),
        device_map="cpu",
        dtype=getattr(torch, compute_dtype),
    )


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [True, False])
def test_tiny_model_loads_with_the_requested_4bit_state(tiny_models, quant_type, double_quant):
    import bitsandbytes as bnb
    import torch

    quant = QuantizationSection(mode="4bit", quant_type=quant_type, double_quant=double_quant)
    model = _load(tiny_models["llama"], quant, "bfloat16")
    linears = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linears) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
    for linear in linears:
        state = linear.weight.quant_state
        assert state.quant_type == quant_type
        assert state.dtype == torch.bfloat16
        assert linear.compute_dtype == torch.bfloat16
        assert state.nested is double_quant
        assert (state.state2 is not None) is double_quant
        if double_quant:  # absmax itself quantized to 8 bits, with an fp32 offset
            assert state.absmax.dtype == torch.uint8 and state.offset is not None
        else:
            assert state.absmax.dtype == torch.float32
    assert not isinstance(model.lm_head, bnb.nn.Linear4bit)
    logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    assert logits.shape[:2] == (1, 4) and torch.isfinite(logits).all()


def test_gpt2_conv1d_and_float32_compute(tiny_models):
    import bitsandbytes as bnb
    import torch

    quant = QuantizationSection(mode="4bit", quant_type="nf4", double_quant=True)
    model = _load(tiny_models["gpt2"], quant, "float32")
    linears = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linears) == 2 * 4  # c_attn, c_proj, c_fc, mlp c_proj per layer
    assert {linear.weight.quant_state.dtype for linear in linears} == {torch.float32}


def test_8bit_loads_and_runs_on_cpu(tiny_models):
    """LLM.int8 works on the CPU with bitsandbytes 0.50, so 8-bit is allowed there."""
    import bitsandbytes as bnb
    import torch

    model = _load(tiny_models["qwen2"], QuantizationSection(mode="8bit"), "bfloat16")
    linears = [m for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    assert linears and all(m.weight.dtype == torch.int8 for m in linears)
    assert all(m.state.threshold == 6.0 for m in linears)
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()
