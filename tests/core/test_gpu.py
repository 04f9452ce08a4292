"""GPU discovery and sampling: the real NVML of this machine, simulated GPUs, and (only
because no NVIDIA GPU is present on the CPU machines) NVML's answers through a stand-in
``pynvml`` whose errors are pynvml's own classes."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pynvml
import pytest

from studio.core.gpu import (
    FAKE_GPUS_ENV,
    MIB,
    FakeGpuError,
    GpuDiscovery,
    GpuInfo,
    GpuSampler,
    discover_gpus,
    parse_fake_gpus,
)

TURING = {
    "name": "NVIDIA GeForce RTX 2080 Ti",
    "total_mib": 11264,
    "free_mib": 10900,
    "compute_capability": [7, 5],
}
AMPERE = {
    "name": "NVIDIA A100-SXM4-80GB",
    "total_mib": 81920,
    "free_mib": 80000,
    "used_mib": 1500,
    "compute_capability": [8, 0],
    "driver_version": "550.54.14",
}


def _nvml_works() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


NVML_WORKS = _nvml_works()


# --- the real NVML of this machine ------------------------------------------------------------


def test_discovery_on_this_machine_never_raises():
    found = discover_gpus()
    assert isinstance(found, GpuDiscovery)
    if found.gpus:
        assert found.source == "nvml" and found.reason is None
        for gpu in found.gpus:
            assert gpu.total_bytes >= gpu.free_bytes > 0
            assert gpu.compute_capability >= (3, 0) and not gpu.simulated
            assert gpu.bf16_supported == (gpu.compute_capability >= (8, 0))
    else:
        assert found.source == "none" and found.reason


@pytest.mark.skipif(NVML_WORKS, reason="this machine has a working NVIDIA driver")
def test_without_a_driver_no_gpus_and_the_reason():
    with pytest.raises(pynvml.NVMLError) as raised:  # what pynvml itself does here
        pynvml.nvmlInit()
    found = discover_gpus()
    assert found.gpus == () and found.source == "none" and found.reason
    if isinstance(raised.value, pynvml.NVMLError_LibraryNotFound):  # no driver installed
        assert "no NVIDIA driver found" in found.reason
    with GpuSampler() as sampler:
        assert sampler.sample(0) is None
        assert sampler.sample(0, pid=1) is None
        assert sampler.reason


@pytest.mark.skipif(not NVML_WORKS, reason="needs an NVIDIA driver")
def test_real_sampler_reads_the_first_gpu():
    import os

    with GpuSampler() as sampler:
        sample = sampler.sample(0, pid=os.getpid())
    assert sample is not None and sample.memory_total_bytes > 0
    assert sample.process_memory_bytes in (0, None) or sample.process_memory_bytes > 0


def test_missing_nvidia_ml_py_is_a_reason(monkeypatch):
    import studio.core.gpu as gpu

    monkeypatch.setattr(gpu, "_import_nvml", lambda: None)
    found = gpu.discover_gpus()
    assert found.gpus == () and found.source == "none" and "nvidia-ml-py" in found.reason
    assert gpu.GpuSampler().sample(0) is None


# --- NVML answers, through a stand-in module --------------------------------------------------


class StandInNvml:
    """Just the pynvml functions the studio calls, answering like a driver with ``gpus``.

    ``fail`` maps a function name to the pynvml error code that call raises.
    """

    NVMLError = pynvml.NVMLError
    NVMLError_LibraryNotFound = pynvml.NVMLError_LibraryNotFound
    NVMLError_DriverNotLoaded = pynvml.NVMLError_DriverNotLoaded
    NVMLError_NoPermission = pynvml.NVMLError_NoPermission
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU

    def __init__(self, gpus, *, fail=None, processes=None, driver=b"550.54.14"):
        self.gpus = gpus
        self.fail = fail or {}
        self.processes = processes or {}
        self.driver = driver
        self.open = 0

    def _check(self, name, index=None):
        code = self.fail.get(name) or self.fail.get((name, index))
        if code is not None:
            raise pynvml.NVMLError(code)

    def nvmlInit(self):
        self._check("nvmlInit")
        self.open += 1

    def nvmlShutdown(self):
        self.open -= 1

    def nvmlDeviceGetCount(self):
        self._check("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlSystemGetDriverVersion(self):
        self._check("nvmlSystemGetDriverVersion")
        return self.driver

    def nvmlDeviceGetHandleByIndex(self, index):
        self._check("nvmlDeviceGetHandleByIndex", index)
        if index >= len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return ("handle", index)

    def nvmlDeviceGetName(self, handle):
        return self.gpus[handle[1]]["name"]

    def nvmlDeviceGetMemoryInfo(self, handle):
        self._check("nvmlDeviceGetMemoryInfo", handle[1])
        g = self.gpus[handle[1]]
        return SimpleNamespace(total=g["total"], free=g["free"], used=g["used"])

    def nvmlDeviceGetCudaComputeCapability(self, handle):
        return self.gpus[handle[1]]["cc"]

    def nvmlDeviceGetUtilizationRates(self, handle):
        self._check("nvmlDeviceGetUtilizationRates", handle[1])
        return SimpleNamespace(gpu=87, memory=40)

    def nvmlDeviceGetTemperature(self, handle, sensor):
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        self._check("nvmlDeviceGetTemperature", handle[1])
        return 71

    def nvmlDeviceGetPowerUsage(self, handle):
        self._check("nvmlDeviceGetPowerUsage", handle[1])
        return 245_500  # milliwatts

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        self._check("nvmlDeviceGetComputeRunningProcesses", handle[1])
        return [
            SimpleNamespace(pid=pid, usedGpuMemory=used)
            for pid, used in self.processes.get(handle[1], [])
        ]


GIB = 1024**3
TWO_GPUS = [
    {
        "name": b"NVIDIA GeForce RTX 3090",
        "total": 24 * GIB,
        "free": 20 * GIB,
        "used": 4 * GIB,
        "cc": (8, 6),
    },
    {"name": "Tesla T4", "total": 16 * GIB, "free": 15 * GIB, "used": GIB, "cc": (7, 5)},
]


def test_nvml_lists_every_gpu():
    nvml = StandInNvml(TWO_GPUS)
    found = discover_gpus(nvml=nvml)
    assert found.source == "nvml" and found.reason is None
    assert found.gpus == (
        GpuInfo(0, "NVIDIA GeForce RTX 3090", 24 * GIB, 20 * GIB, 4 * GIB, (8, 6), "550.54.14"),
        GpuInfo(1, "Tesla T4", 16 * GIB, 15 * GIB, GIB, (7, 5), "550.54.14"),
    )
    assert [g.bf16_supported for g in found.gpus] == [True, False]
    assert nvml.open == 0  # NVML shut down again


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "no NVIDIA driver found"),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "not loaded"),
        (pynvml.NVML_ERROR_NO_PERMISSION, "no permission"),
        (pynvml.NVML_ERROR_UNKNOWN, "NVML could not start"),
    ],
)
def test_nvml_start_failures_are_reasons(code, words):
    found = discover_gpus(nvml=StandInNvml(TWO_GPUS, fail={"nvmlInit": code}))
    assert found.gpus == () and found.source == "none"
    assert words in found.reason


def test_a_broken_gpu_does_not_hide_the_others():
    nvml = StandInNvml(
        TWO_GPUS, fail={("nvmlDeviceGetMemoryInfo", 0): pynvml.NVML_ERROR_GPU_IS_LOST}
    )
    found = discover_gpus(nvml=nvml)
    assert [g.index for g in found.gpus] == [1] and found.source == "nvml"
    assert nvml.open == 0


def test_every_gpu_broken_or_none_at_all():
    lost = pynvml.NVML_ERROR_GPU_IS_LOST
    fail = {("nvmlDeviceGetHandleByIndex", i): lost for i in (0, 1)}
    found = discover_gpus(nvml=StandInNvml(TWO_GPUS, fail=fail))
    assert found.gpus == () and "GPU 0" in found.reason and "GPU 1" in found.reason
    found = discover_gpus(nvml=StandInNvml([]))
    assert found.gpus == () and "reports no GPU" in found.reason
    count_fails = StandInNvml(TWO_GPUS, fail={"nvmlDeviceGetCount": pynvml.NVML_ERROR_UNKNOWN})
    assert discover_gpus(nvml=count_fails).reason.startswith("NVML could not count")


def test_driver_version_unreadable_is_none():
    nvml = StandInNvml(TWO_GPUS, fail={"nvmlSystemGetDriverVersion": pynvml.NVML_ERROR_UNKNOWN})
    assert {g.driver_version for g in discover_gpus(nvml=nvml).gpus} == {None}


def test_sampler_reads_live_figures_and_process_memory():
    nvml = StandInNvml(TWO_GPUS, processes={0: [(4242, 3 * GIB), (99, GIB), (4242, 512 * MIB)]})
    with GpuSampler(nvml=nvml) as sampler:
        assert nvml.open == 1
        sample = sampler.sample(0, pid=4242)
        assert sample.index == 0 and sample.time > 0
        assert sample.memory_used_bytes == 4 * GIB and sample.memory_total_bytes == 24 * GIB
        assert sample.utilization_pct == 87.0 and sample.temperature_c == 71.0
        assert sample.power_w == pytest.approx(245.5)  # NVML reports milliwatts
        assert sample.process_memory_bytes == 3 * GIB + 512 * MIB
        assert sampler.sample(0, pid=1).process_memory_bytes == 0  # holds nothing there
        assert sampler.sample(0).process_memory_bytes is None  # no pid asked
        assert sampler.sample(5) is None  # no such GPU
    assert nvml.open == 0
    assert sampler.sample(0) is None  # closed
    sampler.close()  # twice is fine


def test_sampler_unknown_figures_are_none():
    not_supported = pynvml.NVML_ERROR_NOT_SUPPORTED
    fail = {
        (name, 1): not_supported
        for name in (
            "nvmlDeviceGetUtilizationRates",
            "nvmlDeviceGetTemperature",
            "nvmlDeviceGetPowerUsage",
            "nvmlDeviceGetComputeRunningProcesses",
        )
    }
    wddm = {0: [(7, None)]}  # Windows WDDM: NVML cannot say what a process uses
    with GpuSampler(nvml=StandInNvml(TWO_GPUS, fail=fail, processes=wddm)) as sampler:
        sample = sampler.sample(1, pid=7)
        assert (sample.utilization_pct, sample.temperature_c, sample.power_w) == (None,) * 3
        assert sample.process_memory_bytes is None
        assert sample.memory_used_bytes == GIB
        assert sampler.sample(0, pid=7).process_memory_bytes is None


def test_sampler_when_nvml_cannot_start():
    nvml = StandInNvml(TWO_GPUS, fail={"nvmlInit": pynvml.NVML_ERROR_DRIVER_NOT_LOADED})
    sampler = GpuSampler(nvml=nvml)
    assert sampler.sample(0) is None and "not loaded" in sampler.reason
    sampler.close()


# --- simulated GPUs ---------------------------------------------------------------------------


def test_simulated_gpus(monkeypatch):
    monkeypatch.setenv(FAKE_GPUS_ENV, json.dumps([TURING, AMPERE]))
    found = discover_gpus(nvml=StandInNvml(TWO_GPUS))  # simulation wins over real hardware
    assert found.source == "simulated" and found.reason is None
    turing, ampere = found.gpus
    assert turing == GpuInfo(
        0, TURING["name"], 11264 * MIB, 10900 * MIB, 364 * MIB, (7, 5), None, simulated=True
    )
    assert not turing.bf16_supported and ampere.bf16_supported
    assert ampere.used_bytes == 1500 * MIB and ampere.driver_version == "550.54.14"
    assert turing.to_dict() == {
        "index": 0,
        "name": TURING["name"],
        "total_bytes": 11264 * MIB,
        "free_bytes": 10900 * MIB,
        "used_bytes": 364 * MIB,
        "compute_capability": [7, 5],
        "driver_version": None,
        "simulated": True,
        "bf16_supported": False,
    }
    assert json.loads(json.dumps(found.to_dict()))["source"] == "simulated"


def test_simulated_sampler_is_static(monkeypatch):
    monkeypatch.setenv(FAKE_GPUS_ENV, json.dumps([TURING]))
    with GpuSampler() as sampler:
        sample = sampler.sample(0, pid=123)
        assert sample.memory_used_bytes == (11264 - 10900) * MIB
        assert sample.memory_total_bytes == 11264 * MIB
        assert (sample.utilization_pct, sample.temperature_c, sample.power_w) == (None,) * 3
        assert sample.process_memory_bytes is None
        assert sampler.sample(1) is None


def test_empty_simulated_list_means_no_gpu(monkeypatch):
    monkeypatch.setenv(FAKE_GPUS_ENV, "[]")
    found = discover_gpus()
    assert found.gpus == () and found.source == "simulated" and FAKE_GPUS_ENV in found.reason


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("[{", "not valid JSON"),
        ('{"name": "x"}', "must be a JSON list"),
        ('["RTX 4090"]', "entry 0 must be a JSON object"),
        (
            json.dumps([TURING, {k: v for k, v in TURING.items() if k != "free_mib"}]),
            "entry 1 lacks the key 'free_mib'",
        ),
        (json.dumps([{**TURING, "vram": 3}]), "entry 0 has the unknown key 'vram'"),
        (json.dumps([{**TURING, "name": ""}]), "entry 0 key 'name'"),
        (json.dumps([{**TURING, "total_mib": "11264"}]), "entry 0 key 'total_mib'"),
        (json.dumps([{**TURING, "total_mib": 11264.5}]), "entry 0 key 'total_mib'"),
        (json.dumps([{**TURING, "total_mib": True}]), "entry 0 key 'total_mib'"),
        (json.dumps([{**TURING, "free_mib": -1}]), "entry 0 key 'free_mib'"),
        (json.dumps([{**TURING, "free_mib": 20000}]), "entry 0 key 'free_mib' must be at most"),
        (json.dumps([{**TURING, "used_mib": 11000}]), "entry 0 key 'used_mib'"),
        (json.dumps([{**TURING, "compute_capability": "7.5"}]), "entry 0 key 'compute_capability'"),
        (json.dumps([{**TURING, "compute_capability": [7]}]), "entry 0 key 'compute_capability'"),
        (json.dumps([{**TURING, "driver_version": 550}]), "entry 0 key 'driver_version'"),
    ],
)
def test_malformed_simulated_gpus_say_where(monkeypatch, value, words):
    monkeypatch.setenv(FAKE_GPUS_ENV, value)
    with pytest.raises(FakeGpuError) as caught:
        discover_gpus()
    message = str(caught.value)
    assert message.startswith(f"{FAKE_GPUS_ENV}: ")
    assert words in message
    assert '"total_mib": 11264' in message  # shows a valid example
    with pytest.raises(FakeGpuError):
        GpuSampler()
    with pytest.raises(ValueError):  # FakeGpuError is a ValueError
        parse_fake_gpus(value)
