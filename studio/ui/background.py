"""Run heavy work (imports of torch/transformers, model conversion) off the GUI thread.

`run_in_helper(fn, *args, ...)` runs ``fn(*args, progress)`` in the helper process
(`studio.core.helper`): for work that would hold the GIL for long (importing torch, loading a
tokenizer), so that the window never waits for it. `run_in_background(fn, ...)` runs
``fn(progress)`` on the global QThreadPool and delivers
its result, its error or its progress reports to the GUI thread through Qt signals (queued,
because the `Task` that carries them lives in the GUI thread). ``progress(message, fraction)``
may be called from the worker; ``fraction`` is None when unknown.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

import shiboken6
from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

_live_tasks: set[Task] = set()


class Task(QObject):
    """One piece of background work; its signals arrive in the thread that created it."""

    succeeded = Signal(object)
    failed = Signal(object, str)  # the exception, the formatted traceback
    progressed = Signal(str, object)  # message, fraction 0..1 or None
    done = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.cancelled = False

    def cancel(self) -> None:
        """Drop the result when it arrives (the work itself cannot be interrupted)."""
        self.cancelled = True


class _Runnable(QRunnable):
    def __init__(self, task: Task, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.task = task
        self.fn = fn
        self.setAutoDelete(True)

    def run(self) -> None:
        task = self.task

        def emit(signal_name: str, *args) -> None:
            # The application may quit (deleting the Task) while the work still runs; the
            # result then has nobody to go to.
            if shiboken6.isValid(task):
                getattr(task, signal_name).emit(*args)

        try:
            result = self.fn(lambda message, fraction=None: emit("progressed", message, fraction))
        except BaseException as exc:  # noqa: BLE001 - reported to the GUI, never lost
            emit("failed", exc, traceback.format_exc())
        else:
            emit("succeeded", result)
        emit("done")


def run_in_background(
    fn: Callable[[Callable[[str, float | None], None]], Any],
    *,
    on_result: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException, str], None] | None = None,
    on_progress: Callable[[str, float | None], None] | None = None,
    on_done: Callable[[], None] | None = None,
    owner: QObject | None = None,
) -> Task:
    """Start ``fn(progress)`` in the thread pool; callbacks run on the GUI thread.

    Callbacks are skipped once the returned task is cancelled (a newer request replaced it)
    or once ``owner`` (the widget the callbacks update) has been deleted. Call from the GUI
    thread.
    """
    task = Task()
    _live_tasks.add(task)

    def alive() -> bool:
        return not task.cancelled and (owner is None or shiboken6.isValid(owner))

    def guarded(callback):
        def call(*args):
            if callback is not None and alive():
                callback(*args)

        return call

    task.succeeded.connect(guarded(on_result))
    task.failed.connect(guarded(on_error))
    task.progressed.connect(guarded(on_progress))

    def finish():
        _live_tasks.discard(task)
        if on_done is not None and alive():
            on_done()

    task.done.connect(finish)
    QThreadPool.globalInstance().start(_Runnable(task, fn))
    return task


_helper = None


def helper():
    """The window's helper process (`studio.core.helper.Helper`), started on first use."""
    global _helper
    if _helper is None:
        from studio.core.helper import Helper

        _helper = Helper()
    return _helper


def shutdown_helper() -> None:
    """End the helper process (when the application quits)."""
    if _helper is not None:
        _helper.shutdown()


def run_in_helper(fn: Callable, *args, **callbacks) -> Task:
    """`run_in_background` of ``fn(*args, progress)`` run in the helper process: a pool
    thread waits for the result (releasing the GIL); the callbacks are the same."""
    on_error = callbacks.pop("on_error", None)

    def failed(exc: BaseException, details: str) -> None:
        # The helper's own traceback says where it failed; the waiting thread's does not.
        on_error(exc, getattr(exc, "details", "") or details)

    return run_in_background(
        lambda progress: helper().call(fn, *args, progress=progress),
        on_error=failed if on_error is not None else None,
        **callbacks,
    )


def wait_for_background(timeout_ms: int = 30000) -> bool:
    """Block until every background task finished (used when the application quits)."""
    return QThreadPool.globalInstance().waitForDone(timeout_ms)
