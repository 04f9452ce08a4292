"""The run bar (Start / Pause-Resume / Stop / Save bundle, the progress bar, the phase and the
status line) and the inline panel that shows a failed job, both drawn from the session:
``session.job`` decides what the buttons may do, ``session.run`` what the lines say, and
`Session.start_blockers` why Start is disabled. Texts elide rather than widen the window."""

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

from studio.core.events import Failed, Finished, Stopped
from studio.core.phases import JobState, phase_label, phase_line
from studio.core.units import format_bytes, format_duration
from studio.ui.binding import ElidedLabel, connect_while_alive

BLOCKED_STYLE = "QLabel { color: #9e6a03; }"


def outcome_line(outcome) -> str:
    """One line for a job's terminal event."""
    if isinstance(outcome, Finished):
        loss = f", final loss {outcome.final_loss:.4f}" if outcome.final_loss is not None else ""
        peak = (
            f" · measured peak {format_bytes(outcome.peak_bytes)} vs estimate "
            f"{format_bytes(outcome.estimate_bytes)}"
            if outcome.peak_bytes is not None
            else ""
        )
        return f"Finished at step {outcome.step}{loss}. Bundle: {outcome.bundle_dir}{peak}"
    if isinstance(outcome, Stopped):
        if outcome.checkpoint:
            return f"Stopped at step {outcome.step}; checkpoint kept. Start resumes it."
        return f"Stopped at step {outcome.step}, before the first checkpoint."
    if isinstance(outcome, Failed):
        return f"Failed while {phase_label(outcome.phase).lower()} ({outcome.error_type})."
    return ""


class RunBar(QWidget):
    """``startButton``, ``pauseButton``, ``stopButton``, ``saveBundleButton``, ``jobProgress``,
    ``jobPhaseLabel``, ``jobStatusLabel`` and ``startBlockedLabel``."""

    def __init__(self, session, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        self.start = QPushButton("Start", objectName="startButton")
        self.pause = QPushButton("Pause", objectName="pauseButton")
        self.pause.setToolTip("Hold between optimizer steps; Resume continues.")
        self.stop = QPushButton("Stop", objectName="stopButton")
        self.save = QPushButton("Save bundle…", objectName="saveBundleButton")
        self.save.setToolTip("Copy the finished adapter bundle to a folder of your choice.")
        self.progress = QProgressBar(objectName="jobProgress")
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.phase = ElidedLabel("Ready.", objectName="jobPhaseLabel")
        self.status = ElidedLabel("", objectName="jobStatusLabel")
        self.blocked = ElidedLabel("", objectName="startBlockedLabel")
        self.blocked.setStyleSheet(BLOCKED_STYLE)
        row = QHBoxLayout()
        for b in (self.start, self.pause, self.stop):
            row.addWidget(b)
        row.addWidget(self.progress, 1)
        row.addWidget(self.save)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.blocked)
        line = QHBoxLayout()
        line.addWidget(self.phase, 3)
        line.addWidget(self.status, 2)
        layout.addLayout(line)
        self.start.setIcon(self._icon("SP_MediaPlay"))
        self.stop.setIcon(self._icon("SP_MediaStop"))
        self.save.setIcon(self._icon("SP_DialogSaveButton"))
        for signal in (
            session.events.job,
            session.events.model,
            session.events.dataset,
            session.events.device_error,
            session.events.recipe_problem,
            session.events.bundle,
        ):
            connect_while_alive(self, signal, self._show_buttons)
            connect_while_alive(self, signal, self._show_run)
        connect_while_alive(self, session.events.run, self._show_run)
        connect_while_alive(self, session.events.job, self._show_run)
        self._show_buttons()
        self._show_run()

    def _icon(self, name: str):
        return self.style().standardIcon(getattr(QStyle.StandardPixmap, name))

    def _show_buttons(self, *_args) -> None:
        session = self.session
        state = session.job
        blockers = session.start_blockers()
        self.start.setEnabled(not blockers)
        shown = [b for b in blockers if state is JobState.IDLE]
        self.blocked.setText(" ".join(shown))
        self.blocked.setVisible(bool(shown))
        self.start.setToolTip(
            " ".join(blockers) if blockers else "Start training with these settings."
        )
        self.pause.setEnabled(state in (JobState.RUNNING, JobState.PAUSED))
        self.pause.setText("Resume" if state.paused else "Pause")
        self.pause.setIcon(self._icon("SP_MediaPlay" if state.paused else "SP_MediaPause"))
        self.stop.setEnabled(state.active)
        self.stop.setText("Kill" if state is JobState.STOPPING else "Stop")
        self.stop.setToolTip(
            "The job is stopping after the current step; Kill ends it at once (no checkpoint)."
            if state is JobState.STOPPING
            else "Stop after the current step and keep a checkpoint to resume from."
        )
        self.save.setEnabled(state is JobState.IDLE and session.bundle is not None)

    def _show_run(self, *_args) -> None:
        run, state = self.session.run, self.session.job
        if run.outcome is not None:
            self.phase.setText(outcome_line(run.outcome))
            self.status.setText("")
        elif state is JobState.PAUSING:
            self.phase.setText("Pausing after the current step…")
        elif state is JobState.PAUSED:
            self.phase.setText("Paused — Resume continues, Stop keeps a checkpoint.")
        elif state is JobState.STOPPING:
            self.phase.setText("Stopping after the current step (a checkpoint is kept)…")
        elif run.phase is not None:
            self.phase.setText(phase_line(run.phase, run.message))
        else:
            self.phase.setText("" if self.session.start_blockers() else "Ready.")
        step = run.last_step
        if step is not None and run.outcome is None:
            total = step.max_steps if step.max_steps and step.max_steps > 0 else None
            steps = f"step {step.step}/{total}" if total else f"step {step.step}"
            eta = f" · ETA {format_duration(step.eta_s)}" if state is JobState.RUNNING else ""
            self.status.setText(
                f"{steps} · loss {step.loss:.4f} · {step.tokens_per_second:,.0f} tokens/s · "
                f"elapsed {format_duration(step.elapsed_s)}{eta}"
            )
        elif run.outcome is None:
            self.status.setText("")
        if run.progress is None:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(max(0.0, min(1.0, run.progress)) * 1000))
        self.progress.setFormat(
            f"step {step.step}/{step.max_steps}"
            if step is not None and step.max_steps and step.max_steps > 0
            else ""
        )


class FailurePanel(QFrame):
    """Inline: the failed phase, the message to act on, and the details on demand. Shown for
    the session's failed job; gone when a new job starts or the model source changes."""

    def __init__(self, session, parent=None) -> None:
        super().__init__(parent)
        self.session = session
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
        close = QToolButton(text="✕", objectName="failureDismissButton")
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
        connect_while_alive(self, session.events.run, self._show)
        connect_while_alive(self, session.events.recipe, self._recipe_changed)

    def _show(self, run, old=None) -> None:
        failed = run.outcome if isinstance(run.outcome, Failed) else None
        if failed is None:
            self.hide()
            return
        if old is not None and old.outcome is failed:
            return
        self.show_failure(failed.phase, failed.error_type, failed.message, failed.details)

    def _recipe_changed(self, recipe, old) -> None:
        if recipe.model.source != old.model.source:
            self.hide()

    def show_failure(self, phase, error_type: str, message: str, details: str) -> None:
        self.title.setText(
            f"<b>The job failed while: {html.escape(phase_label(phase))}</b> ({error_type})"
        )
        self.message.setText(message)
        self.details.setPlainText(details or "(no details)")
        self.show()
