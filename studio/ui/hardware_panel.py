"""The hardware panel: which device the run is for (``training.device``), its facts, and a
live strip of readings."""

from __future__ import annotations

from PySide6.QtWidgets import QFormLayout, QGroupBox, QHBoxLayout, QLabel, QWidget

from studio.core.units import format_bytes
from studio.ui.binding import ComboBox, ElidedLabel, connect_while_alive

BADGE_STYLE = "QLabel { border-radius: 4px; padding: 1px 6px; color: white; background: %s; }"


class HardwarePanel(QGroupBox):
    """The discovered (or simulated) GPUs plus the CPU in ``gpuCombo``; choosing one sets the
    session's ``training.device``; ``auto`` shows the device it resolves to."""

    def __init__(self, session, parent=None) -> None:
        super().__init__("Hardware", parent)
        self.session = session
        discovery = session.discovery
        self.combo = ComboBox(objectName="gpuCombo")
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
        self.live = ElidedLabel("—", objectName="gpuLiveLabel")

        notes = []
        if session.discovery_error:
            notes.append(f"Simulated GPUs ignored: {session.discovery_error}")
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
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.combo, 1)
        top.addWidget(self.badge)
        row = QWidget()
        row.setLayout(top)
        form = QFormLayout(self)
        form.addRow("Device", row)
        form.addRow("", self.facts)
        form.addRow("Live", self.live)
        form.addRow(self.notice)

        self.combo.currentIndexChanged.connect(self._chosen)
        connect_while_alive(self, session.events.device, self._show_device)
        self._show_device(session.device)

    def _chosen(self, _index: int) -> None:
        request = self.combo.currentData()
        if request != self._device_request(self.session.device):
            self.session.edit("training.device", request)

    @staticmethod
    def _device_request(device) -> str | None:
        if device is None:
            return None
        return "cpu" if device.gpu is None else f"cuda:{device.gpu.index}"

    def _show_device(self, device, _old=None) -> None:
        index = self.combo.findData(self._device_request(device))
        if index >= 0:
            blocked = self.combo.blockSignals(True)
            self.combo.setCurrentIndex(index)
            self.combo.blockSignals(blocked)
        gpu = device.gpu if device is not None else None
        if device is None:
            self.facts.setText(self.session.device_error)
            self.badge.setText("")
        elif gpu is None:
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

    def show_sample(self, sample) -> None:
        """Show one `ResourceSample` (or None: no reading) in the live strip."""
        if sample is None:
            self.live.setText("—")
            return
        parts = []
        if sample.cpu_pct is not None:
            parts.append(f"CPU {sample.cpu_pct:.0f}%")
        if sample.utilization_pct is not None:
            parts.append(f"util {sample.utilization_pct:.0f}%")
        if sample.temperature_c is not None:
            parts.append(f"{sample.temperature_c:.0f} °C")
        if sample.power_w is not None:
            parts.append(f"{sample.power_w:.0f} W")
        if sample.device_used_bytes is not None:
            parts.append(
                f"memory {format_bytes(sample.device_used_bytes)} / "
                f"{format_bytes(sample.device_total_bytes)}"
            )
        if sample.on_cpu and sample.process_bytes is not None:
            parts.append(f"engine RSS {format_bytes(sample.process_bytes)}")
        self.live.setText(" · ".join(parts) or "—")
