"""GPU discovery and live sampling through NVML (nvidia-ml-py), and simulated GPUs.

`discover_gpus` lists the NVIDIA GPUs with their memory, compute capability and driver
version. It never raises for driver trouble (no driver, a driver that is not loaded, NVML
errors, nvidia-ml-py missing): it returns no GPUs and the reason in words.

`GpuSampler` reads live figures for one GPU a few times a second: device memory used,
the memory NVML attributes to one process, utilization, temperature and power.

Simulated GPUs: when the environment variable ``QLORA_STUDIO_FAKE_GPUS`` holds a JSON list
such as ``[{"name": "NVIDIA GeForce RTX 2080 Ti", "total_mib": 11264, "free_mib": 10900,
"compute_capability": [7, 5]}]`` (optional keys ``driver_version`` and ``used_mib``),
discovery reports those GPUs (``source="simulated"``) instead of asking NVML, whatever the
machine has. A malformed value raises `FakeGpuError` naming the entry and the key.

NVML numbers GPUs in PCI bus order; CUDA does the same only with
``CUDA_DEVICE_ORDER=PCI_BUS_ID``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

FAKE_GPUS_ENV = "QLORA_STUDIO_FAKE_GPUS"
MIB = 1024 * 1024

_FAKE_EXAMPLE = (
    '[{"name": "NVIDIA GeForce RTX 2080 Ti", "total_mib": 11264, "free_mib": 10900, '
    '"compute_capability": [7, 5]}]'
)
_FAKE_REQUIRED = ("name", "total_mib", "free_mib", "compute_capability")
_FAKE_OPTIONAL = ("driver_version", "used_mib")


class FakeGpuError(ValueError):
    """``QLORA_STUDIO_FAKE_GPUS`` is malformed; the message says where and shows an example."""


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as discovery saw it; memory in bytes."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int
    used_bytes: int
    compute_capability: tuple[int, int]
    driver_version: str | None
    simulated: bool = False

    @property
    def bf16_supported(self) -> bool:
        """bfloat16 needs compute capability 8.0 (Ampere) or newer; decided from the capability."""
        return tuple(self.compute_capability) >= (8, 0)

    def to_dict(self) -> dict:
        """JSON-ready: every field plus ``bf16_supported``; capability as a two-item list."""
        data = asdict(self)
        data["compute_capability"] = list(self.compute_capability)
        data["bf16_supported"] = self.bf16_supported
        return data


@dataclass(frozen=True)
class GpuDiscovery:
    """What discovery found; ``reason`` says why no GPU was found (None when some were)."""

    gpus: tuple[GpuInfo, ...]
    reason: str | None
    source: str  # "nvml" | "simulated" | "none"

    def to_dict(self) -> dict:
        """JSON-ready: ``{"gpus": [...], "source": ..., "reason": ...}``."""
        return {
            "gpus": [gpu.to_dict() for gpu in self.gpus],
            "source": self.source,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class GpuSample:
    """Live figures for one GPU at ``time`` (``time.time()``); None where NVML has no answer."""

    index: int
    time: float
    memory_used_bytes: int
    memory_total_bytes: int
    utilization_pct: float | None
    temperature_c: float | None
    power_w: float | None
    process_memory_bytes: int | None  # memory NVML attributes to the given pid


# --- simulated GPUs ---------------------------------------------------------------------------


def _fake_error(message: str) -> FakeGpuError:
    return FakeGpuError(
        f"{FAKE_GPUS_ENV}: {message}. A valid example: {FAKE_GPUS_ENV}='{_FAKE_EXAMPLE}'"
    )


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_fake_gpus(text: str) -> tuple[GpuInfo, ...]:
    """The simulated GPUs described by ``text`` (the variable's JSON); `FakeGpuError` if malformed."""
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fake_error(f"is not valid JSON ({exc})") from None
    if not isinstance(entries, list):
        raise _fake_error(f"must be a JSON list of GPU objects, not {type(entries).__name__}")
    return tuple(_fake_gpu(i, entry) for i, entry in enumerate(entries))


def _fake_gpu(index: int, entry: Any) -> GpuInfo:
    where = f"entry {index}"
    if not isinstance(entry, dict):
        raise _fake_error(f"{where} must be a JSON object, not {json.dumps(entry)}")
    missing = [k for k in _FAKE_REQUIRED if k not in entry]
    if missing:
        raise _fake_error(f"{where} lacks the key {missing[0]!r}")
    extra = [k for k in entry if k not in _FAKE_REQUIRED + _FAKE_OPTIONAL]
    if extra:
        raise _fake_error(
            f"{where} has the unknown key {extra[0]!r}; the keys are "
            f"{', '.join(_FAKE_REQUIRED + _FAKE_OPTIONAL)}"
        )

    def bad(key: str, expected: str) -> FakeGpuError:
        return _fake_error(f"{where} key {key!r} must be {expected}, not {json.dumps(entry[key])}")

    name = entry["name"]
    if not isinstance(name, str) or not name.strip():
        raise bad("name", "a non-empty string")
    total, free = entry["total_mib"], entry["free_mib"]
    if not _is_whole(total) or total <= 0:
        raise bad("total_mib", "a whole number of MiB above 0")
    if not _is_whole(free) or free < 0:
        raise bad("free_mib", "a whole number of MiB, 0 or more")
    if free > total:
        raise bad("free_mib", f"at most total_mib ({total})")
    used = entry.get("used_mib", total - free)
    if not _is_whole(used) or used < 0 or used + free > total:
        raise bad(
            "used_mib", f"a whole number of MiB from 0 to total_mib - free_mib ({total - free})"
        )
    cc = entry["compute_capability"]
    if not (isinstance(cc, list) and len(cc) == 2 and all(_is_whole(v) and v >= 0 for v in cc)):
        raise bad("compute_capability", "a list of two whole numbers such as [8, 6]")
    driver = entry.get("driver_version")
    if driver is not None and not isinstance(driver, str):
        raise bad("driver_version", 'a string such as "550.54.14"')
    return GpuInfo(
        index=index,
        name=name,
        total_bytes=total * MIB,
        free_bytes=free * MIB,
        used_bytes=used * MIB,
        compute_capability=(cc[0], cc[1]),
        driver_version=driver,
        simulated=True,
    )


def _fake_gpus_from_env() -> tuple[GpuInfo, ...] | None:
    text = os.environ.get(FAKE_GPUS_ENV)
    if text is None or not text.strip():
        return None
    return parse_fake_gpus(text)


# --- NVML -------------------------------------------------------------------------------------


def _import_nvml():
    """The ``pynvml`` module, or None when nvidia-ml-py is not installed."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def _nvml_errors(nvml) -> tuple[type[BaseException], ...]:
    # A broken libnvidia-ml can also fail below pynvml's own error handling.
    return (nvml.NVMLError, OSError)


def _init_failure_reason(nvml, exc: BaseException) -> str:
    """Why NVML could not start, in words a person can act on."""
    kinds = {
        "NVMLError_LibraryNotFound": (
            "no NVIDIA driver found (the NVML library libnvidia-ml could not be loaded)"
        ),
        "NVMLError_DriverNotLoaded": (
            "the NVIDIA driver is installed but not loaded (try nvidia-smi, or reboot)"
        ),
        "NVMLError_NoPermission": "no permission to talk to the NVIDIA driver",
        "NVMLError_LibRmVersionMismatch": (
            "the NVIDIA driver and its NVML library have different versions (reboot after a "
            "driver update)"
        ),
    }
    for name, reason in kinds.items():
        cls = getattr(nvml, name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return reason
    return f"NVML could not start: {exc}"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _nvml_gpu(nvml, index: int, driver: str | None) -> GpuInfo:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
    return GpuInfo(
        index=index,
        name=_text(nvml.nvmlDeviceGetName(handle)),
        total_bytes=int(memory.total),
        free_bytes=int(memory.free),
        used_bytes=int(memory.used),
        compute_capability=(int(major), int(minor)),
        driver_version=driver,
    )


def _discover_nvml(nvml) -> GpuDiscovery:
    errors = _nvml_errors(nvml)
    try:
        nvml.nvmlInit()
    except errors as exc:
        return GpuDiscovery((), _init_failure_reason(nvml, exc), "none")
    try:
        try:
            count = nvml.nvmlDeviceGetCount()
        except errors as exc:
            return GpuDiscovery((), f"NVML could not count the GPUs: {exc}", "none")
        try:
            driver: str | None = _text(nvml.nvmlSystemGetDriverVersion())
        except errors:
            driver = None
        gpus, failures = [], []
        for index in range(count):
            try:
                gpus.append(_nvml_gpu(nvml, index, driver))
            except errors as exc:  # one broken GPU must not hide the others
                failures.append(f"GPU {index}: {exc}")
        if gpus:
            return GpuDiscovery(tuple(gpus), None, "nvml")
        if failures:
            return GpuDiscovery((), "NVML could not read " + "; ".join(failures), "none")
        return GpuDiscovery((), "the NVIDIA driver is loaded but reports no GPU", "none")
    finally:
        with contextlib.suppress(*errors):
            nvml.nvmlShutdown()


def discover_gpus(*, nvml: Any = None) -> GpuDiscovery:
    """The GPUs of this machine, or the simulated ones of ``QLORA_STUDIO_FAKE_GPUS``.

    Never raises for driver problems: returns no GPUs with ``reason`` and ``source="none"``.
    Raises `FakeGpuError` when ``QLORA_STUDIO_FAKE_GPUS`` is malformed. ``nvml`` replaces
    the ``pynvml`` module (only for tests on machines without an NVIDIA GPU).
    """
    fake = _fake_gpus_from_env()
    if fake is not None:
        reason = None if fake else f"{FAKE_GPUS_ENV} lists no GPU"
        return GpuDiscovery(fake, reason, "simulated")
    nvml = nvml if nvml is not None else _import_nvml()
    if nvml is None:
        return GpuDiscovery(
            (), "nvidia-ml-py (pynvml) is not installed, so GPUs cannot be listed", "none"
        )
    return _discover_nvml(nvml)


# --- sampling ---------------------------------------------------------------------------------


class GpuSampler:
    """Live samples of GPU figures; opens NVML once, `close` (or ``with``) releases it.

    With ``QLORA_STUDIO_FAKE_GPUS`` set it samples the simulated GPUs: a static sample with
    memory used = total - free and every other figure None. Without NVML, `sample` returns
    None. Calls are serialised by a lock; sampling from one thread is the intended use.
    Raises `FakeGpuError` when ``QLORA_STUDIO_FAKE_GPUS`` is malformed, as `discover_gpus` does.
    ``nvml`` replaces the ``pynvml`` module (only for tests without an NVIDIA GPU).
    """

    def __init__(self, *, nvml: Any = None):
        self._lock = threading.Lock()
        self._fake = _fake_gpus_from_env()
        self._nvml = None
        self._handles: dict[int, Any] = {}
        self.reason: str | None = None  # why sampling is unavailable, when it is
        if self._fake is not None:
            return
        module = nvml if nvml is not None else _import_nvml()
        if module is None:
            self.reason = "nvidia-ml-py (pynvml) is not installed"
            return
        try:
            module.nvmlInit()
        except _nvml_errors(module) as exc:
            self.reason = _init_failure_reason(module, exc)
            return
        self._nvml = module

    def __enter__(self) -> GpuSampler:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Release NVML; later samples return None. Safe to call twice."""
        with self._lock:
            nvml, self._nvml = self._nvml, None
            self._handles.clear()
            self._fake = None if self._fake is None else ()
            if nvml is not None:
                with contextlib.suppress(*_nvml_errors(nvml)):
                    nvml.nvmlShutdown()

    def sample(self, index: int, pid: int | None = None) -> GpuSample | None:
        """Figures for GPU ``index`` now (``pid``: also that process's memory), or None.

        None when the GPU does not exist or NVML is unavailable or fails for it.
        """
        with self._lock:
            if self._fake is not None:
                return self._fake_sample(index)
            if self._nvml is None:
                return None
            return self._nvml_sample(self._nvml, index, pid)

    def _fake_sample(self, index: int) -> GpuSample | None:
        gpu = next((g for g in self._fake or () if g.index == index), None)
        if gpu is None:
            return None
        return GpuSample(
            index=index,
            time=time.time(),
            memory_used_bytes=gpu.total_bytes - gpu.free_bytes,
            memory_total_bytes=gpu.total_bytes,
            utilization_pct=None,
            temperature_c=None,
            power_w=None,
            process_memory_bytes=None,
        )

    def _nvml_sample(self, nvml, index: int, pid: int | None) -> GpuSample | None:
        errors = _nvml_errors(nvml)
        try:
            handle = self._handles.get(index)
            if handle is None:
                handle = self._handles[index] = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        except errors:
            self._handles.pop(index, None)
            return None

        def optional(read):
            try:
                return read()
            except errors:  # not supported on this GPU, or a transient failure
                return None

        utilization = optional(lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        temperature = optional(
            lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
        )
        power_mw = optional(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        process = None
        if pid is not None:
            process = optional(lambda: _process_memory(nvml, handle, pid))
        return GpuSample(
            index=index,
            time=time.time(),
            memory_used_bytes=int(memory.used),
            memory_total_bytes=int(memory.total),
            utilization_pct=None if utilization is None else float(utilization),
            temperature_c=None if temperature is None else float(temperature),
            power_w=None if power_mw is None else power_mw / 1000.0,
            process_memory_bytes=process,
        )


def _process_memory(nvml, handle, pid: int) -> int | None:
    """Bytes NVML attributes to ``pid`` on this GPU: 0 when it holds none, None when unknown."""
    total = 0
    for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
        if proc.pid != pid:
            continue
        if proc.usedGpuMemory is None:  # Windows WDDM does not say
            return None
        total += int(proc.usedGpuMemory)
    return total


def process_gpu_memory(index: int, pid: int, *, nvml: Any = None) -> int | None:
    """Bytes NVML attributes to process ``pid`` on GPU ``index`` right now (context, torch's
    reserved memory and CUDA managed memory together): what nvidia-smi shows for it.

    None when NVML cannot say (nvidia-ml-py missing, no driver, Windows WDDM, an NVML error).
    NVML's index is the PCI bus order; the engine sets ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so
    ``cuda:N`` is the same card.
    """
    nvml = nvml if nvml is not None else _import_nvml()
    if nvml is None:
        return None
    errors = _nvml_errors(nvml)
    try:
        nvml.nvmlInit()
    except errors:
        return None
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        return _process_memory(nvml, handle, pid)
    except errors:
        return None
    finally:
        with contextlib.suppress(*errors):
            nvml.nvmlShutdown()
