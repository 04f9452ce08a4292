"""The Trainer callback that turns training progress into events and obeys the control channel.

Pause and stop act between optimizer steps. A pause requested during step N holds right after
step N's `StepLogged` went out (in ``on_log``), or in ``on_step_end`` when step N is not a
logging step; while held nothing runs. (A request that arrives after that point, e.g. during
a checkpoint save, is honoured at the end of the next step: holding in ``on_step_begin``
instead would let a stop during the pause run one more step before saving.) A stop (also one arriving during a pause) asks the
Trainer to save a checkpoint of the step just finished and to end training; the job then
reports `Stopped`. Timing figures (elapsed, ETA, tokens per second) leave paused time out.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from studio.core.events import (
    CheckpointSaved,
    EvalLogged,
    Paused,
    PhaseChanged,
    Resumed,
    StepLogged,
)
from studio.core.phases import Phase

CHECKPOINT_PREFIX = "checkpoint-"


def _make_callback_class():
    # transformers is imported only inside functions (studio.core import rule).
    from transformers import TrainerCallback

    class EngineCallback(TrainerCallback):
        """Emits StepLogged/EvalLogged/CheckpointSaved/Paused/Resumed; see the module docstring.

        ``emit`` sends one event; ``control`` is the `ControlChannel`; ``should_stop`` tells
        whether to stop (a user request, or the parent process gone); ``on_metrics`` receives
        every StepLogged/EvalLogged for metrics.jsonl; ``cuda_device`` (``cuda:N``) adds torch's
        memory figures for that GPU to each step. Every step carries the engine process's
        resident memory.
        """

        def __init__(
            self,
            emit: Callable,
            control,
            should_stop: Callable[[], bool],
            on_metrics: Callable | None = None,
            cuda_device: str | None = None,
        ):
            self.emit = emit
            self.channel = control
            self.should_stop = should_stop
            self.on_metrics = on_metrics or (lambda event: None)
            self.cuda_device = cuda_device
            self.stop_requested = False
            self._pause_pending = False
            self._paused_s = 0.0
            self._t0 = time.monotonic()
            self._start_step = 0
            self._last_time = self._t0
            self._last_tokens = 0
            self._process = None  # psutil's handle on this process, made at the first step

        # -- time accounting ---------------------------------------------------------------
        def _active_elapsed(self) -> float:
            return time.monotonic() - self._t0 - self._paused_s

        def on_train_begin(self, args, state, control, **kwargs):
            self._t0 = time.monotonic()
            self._paused_s = 0.0
            self._start_step = state.global_step
            self._last_time = 0.0
            self._last_tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
            return control

        # -- control -----------------------------------------------------------------------
        def _hold(self, state, control) -> None:
            """Hold while paused (emitting Paused/Resumed); then honour a stop."""
            self._pause_pending = False
            if self.channel.pause_requested and not self.should_stop():
                self.emit(Paused(step=state.global_step))
                began = time.monotonic()
                while self.channel.pause_requested and not self.should_stop():
                    self.channel.hold_while_paused(poll_s=0.2)
                self._paused_s += time.monotonic() - began
                if not self.should_stop():
                    self.emit(Resumed(step=state.global_step))
            if self.should_stop():
                self.stop_requested = True
                control.should_save = True
                control.should_training_stop = True

        def on_step_end(self, args, state, control, **kwargs):
            if self.should_stop():
                self._hold(state, control)
            elif self.channel.pause_requested:
                if control.should_log:
                    self._pause_pending = True  # hold in on_log, after this step's StepLogged
                else:
                    self._hold(state, control)
            return control

        # -- reporting ---------------------------------------------------------------------
        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
            # An evaluation can take longer than many steps on a CPU: say so as it goes.
            self._eval_batches = getattr(self, "_eval_batches", 0) + 1
            try:
                total = len(eval_dataloader) if eval_dataloader is not None else None
            except TypeError:
                total = None
            done = self._eval_batches
            what = (
                f"evaluating on the held-out split ({done}/{total} batches)"
                if total
                else (f"evaluating on the held-out split ({done} batches)")
            )
            self.emit(PhaseChanged(Phase.TRAINING, what, done / total if total else None))

        def on_evaluate(self, args, state, control, **kwargs):
            self._eval_batches = 0

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" in logs:
                self._emit_step(state, logs)
                if self._pause_pending or self.should_stop():
                    self._hold(state, control)
            if "eval_loss" in logs:
                event = EvalLogged(step=state.global_step, eval_loss=float(logs["eval_loss"]))
                self.on_metrics(event)
                self.emit(event)
            return control

        def _process_rss(self) -> int | None:
            """This process's resident memory (the engine starts no child processes)."""
            import psutil

            try:
                if self._process is None:
                    self._process = psutil.Process()
                return int(self._process.memory_info().rss)
            except psutil.Error:
                return None

        def _emit_step(self, state, logs) -> None:
            now = self._active_elapsed()
            tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
            span = max(now - self._last_time, 1e-9)
            tokens_per_second = max(tokens - self._last_tokens, 0) / span
            self._last_time, self._last_tokens = now, tokens
            done = state.global_step - self._start_step
            remaining = max(state.max_steps - state.global_step, 0)
            eta = now / done * remaining if done > 0 else None
            allocated = reserved = peak = None
            if self.cuda_device:
                import torch

                allocated = int(torch.cuda.memory_allocated(self.cuda_device))
                reserved = int(torch.cuda.memory_reserved(self.cuda_device))
                peak = int(torch.cuda.max_memory_reserved(self.cuda_device))
            grad_norm = logs.get("grad_norm")
            event = StepLogged(
                step=state.global_step,
                max_steps=state.max_steps,
                epoch=float(logs.get("epoch", state.epoch or 0.0) or 0.0),
                loss=float(logs["loss"]),
                learning_rate=float(logs.get("learning_rate", 0.0) or 0.0),
                grad_norm=float(grad_norm) if grad_norm is not None else None,
                tokens_per_second=float(tokens_per_second),
                elapsed_s=float(now),
                eta_s=float(eta) if eta is not None else None,
                cuda_allocated_bytes=allocated,
                cuda_reserved_bytes=reserved,
                cuda_peak_bytes=peak,
                process_rss_bytes=self._process_rss(),
            )
            self.on_metrics(event)
            self.emit(event)

        def on_save(self, args, state, control, **kwargs):
            path = f"{args.output_dir}/{CHECKPOINT_PREFIX}{state.global_step}"
            self.emit(CheckpointSaved(step=state.global_step, path=path))
            return control

    return EngineCallback


_CALLBACK_CLASS = None


def engine_callback(*args, **kwargs):
    """Build an `EngineCallback` (a ``transformers.TrainerCallback``); arguments as its init."""
    global _CALLBACK_CLASS
    if _CALLBACK_CLASS is None:
        _CALLBACK_CLASS = _make_callback_class()
    return _CALLBACK_CLASS(*args, **kwargs)
