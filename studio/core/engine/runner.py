"""The parent side of a training job: start the engine process, relay its events, steer it.

`EngineRunner` is Qt-free; the CLI polls it, the GUI's JobController polls it from a worker
thread. The child is a ``multiprocessing`` *spawn* process running `job.run_job`: CUDA memory,
the CUDA context and any native crash die with it. Events come back over a one-way pipe and a
reader thread queues them, so the child never waits on a slow consumer. Control goes the other
way through `control.ControlChannel`.

Every run ends with exactly one terminal event (`Finished`, `Stopped` or `Failed`): when the
child ends without sending one (killed, crashed in native code), the runner adds a `Failed`
saying that the engine process ended unexpectedly and with which exit code.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import queue
import signal
import threading

from studio.core.engine.control import ControlChannel
from studio.core.events import TERMINAL_EVENTS, Failed, LogMessage, PhaseChanged
from studio.core.phases import Phase, phase_doing
from studio.core.recipe import Recipe

# Strong references: a runner dropped by its owner must still be found (and its child killed)
# at exit, or multiprocessing's exit handler would wait for the child forever.
_LIVE_RUNNERS: set = set()


_exit_hook_registered = False


def _register_exit_hook() -> None:
    """Register `_kill_orphans` after multiprocessing registered its own exit handler (which
    joins every child): atexit runs the later registration first."""
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_kill_orphans)
        _exit_hook_registered = True


def _kill_orphans() -> None:
    """A front end that exits while a job runs must not leave the engine process behind."""
    for runner in list(_LIVE_RUNNERS):
        if runner.is_running:
            runner.kill()


def prepare_process_machinery() -> None:
    """Start multiprocessing's resource tracker now, from any thread.

    The first multiprocessing lock a process makes starts that helper process, which takes
    about 0.4 s; a front end calls this early in the background so that creating an
    `EngineRunner` later (on its GUI thread) is instant.
    """
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()


class EngineRunner:
    """Runs one recipe in a child process; see the module docstring.

    ``resume`` continues from the last checkpoint in ``<output.dir>.checkpoints``;
    ``overwrite`` allows replacing an existing bundle folder (and discarding checkpoints of
    an earlier run). ``niceness`` > 0 lowers the engine process's CPU priority by that much
    (POSIX ``nice``), so a window beside it stays responsive on a machine with few cores.
    """

    def __init__(
        self,
        recipe: Recipe,
        *,
        resume: bool = False,
        overwrite: bool = False,
        niceness: int = 0,
    ):
        self.recipe = recipe
        self.niceness = niceness
        self.resume_requested = resume
        self.overwrite = overwrite
        self._ctx = multiprocessing.get_context("spawn")
        self._control = ControlChannel(self._ctx)
        self._process = None
        self._reader: threading.Thread | None = None
        self._events: queue.Queue = queue.Queue()
        self._terminal = None
        self._last_phase = Phase.STARTING
        self._killed = False
        self._exitcode: int | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the engine process; raises RuntimeError if this runner was started before."""
        if self._process is not None:
            raise RuntimeError("this EngineRunner was already started; make a new one")
        from studio.core.engine.job import run_job

        target = run_job
        if self.recipe.distributed.launched:  # several processes: accelerate launch (launch.py)
            from studio.core.engine.launch import run_launcher as target
        receiver, sender = self._ctx.Pipe(duplex=False)
        self._process = self._ctx.Process(
            target=target,
            args=(
                self.recipe,
                self.resume_requested,
                self.overwrite,
                sender,
                self._control,
                os.getpid(),
                self.niceness,
            ),
            name="qlora-studio-engine",
        )
        # Block SIGINT while the child starts: a Ctrl-C in the terminal reaches the whole
        # process group, and the child must only ever stop through a control message. The
        # child inherits the mask, ignores SIGINT and unblocks it; the parent gets any
        # pending Ctrl-C once unblocked here.
        masked = hasattr(signal, "pthread_sigmask")
        if masked:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self._process.start()
        finally:
            if masked:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        # Only the child holds the write end now, so its exit gives the reader EOF.
        sender.close()
        _LIVE_RUNNERS.add(self)
        _register_exit_hook()
        self._reader = threading.Thread(
            target=self._read, args=(receiver,), name="qlora-studio-engine-events", daemon=True
        )
        self._reader.start()

    def _read(self, receiver) -> None:
        from multiprocessing.connection import wait

        sentinel = self._process.sentinel
        while True:
            ready = wait([receiver, sentinel])
            if receiver in ready:
                try:
                    event = receiver.recv()
                except (EOFError, OSError):
                    break
                except Exception as exc:  # an event that cannot be unpickled: say so, go on
                    event = LogMessage("warning", f"an engine event could not be read: {exc}")
                self._receive(event)
                continue
            # The process ended (a grandchild may still hold the pipe open): drain and stop.
            try:
                while receiver.poll(0):
                    self._receive(receiver.recv())
            except (EOFError, OSError):
                pass
            break
        receiver.close()
        # This thread alone waits for (reaps) the child: a second waiter could see the exit
        # status vanish under it and report no exit code.
        self._process.join()
        self._exitcode = self._process.exitcode
        with self._lock:
            missing = self._terminal is None
            if missing:
                self._terminal = self._synthesized_failure(self._exitcode)
        if missing:
            self._events.put(self._terminal)
        _LIVE_RUNNERS.discard(self)

    def _receive(self, event) -> None:
        if isinstance(event, PhaseChanged):
            self._last_phase = event.phase
        if isinstance(event, TERMINAL_EVENTS):
            with self._lock:
                if self._terminal is None:
                    self._terminal = event
        self._events.put(event)

    def _synthesized_failure(self, code: int | None) -> Failed:
        if code is not None and code < 0:
            try:
                how = f"signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"signal {-code}"
            detail = f"exit code {code} ({how})"
        else:
            detail = f"exit code {code}"
        if self._killed:
            return Failed(
                self._last_phase,
                "EngineKilled",
                f"The job was killed while {phase_doing(self._last_phase)} ({detail}). Checkpoints already "
                "written are kept: run it again with resume to continue from the last one.",
            )
        return Failed(
            self._last_phase,
            "EngineCrashed",
            f"The engine process ended unexpectedly with {detail} while "
            f"{phase_doing(self._last_phase)}. "
            "This is usually a crash in native code or the system running out of memory; "
            "checkpoints already written are kept, so resume can continue from the last one.",
        )

    def poll(self, timeout: float = 0.0) -> list:
        """The events received since the last poll; waits up to ``timeout`` s for the first."""
        events = []
        try:
            events.append(
                self._events.get(timeout=timeout) if timeout > 0 else self._events.get_nowait()
            )
        except queue.Empty:
            return events
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    # --------------------------------------------------------------------------- control
    def pause(self) -> None:
        """Hold the job after the current optimizer step (it emits Paused)."""
        self._control.request_pause()

    def resume(self) -> None:
        """Let a paused job continue (it emits Resumed)."""
        self._control.request_resume()

    def stop(self) -> None:
        """Stop after the current step, saving a checkpoint; the job ends with Stopped."""
        self._control.request_stop()

    def kill(self) -> None:
        """End the engine process at once (SIGKILL); the runner then reports Failed."""
        if self.is_running:
            self._killed = True
            self._process.kill()

    # ------------------------------------------------------------------------------ state
    @property
    def is_running(self) -> bool:
        """True from `start` until the engine process has ended."""
        return self._reader is not None and self._reader.is_alive()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def exitcode(self) -> int | None:
        """The engine process's exit code once it ended (negative: killed by that signal)."""
        return self._exitcode

    @property
    def terminal_event(self):
        """The run's Finished/Stopped/Failed once it arrived (or was synthesized), else None."""
        with self._lock:
            return self._terminal

    def join(self, timeout: float | None = None) -> None:
        """Wait for the engine process to end (and its last events to be queued)."""
        if self._reader is not None:
            self._reader.join(timeout)
