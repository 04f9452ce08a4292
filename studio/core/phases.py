"""The vocabulary of a job: the phases a run passes through and the states a job is in.

One place for their names and the words people read: the engine emits `Phase` members, the
CLI and the window print `Phase.label` / `Phase.doing`, front ends keep a `JobState`, and the
run library records each run's `RunState`.
Both are ``str`` enums, so they pickle, compare equal to their value and write into JSON
(``metrics.jsonl``) as plain strings.
"""

from __future__ import annotations

from enum import Enum


class Phase(str, Enum):
    """A step of a run, in the order a run passes through them."""

    STARTING = "starting"
    CHECKING = "checking"
    RESOLVING = "resolving"
    CONVERTING = "converting"
    LOADING = "loading"
    PREPARING = "preparing"
    APPLYING_LORA = "applying_lora"
    TOKENIZING = "tokenizing"
    TRAINING = "training"
    SAVING = "saving"

    def __str__(self) -> str:
        return self.value

    @property
    def label(self) -> str:
        """The phase as a heading: ``Loading and quantizing``."""
        return _LABELS[self][0]

    @property
    def doing(self) -> str:
        """The phase inside a sentence: ``while loading and quantizing the model``."""
        return _LABELS[self][1]

    @property
    def number(self) -> int | None:
        """1-based position among the phases the engine reports (None for STARTING)."""
        return ENGINE_PHASES.index(self) + 1 if self in ENGINE_PHASES else None

    @classmethod
    def parse(cls, value: str | Phase) -> Phase | str:
        """The member for ``value``; an unknown string (from a newer engine) stays a string."""
        try:
            return cls(value)
        except ValueError:
            return value


_LABELS = {
    Phase.STARTING: ("Starting", "starting the training process"),
    Phase.CHECKING: ("Checking the output folder", "checking the output folder"),
    Phase.RESOLVING: ("Resolving the model", "finding the model"),
    Phase.CONVERTING: ("Converting the model", "converting the model"),
    Phase.LOADING: ("Loading and quantizing", "loading and quantizing the model"),
    Phase.PREPARING: ("Preparing for k-bit training", "preparing the model for k-bit training"),
    Phase.APPLYING_LORA: ("Adding LoRA adapters", "adding the LoRA adapter"),
    Phase.TOKENIZING: ("Tokenizing the dataset", "tokenizing the dataset"),
    Phase.TRAINING: ("Training", "training"),
    Phase.SAVING: ("Saving the bundle", "saving the bundle"),
}

# The phases the engine process reports, in order (STARTING is the front end's own).
ENGINE_PHASES = tuple(p for p in Phase if p is not Phase.STARTING)


def phase_label(phase: Phase | str) -> str:
    """`Phase.label` for a member or its value; an unknown name, readable."""
    parsed = Phase.parse(phase)
    return parsed.label if isinstance(parsed, Phase) else str(phase).replace("_", " ").capitalize()


def phase_doing(phase: Phase | str) -> str:
    """`Phase.doing` for a member or its value; an unknown name as it is."""
    parsed = Phase.parse(phase)
    return parsed.doing if isinstance(parsed, Phase) else str(phase)


class JobState(str, Enum):
    """Where a front end's job is: what the buttons may do."""

    IDLE = "idle"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    STOPPING = "stopping"

    def __str__(self) -> str:
        return self.value

    @property
    def active(self) -> bool:
        return self is not JobState.IDLE

    @property
    def paused(self) -> bool:
        return self in (JobState.PAUSING, JobState.PAUSED)


class RunState(str, Enum):
    """What a recorded run is (the run library's word for it, in its status file and the
    Runs view): the engine writes RUNNING, then FINISHED, STOPPED or FAILED; MISSING is the
    reader's, for a run whose folder was moved or deleted."""

    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"
    MISSING = "missing"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: object) -> RunState | None:
        """The member for a status file's ``state`` (None when absent or unknown)."""
        try:
            return cls(value)
        except ValueError:
            return None


def phase_line(phase: Phase | str | None, message: str = "") -> str:
    """One line for people: ``Loading and quantizing (4/9) — loading SmolLM2``."""
    if phase is None:
        return message
    parsed = Phase.parse(phase)
    number = parsed.number if isinstance(parsed, Phase) else None
    count = f" ({number}/{len(ENGINE_PHASES)})" if number else ""
    return f"{phase_label(phase)}{count}" + (f" — {message}" if message else "")
