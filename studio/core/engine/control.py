"""The control channel from the runner (parent) to the job (child): pause, resume, stop.

Two multiprocessing Events made from the spawn context, so they pass to the child as process
arguments and are read without blocking the training loop. The job looks at them between
optimizer steps (see `callbacks.EngineCallback`) and between phases; a stop wins over a pause.
"""

from __future__ import annotations


class ControlChannel:
    """Parent side: `request_pause`, `request_resume`, `request_stop`; child side: the rest."""

    def __init__(self, ctx) -> None:
        self._pause = ctx.Event()
        self._stop = ctx.Event()

    # Parent side.
    def request_pause(self) -> None:
        self._pause.set()

    def request_resume(self) -> None:
        self._pause.clear()

    def request_stop(self) -> None:
        self._stop.set()
        self._pause.clear()

    # Child side.
    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def pause_requested(self) -> bool:
        return self._pause.is_set() and not self._stop.is_set()

    def hold_while_paused(self, poll_s: float = 0.1) -> None:
        """Block while a pause is requested; returns on resume or on stop."""
        while self.pause_requested:
            self._stop.wait(poll_s)
