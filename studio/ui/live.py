"""The live picture of a run: the loss, learning-rate and memory plots and the log.

`LiveView` takes the job's partial results (``JobController.eventReceived``), samples the
device and the engine process a few times a second (`studio.core.monitor.ResourceMonitor`),
and keeps the memory plot's estimate and capacity lines in step with the session. The plots
redraw on a timer, not per event. An opened bundle's logged steps are replayed into the same
plots (`show_history`).
"""

from __future__ import annotations

import time

from PySide6.QtCore import QObject, QTimer

from studio.core.events import (
    CheckpointSaved,
    EvalLogged,
    LogMessage,
    Paused,
    PhaseChanged,
    Resumed,
    StepLogged,
)
from studio.core.phases import phase_line
from studio.ui.binding import connect_while_alive

SAMPLE_INTERVAL_MS = 500
# Each tick redraws the next plot with new data, so no single turn repaints all three: every
# plot is still redrawn within about a third of a second.
REDRAW_INTERVAL_MS = 100


class LiveView(QObject):
    """Feeds ``loss_plot``, ``lr_plot``, ``vram_plot``, ``log`` and the hardware panel's live
    strip (``hardware``) from the session, the controller and the monitor."""

    def __init__(self, session, controller, *, loss_plot, lr_plot, vram_plot, log, hardware):
        super().__init__(controller)
        self.session = session
        self.controller = controller
        self.loss_plot, self.lr_plot, self.vram_plot = loss_plot, lr_plot, vram_plot
        self.plots = (loss_plot, lr_plot, vram_plot)
        self.log = log
        self.hardware = hardware
        self.monitor = None
        self._job_start = time.monotonic()
        self._logged_phase = None
        controller.eventReceived.connect(self._on_event)
        connect_while_alive(self, session.events.device, self._device_changed)
        connect_while_alive(self, session.events.estimate, self._show_reference_lines)
        connect_while_alive(self, session.events.job, self._job_changed)
        self.redraw_timer = QTimer(self, interval=REDRAW_INTERVAL_MS)
        self.redraw_timer.timeout.connect(self.redraw_next)
        self._next_plot = 0
        self.redraw_timer.start()
        self.sample_timer = QTimer(self, interval=SAMPLE_INTERVAL_MS)
        self.sample_timer.timeout.connect(self.sample)
        self.sample_timer.start()
        self._device_changed()

    # ------------------------------------------------------------------------- inputs
    def _job_changed(self, state, old) -> None:
        if state.active and not old.active:  # a job started
            self._job_start = time.monotonic()
            self._logged_phase = None
            if not self.session.run.resumed:
                self.loss_plot.clear()
                self.lr_plot.clear()
            self.vram_plot.clear()
            if self.monitor is not None:
                from studio.core.scaling import run_gpu_indices

                self.monitor.watch(run_gpu_indices(self.session.recipe, self.session.device))
            self._show_reference_lines()
            self.log.appendPlainText(
                f"Starting {'(resuming) ' if self.session.run.resumed else ''}"
                f"{self.session.recipe.model.source} -> {self.session.recipe.output.dir}"
            )
        elif not state.active:
            self.redraw()

    def _on_event(self, ev) -> None:
        if isinstance(ev, StepLogged):
            self.loss_plot.add_step(ev.step, ev.loss)
            self.lr_plot.add_step(ev.step, ev.learning_rate, ev.grad_norm)
            t = time.monotonic() - self._job_start
            self.vram_plot.add_torch(t, ev.cuda_allocated_bytes, ev.cuda_reserved_bytes)
        elif isinstance(ev, EvalLogged):
            self.loss_plot.add_eval(ev.step, ev.eval_loss)
            self.log.appendPlainText(f"step {ev.step}: eval loss {ev.eval_loss:.4f}")
        elif isinstance(ev, PhaseChanged):
            if ev.phase != self._logged_phase:  # progress within a phase is the run bar's
                self._logged_phase = ev.phase
                self.log.appendPlainText(phase_line(ev.phase, ev.message))
        elif isinstance(ev, CheckpointSaved):
            self.log.appendPlainText(f"step {ev.step}: checkpoint saved to {ev.path}")
        elif isinstance(ev, Paused):
            self.log.appendPlainText(f"Paused after step {ev.step}.")
        elif isinstance(ev, Resumed):
            self.log.appendPlainText(f"Resumed at step {ev.step}.")
        elif isinstance(ev, LogMessage):
            self.log.appendPlainText(f"[{ev.level}] {ev.message}")

    def show_history(self, events) -> None:
        """Replace the loss and learning-rate curves with a past run's logged steps."""
        self.loss_plot.clear()
        self.lr_plot.clear()
        for ev in events:
            if isinstance(ev, StepLogged):
                self.loss_plot.add_step(ev.step, ev.loss)
                self.lr_plot.add_step(ev.step, ev.learning_rate, ev.grad_norm)
            elif isinstance(ev, EvalLogged):
                self.loss_plot.add_eval(ev.step, ev.eval_loss)
        self.redraw()

    # ---------------------------------------------------------------------- the device
    def _device_changed(self, *_args) -> None:
        from studio.core.monitor import ResourceMonitor

        if self.monitor is not None:
            self.monitor.close()
        self.monitor = ResourceMonitor(self.session.device)
        if self.monitor.reason:
            self.log.appendPlainText(self.monitor.reason)
        self.vram_plot.set_cpu_mode(self.monitor.on_cpu)
        self._show_reference_lines()

    def _show_reference_lines(self, *_args) -> None:
        """The estimate and (on a GPU) the capacity as lines on the memory plot; none while
        there is no estimate. On the CPU the capacity is the whole RAM, which would flatten
        every other line."""
        est = self.session.estimate
        on_gpu = self.monitor is not None and not self.monitor.on_cpu
        self.vram_plot.set_estimate(est.total_bytes if est else None)
        self.vram_plot.set_capacity(est.capacity_bytes if (est and on_gpu) else None)

    def sample(self) -> None:
        """One reading of the device and the engine process (into the plot while a job runs)."""
        if self.monitor is None:
            return
        pid = self.controller.pid
        if pid is None and not self.monitor.reads_device:
            self.hardware.show_sample(None)
            return
        reading = self.monitor.sample(pid)
        self.hardware.show_sample(reading)
        if pid is not None:
            t = time.monotonic() - self._job_start
            # A run on several GPUs draws one used-memory line per GPU instead of the first's.
            used = None if reading.per_gpu_used else reading.device_used_bytes
            self.vram_plot.add_device(t, used, reading.process_bytes)
            self.vram_plot.add_gpus(t, reading.per_gpu_used)

    def redraw(self) -> None:
        """Redraw every plot with new data now (a job's end, a past run shown)."""
        for plot in self.plots:
            plot.refresh()

    def redraw_next(self) -> None:
        """Redraw the next plot, in turn, that has new data (the timer's tick)."""
        for offset in range(len(self.plots)):
            plot = self.plots[(self._next_plot + offset) % len(self.plots)]
            if plot.dirty:
                self._next_plot = (self._next_plot + offset + 1) % len(self.plots)
                plot.refresh()
                return

    def build_plots(self) -> None:
        for plot in self.plots:
            plot.build()

    def build_plots_soon(self) -> None:
        """Build the plots over the next event-loop turns, one plot per turn, so no turn is
        long (the deferred build calls this once pyqtgraph is imported, `studio.ui.deferred`)."""
        pending = [plot for plot in self.plots if not plot.built]

        def next_plot() -> None:
            if pending:
                pending.pop(0).build()
                QTimer.singleShot(0, self, next_plot)

        QTimer.singleShot(0, self, next_plot)

    def close(self) -> None:
        self.sample_timer.stop()
        self.redraw_timer.stop()
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None
