"""Live readings of the device and of the engine process, for a front end to plot.

`ResourceMonitor.sample(pid)` returns one `ResourceSample`: on a GPU the device's used memory,
the memory NVML attributes to the engine process, utilisation, temperature and power; on the
CPU the engine's resident memory (with its children) and the CPU load. A run on several GPUs
(`ResourceMonitor.watch`) also gets each of those GPUs' used memory. Qt-free and cheap
(NVML queries or one ``/proc`` read), so a front end can call it a few times a second.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass


@dataclass(frozen=True)
class ResourceSample:
    """One reading; None where there is no answer (no job, no NVML, a simulated GPU)."""

    device_used_bytes: int | None = None
    device_total_bytes: int | None = None
    process_bytes: int | None = None
    utilization_pct: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    cpu_pct: float | None = None
    on_cpu: bool = True
    # (GPU index, used bytes) for each GPU a run on several GPUs uses; () otherwise
    per_gpu_used: tuple[tuple[int, int], ...] = ()


class ResourceMonitor:
    """Samples the device a run is for (`DeviceTarget`) and the engine process (a pid).

    Training on the CPU (also for simulated GPUs, whose runs use the CPU) reads the process's
    resident memory; on a real GPU it reads NVML. `close` releases NVML.
    """

    def __init__(self, device) -> None:
        self.device = device
        gpu = getattr(device, "gpu", None)
        self.on_cpu = device is None or device.torch_device == "cpu"
        self.reason: str | None = None
        self._gpu_index = gpu.index if gpu is not None else None
        self._watched: tuple[int, ...] = ()
        self._sampler = None
        self._proc = None
        if gpu is not None:
            from studio.core.gpu import GpuSampler

            try:
                self._sampler = GpuSampler()
            except Exception as exc:  # noqa: BLE001 - live readings are optional
                self.reason = f"GPU readings unavailable: {exc}"

    @property
    def reads_device(self) -> bool:
        """True when there are device readings to take without a job (a GPU, simulated too)."""
        return self._sampler is not None

    def watch(self, gpu_indices) -> None:
        """Also read the used memory of each of ``gpu_indices`` (a run on several GPUs, from
        `studio.core.scaling.run_gpu_indices`); fewer than two: none."""
        indices = tuple(gpu_indices or ())
        self._watched = indices if len(indices) > 1 else ()

    def sample(self, pid: int | None) -> ResourceSample:
        """A reading now, for the engine process ``pid`` (None: no job running)."""
        gpu = None
        if self._sampler is not None:
            try:
                gpu = self._sampler.sample(self._gpu_index, pid)
            except Exception:  # noqa: BLE001 - a missed reading is not an error
                gpu = None
        per_gpu: list[tuple[int, int]] = []
        if self._sampler is not None:
            for index in self._watched:
                try:
                    reading = gpu if index == self._gpu_index else self._sampler.sample(index)
                except Exception:  # noqa: BLE001 - a missed reading is not an error
                    reading = None
                if reading is not None:
                    per_gpu.append((index, reading.memory_used_bytes))
        rss = cpu = None
        if pid is not None and self.on_cpu:
            rss, cpu = self._process_reading(pid)
        return ResourceSample(
            device_used_bytes=gpu.memory_used_bytes if gpu is not None else None,
            device_total_bytes=gpu.memory_total_bytes if gpu is not None else None,
            process_bytes=rss if self.on_cpu else (gpu.process_memory_bytes if gpu else None),
            utilization_pct=gpu.utilization_pct if gpu is not None else None,
            temperature_c=gpu.temperature_c if gpu is not None else None,
            power_w=gpu.power_w if gpu is not None else None,
            cpu_pct=cpu,
            on_cpu=self.on_cpu,
            per_gpu_used=tuple(per_gpu),
        )

    def _process_reading(self, pid: int) -> tuple[int | None, float | None]:
        """Resident memory of ``pid`` and its children, and its CPU load."""
        import psutil

        try:
            if self._proc is None or self._proc.pid != pid:
                self._proc = psutil.Process(pid)
                self._proc.cpu_percent(None)  # the first call only starts the interval
            proc = self._proc
            total = proc.memory_info().rss
            for child in proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
            return total, proc.cpu_percent(None)
        except psutil.Error:
            return None, None

    def close(self) -> None:
        if self._sampler is not None:
            with contextlib.suppress(Exception):  # closing NVML is best effort
                self._sampler.close()
            self._sampler = None
