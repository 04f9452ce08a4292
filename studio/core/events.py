"""The typed events a training job emits, as frozen dataclasses.

Events cross the process boundary from the engine to the runner (and on to the GUI or the
CLI). They are plain data: `to_dict` gives a JSON-ready dict with a ``type`` tag and
`event_from_dict` rebuilds the event, so they also serve as lines of ``metrics.jsonl``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from studio.core.phases import Phase


@dataclass(frozen=True)
class PhaseChanged:
    """The job entered ``phase`` or made progress in it (``progress`` 0..1, None if unknown)."""

    phase: Phase
    message: str = ""
    progress: float | None = None


@dataclass(frozen=True)
class StepLogged:
    """One logged optimizer step. CUDA figures are None on the CPU; ``process_rss_bytes`` is
    the engine process's resident (host) memory at the step, None where unknown."""

    step: int
    max_steps: int
    epoch: float
    loss: float
    learning_rate: float
    grad_norm: float | None
    tokens_per_second: float
    elapsed_s: float
    eta_s: float | None
    cuda_allocated_bytes: int | None = None
    cuda_reserved_bytes: int | None = None
    cuda_peak_bytes: int | None = None
    process_rss_bytes: int | None = None


@dataclass(frozen=True)
class EvalLogged:
    """Loss on the held-out split at ``step``."""

    step: int
    eval_loss: float


@dataclass(frozen=True)
class CheckpointSaved:
    """A resumable checkpoint was written to ``path`` after ``step``."""

    step: int
    path: str


@dataclass(frozen=True)
class Paused:
    """The job holds between optimizer steps after ``step`` until resumed or stopped."""

    step: int


@dataclass(frozen=True)
class Resumed:
    """The job continues after a pause."""

    step: int


@dataclass(frozen=True)
class Stopped:
    """The user stopped the job; ``checkpoint`` holds the resumable state (None if none yet)."""

    step: int
    checkpoint: str | None


@dataclass(frozen=True)
class Finished:
    """The bundle is complete at ``bundle_dir``. ``peak_bytes`` is the exact measured peak of
    the engine process (`engine.building.measure_peak`): on the CPU its resident high-water
    mark (VmHWM, Python runtime included); on CUDA torch's peak reserved plus the context."""

    bundle_dir: str
    step: int
    peak_bytes: int | None
    estimate_bytes: int | None
    final_loss: float | None


@dataclass(frozen=True)
class Failed:
    """The job failed in ``phase``: ``message`` says what to do, ``details`` has the traceback."""

    phase: Phase
    error_type: str
    message: str
    details: str = ""


@dataclass(frozen=True)
class LogMessage:
    """A line of text for the user (warnings, what the engine detected or decided)."""

    level: str
    message: str


Event = (
    PhaseChanged
    | StepLogged
    | EvalLogged
    | CheckpointSaved
    | Paused
    | Resumed
    | Stopped
    | Finished
    | Failed
    | LogMessage
)

EVENT_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        PhaseChanged,
        StepLogged,
        EvalLogged,
        CheckpointSaved,
        Paused,
        Resumed,
        Stopped,
        Finished,
        Failed,
        LogMessage,
    )
}

# Events after which the job process ends.
TERMINAL_EVENTS = (Finished, Stopped, Failed)


def event_type(event: Event) -> str:
    """The name an event is stored under in ``metrics.jsonl`` (its class name)."""
    return type(event).__name__


def rows_of(rows, cls: type) -> list[dict[str, Any]]:
    """The ``metrics.jsonl`` rows (dicts from `to_dict`) that hold events of class ``cls``."""
    return [row for row in rows if row.get("type") == cls.__name__]


def to_dict(event: Event) -> dict[str, Any]:
    """The event as a JSON-ready dict with its class name under ``type`` (phases as strings)."""
    data = dataclasses.asdict(event)
    if isinstance(data.get("phase"), Phase):
        data["phase"] = data["phase"].value
    return {"type": event_type(event), **data}


def event_from_dict(data: dict[str, Any]) -> Event:
    """Rebuild an event from `to_dict` output; raises ValueError for an unknown ``type``."""
    data = dict(data)
    kind = data.pop("type", None)
    cls = EVENT_TYPES.get(kind)
    if cls is None:
        raise ValueError(f"unknown event type {kind!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in data.items() if k in names}
    if "phase" in values:
        values["phase"] = Phase.parse(values["phase"])
    return cls(**values)
