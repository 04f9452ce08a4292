"""The `JobController`: runs one engine process for the window and relays its events.

The engine runner (`studio.core.engine.EngineRunner`) already queues the child's events on a
reader thread and guarantees one terminal event per run (it synthesizes a `Failed` when the
child dies without one). So the controller needs no thread of its own: a timer on the GUI
thread takes what `runner.poll(0)` has (it never blocks), hands each event to the session
(`Session.apply_event`: job state, phase, progress, outcome) and to ``eventReceived`` (the
partial results: plots and log), and emits ``jobEnded`` with the terminal event.

Pause, resume, stop and kill are control messages to the child; the session shows at once that
they were asked for (pausing, stopping), and the child's events confirm them.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, QTimer, Signal

from studio.core.events import TERMINAL_EVENTS
from studio.core.phases import JobState

POLL_INTERVAL_MS = 50
ENGINE_NICENESS = 10  # the window must stay smooth while the engine uses every core


class JobController(QObject):
    """Starts one job at a time for ``session``; see the module docstring."""

    eventReceived = Signal(object)
    jobEnded = Signal(object)

    def __init__(self, session, parent=None, *, runner_factory=None) -> None:
        super().__init__(parent)
        self.session = session
        self._runner_factory = runner_factory
        self.runner = None
        self._timer = QTimer(self, interval=POLL_INTERVAL_MS)
        self._timer.timeout.connect(self._poll)
        # Creating a runner starts multiprocessing's helper process (~0.4 s): do it now, off
        # the GUI thread, so Start does not freeze the window.
        from studio.core.engine import prepare_process_machinery
        from studio.ui.background import run_in_background

        run_in_background(lambda _progress: prepare_process_machinery(), owner=self)

    @property
    def is_active(self) -> bool:
        """A job was started and its terminal event has not been handled yet."""
        return self.runner is not None

    @property
    def pid(self) -> int | None:
        return self.runner.pid if self.runner is not None else None

    def start(self, recipe, *, resume: bool = False, overwrite: bool = False) -> None:
        """Start a job for ``recipe``; raises RuntimeError if one is active."""
        if self.is_active:
            raise RuntimeError("a job is already running")
        if self._runner_factory is not None:
            runner = self._runner_factory(recipe, resume=resume, overwrite=overwrite)
        else:
            from studio.core.engine import EngineRunner

            runner = EngineRunner(
                recipe, resume=resume, overwrite=overwrite, niceness=ENGINE_NICENESS
            )
        runner.start()
        self.runner = runner
        self.session.job_started(resumed=resume)
        self._timer.start()

    def pause(self) -> None:
        if self.runner is not None and self.session.job is JobState.RUNNING:
            self.runner.pause()
            self.session.job_pausing()

    def resume(self) -> None:
        if self.runner is not None and self.session.job.paused:
            self.runner.resume()
            self.session.job_resuming()

    def stop(self) -> None:
        """Ask the job to stop after the current step, leaving a checkpoint."""
        if self.runner is not None and self.session.job not in (JobState.IDLE, JobState.STOPPING):
            self.runner.stop()
            self.session.job_stopping()

    def kill(self) -> None:
        """End the engine process at once (no checkpoint is written)."""
        if self.runner is not None:
            self.session.job_stopping()
            self.runner.kill()

    def shutdown(self) -> None:
        """Kill any job and forget it (the application quits)."""
        runner = self.runner
        if runner is not None and runner.is_running:
            runner.kill()
            runner.join(30)
        self._timer.stop()
        self.runner = None

    def _poll(self) -> None:
        runner = self.runner
        if runner is None:
            return
        for event in runner.poll(0):
            self.session.apply_event(event)
            self.eventReceived.emit(event)
            if isinstance(event, TERMINAL_EVENTS):
                self._timer.stop()
                self.runner = None  # the child exits by itself after its terminal event
                self.jobEnded.emit(event)
                return
