"""On a CUDA machine: NVML discovery agrees with what torch sees, and the sampler sees this
process's own allocation. Skipped without CUDA."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_discovery_matches_torch():
    from studio.core.gpu import discover_gpus
    from studio.core.quant import resolve_compute_dtype, resolve_device

    found = discover_gpus()
    assert found.source == "nvml" and found.gpus
    if os.environ.get("CUDA_VISIBLE_DEVICES") is None:
        assert len(found.gpus) == torch.cuda.device_count()
    # NVML counts in PCI bus order; compare with the device of the same PCI bus order in torch.
    by_name = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
    for gpu in found.gpus:
        assert gpu.name in by_name
        assert gpu.total_bytes > gpu.free_bytes > 0
        assert gpu.driver_version
    first = found.gpus[0]
    capabilities = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
    assert first.compute_capability in capabilities
    device = resolve_device("auto", found)
    expected = "bfloat16" if first.compute_capability >= (8, 0) else "float16"
    assert resolve_compute_dtype("auto", device) == expected


def test_sampler_sees_this_process():
    from studio.core.gpu import GpuSampler

    block = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda:0")
    torch.cuda.synchronize()
    with GpuSampler() as sampler:
        # cuda:0 is the first visible device; without CUDA_VISIBLE_DEVICES and with one GPU
        # that is NVML's index 0 too.
        samples = [sampler.sample(i, pid=os.getpid()) for i in range(8)]
    samples = [s for s in samples if s is not None]
    assert samples
    mine = [s.process_memory_bytes for s in samples if s.process_memory_bytes]
    # NVML attributes the context plus the 256 MiB block to this process (None under WDDM)
    assert not mine or max(mine) >= 256 * 1024 * 1024
    for sample in samples:
        assert 0 < sample.memory_used_bytes <= sample.memory_total_bytes
        assert sample.power_w is None or 0 < sample.power_w < 2000
    del block
