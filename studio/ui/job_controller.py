"""The `JobController`: supervises one engine process from a QThread and relays its events
to the GUI thread as Qt signals.

The worker loops on `EngineRunner.poll` in its own thread. Pause, resume, stop and kill are
called on the runner directly from the GUI thread (they are thread-safe control messages to
the child), never as queued slots on the busy worker. The controller owns the thread's whole
life: it quits and waits for it before letting go of the thread and the worker.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot

from studio.core.events import Failed, Finished, PhaseChanged, Stopped

POLL_TIMEOUT_S = 0.2


class _Worker(QObject):
    """Lives on the job thread: starts the runner and forwards its events until it ends."""

    event = Signal(object)
    ended = Signal(object)  # the terminal event (one of TERMINAL_EVENTS)

    def __init__(self, runner) -> None:
        super().__init__()
        self.runner = runner

    @Slot()
    def run(self) -> None:
        runner = self.runner
        last_phase = "starting"
        terminal = None
        try:
            runner.start()
            while terminal is None:
                events = runner.poll(POLL_TIMEOUT_S)
                for ev in events:
                    if isinstance(ev, PhaseChanged):
                        last_phase = ev.phase
                    if isinstance(ev, (Finished, Stopped, Failed)):
                        terminal = ev
                    self.event.emit(ev)
                if terminal is None and not events and not runner.is_running:
                    # The runner queues the child's last events (or a synthesized Failed)
                    # once the process is gone; collect them before giving up.
                    runner.join(10)
                    for ev in runner.poll(0.5):
                        if isinstance(ev, (Finished, Stopped, Failed)):
                            terminal = ev
                        self.event.emit(ev)
                    if terminal is None:
                        terminal = getattr(runner, "terminal_event", None) or Failed(
                            phase=last_phase,
                            error_type="EngineExited",
                            message=(
                                f"The training process ended unexpectedly (exit code "
                                f"{runner.exitcode}) while {last_phase}. A crash without a "
                                "message is often the system running out of memory: try a "
                                "smaller batch size or sequence length."
                            ),
                        )
                        self.event.emit(terminal)
            runner.join(30)
        except BaseException as exc:  # noqa: BLE001 - a supervisor error must reach the user
            import traceback

            terminal = Failed(
                phase=last_phase,
                error_type=type(exc).__name__,
                message=f"Could not supervise the training process: {exc}",
                details=traceback.format_exc(),
            )
            self.event.emit(terminal)
            try:
                if runner.is_running:
                    runner.kill()
            except Exception:  # noqa: BLE001
                pass
        self.ended.emit(terminal)


ENGINE_NICENESS = 5


class JobController(QObject):
    """Starts one job at a time and relays its events (``eventReceived``) and its end
    (``jobEnded(terminal_event)``) to the GUI thread; ``stateChanged(state)`` with state one
    of "idle", "running", "pausing", "paused", "stopping"."""

    eventReceived = Signal(object)
    jobEnded = Signal(object)
    stateChanged = Signal(str)

    def __init__(self, parent=None, *, runner_factory=None) -> None:
        super().__init__(parent)
        self._runner_factory = runner_factory
        self._thread: QThread | None = None
        self._worker: _Worker | None = None
        self.runner = None
        self.state = "idle"
        # Creating a runner starts multiprocessing's helper process (~0.4 s): do it now, off
        # the GUI thread, so Start does not freeze the window.
        from studio.core.engine.runner import prepare_process_machinery
        from studio.ui.background import run_in_background

        run_in_background(lambda _progress: prepare_process_machinery(), owner=self)

    @property
    def is_active(self) -> bool:
        """A job is running (or its thread has not been released yet)."""
        return self._thread is not None

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
            from studio.core.engine.runner import EngineRunner

            # Lower priority for the engine: the window must stay smooth while it trains.
            runner = EngineRunner(
                recipe, resume=resume, overwrite=overwrite, niceness=ENGINE_NICENESS
            )
        self.runner = runner
        thread = QThread(self)
        thread.setObjectName("engine-supervisor")
        worker = _Worker(runner)
        worker.moveToThread(thread)
        queued = Qt.ConnectionType.QueuedConnection
        worker.event.connect(self._on_event, queued)
        worker.ended.connect(self._on_ended, queued)
        thread.started.connect(worker.run)
        self._thread, self._worker = thread, worker
        self._set_state("running")
        thread.start()

    def pause(self) -> None:
        if self.runner is not None and self.state == "running":
            self.runner.pause()
            self._set_state("pausing")

    def resume(self) -> None:
        if self.runner is not None and self.state in ("paused", "pausing"):
            self.runner.resume()
            self._set_state("running")

    def stop(self) -> None:
        """Ask the job to stop after the current step, leaving a checkpoint."""
        if self.runner is not None and self.state not in ("idle", "stopping"):
            self.runner.stop()
            self._set_state("stopping")

    def kill(self) -> None:
        """End a job that does not answer (no checkpoint is written)."""
        if self.runner is not None:
            self.runner.kill()

    def shutdown(self, timeout_ms: int = 60000) -> None:
        """Kill any job and release the thread (for quitting the application)."""
        if self._thread is None:
            return
        if self.runner is not None and self.runner.is_running:
            self.runner.kill()
        self._release(timeout_ms)

    @Slot(object)
    def _on_event(self, event) -> None:
        from studio.core.events import Paused, Resumed

        if isinstance(event, Paused):
            self._set_state("paused")
        elif isinstance(event, Resumed) and self.state != "stopping":
            self._set_state("running")
        self.eventReceived.emit(event)

    @Slot(object)
    def _on_ended(self, terminal) -> None:
        self._release()
        self._set_state("idle")
        self.jobEnded.emit(terminal)

    def _release(self, timeout_ms: int = 60000) -> None:
        thread, worker = self._thread, self._worker
        if thread is None:
            return
        thread.quit()
        thread.wait(timeout_ms)
        self._thread = self._worker = None
        if worker is not None:
            worker.deleteLater()
        thread.deleteLater()

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.stateChanged.emit(state)
