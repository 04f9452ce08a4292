"""Quantization settings and the dtype rules of each device.

- `resolve_device` picks where a run goes: a GPU from discovery (simulated ones included) or
  the CPU.
- `compute_dtype_choices` says, per compute dtype, whether the device allows it and if not why
  (the GUI disables those options and shows the reason); `resolve_compute_dtype` applies the
  same rules and turns ``auto`` into a concrete dtype: bfloat16 where the device supports it,
  else float16 on a GPU; bfloat16 on the CPU.
- `bnb_config_kwargs` / `make_bnb_config` map a `QuantizationSection` to bitsandbytes'
  `BitsAndBytesConfig` with every field stated: its library defaults (fp4, float32 compute,
  no double quantization) are never relied on.

8-bit (LLM.int8) loading and LoRA training with bitsandbytes work on the CPU too (checked
with bitsandbytes 0.50), so every mode is allowed on every device.
"""

from __future__ import annotations

from dataclasses import dataclass

from studio.core.gpu import GpuDiscovery, GpuInfo
from studio.core.recipe import COMPUTE_DTYPES, QuantizationSection

DTYPES = ("bfloat16", "float16", "float32")


class QuantError(ValueError):
    """A quantization or device setting the device cannot honour; ``key`` is the recipe key."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")


@dataclass(frozen=True)
class DeviceTarget:
    """Where a run goes. ``gpu`` is the GPU the estimate is for (simulated ones included)."""

    kind: str  # "cuda" | "cpu"
    gpu: GpuInfo | None = None

    @property
    def name(self) -> str:
        """For people: ``CPU`` or ``GPU 0: NVIDIA GeForce RTX 2080 Ti (simulated)``."""
        if self.gpu is None:
            return "CPU"
        suffix = " (simulated)" if self.gpu.simulated else ""
        return f"GPU {self.gpu.index}: {self.gpu.name}{suffix}"

    @property
    def bf16_supported(self) -> bool:
        """True on the CPU, and on GPUs of compute capability 8.0 or newer."""
        return self.gpu is None or self.gpu.bf16_supported

    @property
    def torch_device(self) -> str:
        """``cuda:N`` for a real GPU; ``cpu`` for the CPU and for simulated GPUs (runs use the CPU)."""
        if self.gpu is None or self.gpu.simulated:
            return "cpu"
        return f"cuda:{self.gpu.index}"


CPU = DeviceTarget("cpu")


def resolve_device(requested: str, discovery: GpuDiscovery) -> DeviceTarget:
    """The device for ``training.device`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``).

    ``auto`` is the first GPU found, else the CPU. ``cuda``/``cuda:N`` without such a GPU
    raise `QuantError` (key ``training.device``) saying what was found instead.
    """
    if requested == "cpu":
        return CPU
    if requested == "auto":
        return DeviceTarget("cuda", discovery.gpus[0]) if discovery.gpus else CPU
    prefix, sep, index = requested.partition(":")
    if prefix != "cuda" or (sep and not index.isdigit()):
        raise QuantError(
            "training.device",
            f"{requested!r} is not allowed; use 'auto', 'cpu', 'cuda' or 'cuda:N'",
        )
    if not discovery.gpus:
        why = discovery.reason or "none was found"
        raise QuantError(
            "training.device",
            f"{requested!r} asks for a GPU but there is none ({why}); use 'auto' or 'cpu'",
        )
    if not sep:
        return DeviceTarget("cuda", discovery.gpus[0])
    for gpu in discovery.gpus:
        if gpu.index == int(index):
            return DeviceTarget("cuda", gpu)
    found = ", ".join(f"cuda:{g.index} ({g.name})" for g in discovery.gpus)
    raise QuantError("training.device", f"there is no GPU {requested!r}; found {found}")


def compute_dtype_choices(device: DeviceTarget) -> dict[str, str | None]:
    """Every ``compute_dtype`` value: None if ``device`` allows it, else why it is disabled."""
    choices: dict[str, str | None] = {
        "auto": None,
        "bfloat16": None,
        "float16": None,
        "float32": None,
    }
    if device.kind == "cpu":
        choices["float16"] = (
            "float16 is not supported for training on the CPU (mixed precision in float16 "
            "needs a GPU); use bfloat16 or float32"
        )
    elif not device.bf16_supported:
        major, minor = device.gpu.compute_capability
        choices["bfloat16"] = (
            f"bfloat16 needs an Ampere or newer GPU (compute capability 8.0+); "
            f"{device.name} has compute capability {major}.{minor}; use float16 instead"
        )
    return choices


def resolve_compute_dtype(requested: str, device: DeviceTarget) -> str:
    """``bfloat16``, ``float16`` or ``float32`` for ``quantization.compute_dtype`` on ``device``.

    ``auto``: bfloat16 where supported, else float16 on a GPU; bfloat16 on the CPU.
    Raises `QuantError` (key ``quantization.compute_dtype``) when the device refuses the
    dtype, saying why and what to use instead.
    """
    if requested not in COMPUTE_DTYPES:
        raise QuantError(
            "quantization.compute_dtype",
            f"{requested!r} is not allowed; use one of {', '.join(COMPUTE_DTYPES)}",
        )
    if requested == "auto":
        return "bfloat16" if device.bf16_supported else "float16"
    reason = compute_dtype_choices(device)[requested]
    if reason:
        raise QuantError("quantization.compute_dtype", reason)
    return requested


def bnb_config_kwargs(
    quant: QuantizationSection, compute_dtype: str, *, quant_storage: str = "uint8"
) -> dict | None:
    """Keyword arguments for `BitsAndBytesConfig`, every relevant field explicit.

    ``compute_dtype`` is a resolved dtype name (not ``auto``); it is given as a string so
    this stays free of torch. None for mode ``none``.
    """
    if compute_dtype not in DTYPES:
        raise QuantError(
            "quantization.compute_dtype",
            f"{compute_dtype!r} must be resolved first (one of {', '.join(DTYPES)}); "
            "see resolve_compute_dtype",
        )
    if quant.mode == "none":
        return None
    if quant.mode == "4bit":
        return {
            "load_in_4bit": True,
            "load_in_8bit": False,
            "bnb_4bit_quant_type": quant.quant_type,
            "bnb_4bit_compute_dtype": compute_dtype,
            "bnb_4bit_use_double_quant": quant.double_quant,
            # FSDP-QLoRA stores the packed 4-bit weights in the compute dtype, so that a
            # layer's tensors share one dtype and shard together (studio.core.engine.rank).
            "bnb_4bit_quant_storage": quant_storage,
        }
    if quant.mode == "8bit":
        return {
            "load_in_4bit": False,
            "load_in_8bit": True,
            "llm_int8_threshold": 6.0,
            "llm_int8_has_fp16_weight": False,
        }
    raise QuantError(
        "quantization.mode", f"{quant.mode!r} is not allowed; use one of 4bit, 8bit, none"
    )


def make_bnb_config(quant: QuantizationSection, compute_dtype: str, *, quant_storage="uint8"):
    """The `transformers.BitsAndBytesConfig` for ``quant`` (None for mode ``none``)."""
    kwargs = bnb_config_kwargs(quant, compute_dtype, quant_storage=quant_storage)
    if kwargs is None:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if "bnb_4bit_compute_dtype" in kwargs:
        kwargs["bnb_4bit_compute_dtype"] = getattr(torch, kwargs["bnb_4bit_compute_dtype"])
    if "bnb_4bit_quant_storage" in kwargs:
        kwargs["bnb_4bit_quant_storage"] = getattr(torch, kwargs["bnb_4bit_quant_storage"])
    return BitsAndBytesConfig(**kwargs)


def torch_dtype(name: str):
    """The torch dtype called ``name`` (``bfloat16``, ``float16``, ``float32``)."""
    import torch

    if name not in DTYPES:
        raise QuantError(
            "quantization.compute_dtype", f"{name!r} is not one of {', '.join(DTYPES)}"
        )
    return getattr(torch, name)
