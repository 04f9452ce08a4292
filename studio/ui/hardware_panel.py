"""The hardware panel: which device the run is for, its facts, and a live strip of readings."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QWidget

from studio.core.units import format_bytes

BADGE_STYLE = "QLabel { border-radius: 4px; padding: 1px 6px; color: white; background: %s; }"


class HardwarePanel(QGroupBox):
    """Lists the discovered (or simulated) GPUs plus the CPU; emits the chosen device request.

    ``discovery`` is a `studio.core.gpu.GpuDiscovery`; ``discovery_error`` a message when the
    simulated-GPU variable was malformed.
    """

    deviceChanged = Signal(str)  # "cuda:N" or "cpu"

    def __init__(self, discovery, discovery_error: str | None = None, parent=None) -> None:
        super().__init__("Hardware", parent)
        self.discovery = discovery
        self.combo = QComboBox(objectName="gpuCombo")
        self.combo.setToolTip("The device this run is estimated for and trained on.")
        for gpu in discovery.gpus:
            cc = ".".join(map(str, gpu.compute_capability))
            text = f"GPU {gpu.index}: {gpu.name} · {format_bytes(gpu.total_bytes)} · cc {cc}"
            text += " · bf16" if gpu.bf16_supported else " · no bf16"
            if gpu.simulated:
                text += " (simulated)"
            self.combo.addItem(text, f"cuda:{gpu.index}")
        self.combo.addItem("CPU (no GPU; slow but works)", "cpu")

        self.facts = QLabel(objectName="gpuFactsLabel")
        self.facts.setWordWrap(True)
        self.badge = QLabel(objectName="bf16Badge")
        self.notice = QLabel(objectName="hardwareNoticeLabel")
        self.notice.setWordWrap(True)
        self.live = QLabel("—", objectName="gpuLiveLabel")
        self.live.setToolTip("Live readings of the selected GPU, a few times a second (NVML).")

        notes = []
        if discovery_error:
            notes.append(f"Simulated GPUs ignored: {discovery_error}")
        if not discovery.gpus:
            reason = f" ({discovery.reason})" if discovery.reason else ""
            notes.append(
                f"No NVIDIA GPU found{reason}. Training will run on the CPU: slower, but "
                "everything works, and the estimate shows what a GPU would need."
            )
        elif any(g.simulated for g in discovery.gpus):
            notes.append(
                "Simulated GPUs (QLORA_STUDIO_FAKE_GPUS): the estimate and the dtype rules follow "
                "the simulated card; training itself runs on the CPU."
            )
        self.notice.setText("\n".join(notes))
        self.notice.setVisible(bool(notes))

        top = QHBoxLayout()
        top.addWidget(self.combo, 1)
        top.addWidget(self.badge)
        form = QFormLayout(self)
        form.addRow("Device", _wrap(top))
        form.addRow("", self.facts)
        form.addRow("Live", self.live)
        form.addRow(self.notice)

        self.combo.currentIndexChanged.connect(self._changed)
        self._changed()

    def device_request(self) -> str:
        """The recipe's ``training.device`` for the current choice."""
        return self.combo.currentData()

    def set_device_request(self, request: str) -> None:
        """Select ``request`` ("cuda:N", "cuda", "cpu" or "auto": the first GPU, else the CPU)."""
        index = 0 if request in ("auto", "cuda") else self.combo.findData(request)
        if index >= 0:
            self.combo.setCurrentIndex(index)

    def selected_gpu(self):
        request = self.device_request()
        for gpu in self.discovery.gpus:
            if request == f"cuda:{gpu.index}":
                return gpu
        return None

    def _changed(self) -> None:
        gpu = self.selected_gpu()
        if gpu is None:
            self.facts.setText("The CPU: bf16 allowed, memory is the system's RAM.")
            self.badge.setText("CPU")
            self.badge.setStyleSheet(BADGE_STYLE % "#607d8b")
            self.badge.setToolTip("Training runs on the CPU.")
        else:
            cc = ".".join(map(str, gpu.compute_capability))
            driver = f", driver {gpu.driver_version}" if gpu.driver_version else ""
            self.facts.setText(
                f"{gpu.name}: {format_bytes(gpu.total_bytes)} total, "
                f"{format_bytes(gpu.free_bytes)} free; compute capability {cc}{driver}"
            )
            if gpu.bf16_supported:
                self.badge.setText("bf16 ✓")
                self.badge.setStyleSheet(BADGE_STYLE % "#2e7d32")
                self.badge.setToolTip("Compute capability 8.0 or newer: bfloat16 is supported.")
            else:
                self.badge.setText("no bf16")
                self.badge.setStyleSheet(BADGE_STYLE % "#9e6a03")
                self.badge.setToolTip(
                    f"Compute capability {cc} is below 8.0: no bfloat16; float16 is used."
                )
        self.live.setText("—")
        self.deviceChanged.emit(self.device_request())

    def show_sample(self, sample) -> None:
        """Show one `GpuSample` (or None: no reading) in the live strip."""
        if sample is None:
            self.live.setText("—")
            return
        parts = []
        if sample.utilization_pct is not None:
            parts.append(f"util {sample.utilization_pct:.0f}%")
        if sample.temperature_c is not None:
            parts.append(f"{sample.temperature_c:.0f} °C")
        if sample.power_w is not None:
            parts.append(f"{sample.power_w:.0f} W")
        parts.append(
            f"memory {format_bytes(sample.memory_used_bytes)} / "
            f"{format_bytes(sample.memory_total_bytes)}"
        )
        self.live.setText(" · ".join(parts))

    def show_cpu_reading(self, rss_bytes: int | None, cpu_pct: float | None) -> None:
        """The live strip on the CPU: the engine process's memory and the CPU load."""
        parts = []
        if cpu_pct is not None:
            parts.append(f"CPU {cpu_pct:.0f}%")
        if rss_bytes is not None:
            parts.append(f"engine RSS {format_bytes(rss_bytes)}")
        self.live.setText(" · ".join(parts) or "—")


def _wrap(layout) -> QWidget:
    w = QWidget()
    layout.setContentsMargins(0, 0, 0, 0)
    w.setLayout(layout)
    return w
