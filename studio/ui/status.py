"""The run bar: Start / Pause-Resume / Stop / Save bundle, phase progress and the status line,
plus the inline panel that shows a failed job."""

from __future__ import annotations

import html

from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QStyle,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from studio.core.events import PHASES
from studio.core.units import format_duration

PHASE_NAMES = {
    "starting": "Starting",
    "resolving": "Resolving the model",
    "converting": "Converting the model",
    "loading": "Loading and quantizing",
    "quantizing": "Quantizing",
    "preparing": "Preparing for k-bit training",
    "applying_lora": "Adding LoRA adapters",
    "tokenizing": "Tokenizing the dataset",
    "training": "Training",
    "saving": "Saving the bundle",
}


class RunBar(QWidget):
    """Buttons, a progress bar and a one-line status of the running job."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.start = QPushButton("Start", objectName="startButton")
        self.start.setToolTip("Start training with these settings.")
        self.pause = QPushButton("Pause", objectName="pauseButton")
        self.pause.setToolTip("Hold between optimizer steps; Resume continues.")
        self.stop = QPushButton("Stop", objectName="stopButton")
        self.stop.setToolTip("Stop after the current step and keep a checkpoint to resume from.")
        self.save = QPushButton("Save bundle…", objectName="saveBundleButton")
        self.save.setToolTip("Copy the finished adapter bundle to a folder of your choice.")
        self.progress = QProgressBar(objectName="jobProgress")
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.phase = QLabel("Ready.", objectName="jobPhaseLabel")
        self.status = QLabel("", objectName="jobStatusLabel")
        row = QHBoxLayout()
        for b in (self.start, self.pause, self.stop):
            row.addWidget(b)
        row.addWidget(self.progress, 1)
        row.addWidget(self.save)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        line = QHBoxLayout()
        line.addWidget(self.phase)
        line.addStretch(1)
        line.addWidget(self.status)
        layout.addLayout(line)
        self.start.setIcon(self._icon("SP_MediaPlay"))
        self.stop.setIcon(self._icon("SP_MediaStop"))
        self.save.setIcon(self._icon("SP_DialogSaveButton"))
        self.set_state("idle")
        self.save.setEnabled(False)

    def _icon(self, name: str):
        return self.style().standardIcon(getattr(QStyle.StandardPixmap, name))

    def set_state(self, state: str) -> None:
        """idle, running, pausing, paused or stopping."""
        active = state != "idle"
        self.start.setEnabled(not active)
        self.pause.setEnabled(state in ("running", "paused"))
        paused = state in ("paused", "pausing")
        self.pause.setText("Resume" if paused else "Pause")
        self.pause.setIcon(self._icon("SP_MediaPlay" if paused else "SP_MediaPause"))
        self.stop.setEnabled(state in ("running", "pausing", "paused", "stopping"))
        self.stop.setText("Kill" if state == "stopping" else "Stop")
        self.stop.setToolTip(
            "The job is stopping after the current step; Kill ends it at once (no checkpoint)."
            if state == "stopping"
            else "Stop after the current step and keep a checkpoint to resume from."
        )

    def show_phase(self, phase: str, message: str, progress: float | None) -> None:
        name = PHASE_NAMES.get(phase, phase.replace("_", " ").capitalize())
        number = f" ({PHASES.index(phase) + 1}/{len(PHASES)})" if phase in PHASES else ""
        self.phase.setText(f"<b>{name}</b>{number}{' — ' + message if message else ''}")
        if progress is None:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(max(0.0, min(1.0, progress)) * 1000))
            self.progress.setFormat(f"{progress * 100:.0f}%")

    def show_training(self) -> None:
        """The phase line while steps arrive (a phase message such as "starting" is stale)."""
        number = PHASES.index("training") + 1
        self.phase.setText(f"<b>{PHASE_NAMES['training']}</b> ({number}/{len(PHASES)})")

    def show_step(self, ev) -> None:
        total = ev.max_steps if ev.max_steps and ev.max_steps > 0 else None
        if total:
            self.progress.setRange(0, total)
            self.progress.setValue(ev.step)
            self.progress.setFormat(f"step {ev.step}/{total}")
        steps = f"step {ev.step}/{total}" if total else f"step {ev.step}"
        self.status.setText(
            f"{steps} · loss {ev.loss:.4f} · {ev.tokens_per_second:,.0f} tokens/s · "
            f"elapsed {format_duration(ev.elapsed_s)} · ETA {format_duration(ev.eta_s)}"
        )

    def show_done(self, text: str, fraction: float | None = 1.0) -> None:
        self.phase.setText(text)
        self.progress.setRange(0, 1000)
        self.progress.setValue(int((fraction or 0) * 1000))


class FailurePanel(QFrame):
    """Inline: the failed phase, the message to act on, and the details on demand."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setObjectName("failurePanel")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setStyleSheet("#failurePanel { background: #fdecea; border: 1px solid #e57373; }")
        self.title = QLabel(objectName="failureTitleLabel")
        self.message = QLabel(objectName="failureMessageLabel")
        self.message.setWordWrap(True)
        self.details = QPlainTextEdit(objectName="failureDetails")
        self.details.setReadOnly(True)
        self.details.setMaximumHeight(160)
        self.details.hide()
        toggle = QToolButton(text="Details")
        toggle.setCheckable(True)
        toggle.toggled.connect(self.details.setVisible)
        close = QToolButton(text="✕")
        close.setToolTip("Dismiss")
        close.clicked.connect(self.hide)
        top = QHBoxLayout()
        top.addWidget(self.title, 1)
        top.addWidget(toggle)
        top.addWidget(close)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.message)
        layout.addWidget(self.details)
        self.hide()

    def show_failure(self, phase: str, error_type: str, message: str, details: str) -> None:
        name = PHASE_NAMES.get(phase, phase)
        self.title.setText(f"<b>The job failed while: {html.escape(name)}</b> ({error_type})")
        self.message.setText(message)
        self.details.setPlainText(details or "(no details)")
        self.show()
