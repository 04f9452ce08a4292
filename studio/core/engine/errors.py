"""Turning an exception inside the job into a `Failed` event a person can act on.

Bad input (recipe, model source, dataset, quantization settings, an existing output folder)
keeps its error type, so front ends can tell it apart (the CLI exits 2 for those). Running out
of GPU memory names the phase and the largest terms of the memory estimate with what to change.
Anything else says what failed and where, with the traceback in ``details``.
"""

from __future__ import annotations

import errno
import os
import traceback
from pathlib import Path

from studio.core.events import Failed
from studio.core.phases import phase_doing

# Error types that mean the user's input is wrong (exit code 2), not that the job broke.
BAD_INPUT_ERRORS = frozenset(
    {
        "RecipeError",
        "ModelSourceError",
        "DatasetError",
        "QuantError",
        "FakeGpuError",
        "OutputExistsError",
        "CheckpointError",
        "OutputLockedError",
    }
)

# What to change for each group of estimate terms (see studio.core.memory.Term.group).
_GROUP_ADVICE = {
    "activations": (
        "lower training.batch_size (raise training.grad_accum to keep the effective batch), "
        "lower dataset.max_length, or turn on training.gradient_checkpointing"
    ),
    "weights": (
        "use quantization.mode = '4bit' with double_quant = true, or set "
        "quantization.fp32_upcast = false, or pick a smaller base model"
    ),
    "training": (
        "lower lora.r, target fewer modules (lora.target_modules), or use "
        "training.optimizer = 'paged_adamw_8bit'"
    ),
    "fixed": "close other programs that use the GPU",
}


class OutputExistsError(FileExistsError):
    """The bundle folder already exists and the run may not overwrite it."""


class CheckpointError(ValueError):
    """Checkpoints block a fresh start, or a resume has none that matches the recipe."""


class OutputLockedError(ValueError):
    """Another live run holds the output folder's lock (see `studio.core.engine.lock`)."""


# The causes of a failed write that a person can act on, by errno.
_DISK_CAUSES = {
    errno.ENOSPC: ("ENOSPC", "the disk is full"),
    errno.EDQUOT: ("EDQUOT", "the disk quota is used up"),
    errno.EROFS: ("EROFS", "the file system is read-only"),
    errno.EACCES: ("EACCES", "permission denied"),
    errno.EPERM: ("EPERM", "permission denied"),
}
# How libraries that hide the errno word the same causes (torch's zip writer says only
# "unexpected pos"; safetensors' Rust writer says "StorageFull"/"os error 28").
_DISK_TEXT = (
    ("no space left", errno.ENOSPC),
    ("storagefull", errno.ENOSPC),
    ("os error 28", errno.ENOSPC),
    ("disk quota exceeded", errno.EDQUOT),
    ("read-only file system", errno.EROFS),
    ("readonlyfilesystem", errno.EROFS),
    ("os error 30", errno.EROFS),
    ("permission denied", errno.EACCES),
    ("permissiondenied", errno.EACCES),
)


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _looks_like_write_failure(exc: BaseException) -> bool:
    text = str(exc)
    return "inline_container" in text and (
        "unexpected pos" in text or "write" in text.lower() or "PytorchStreamWriter" in text
    )


def _folder_cause(folder: Path) -> int | None:
    """Why writing into ``folder`` fails now, by looking at it: full, read-only or denied."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        stats = os.statvfs(probe)
    except OSError:
        return None
    if stats.f_flag & getattr(os, "ST_RDONLY", 1):
        return errno.EROFS
    if stats.f_bavail * stats.f_frsize < 1 << 20:  # under 1 MiB left
        return errno.ENOSPC
    if not os.access(probe, os.W_OK):
        return errno.EACCES
    return None


def disk_cause(exc: BaseException, folders=()) -> tuple[int, str | None] | None:
    """(errno, file name or None) when ``exc`` is a write failing because the disk is full,
    read-only or not writable; None otherwise.

    Walks the exception's cause chain; an OSError's errno decides, else the wording of the
    libraries that hide it; torch's ``inline_container`` "unexpected pos" (which says nothing
    about why) is matched to a cause by looking at ``folders``.
    """
    for item in _chain(exc):
        if isinstance(item, OSError) and item.errno in _DISK_CAUSES:
            return item.errno, item.filename
    for item in _chain(exc):
        spaced = str(item).lower()
        squashed = spaced.replace(" ", "")
        for needle, code in _DISK_TEXT:
            if needle in spaced or needle.replace(" ", "") in squashed:
                return code, None
    if any(_looks_like_write_failure(item) for item in _chain(exc)):
        for folder in folders:
            code = _folder_cause(Path(folder))
            if code is not None:
                return code, str(folder)
        return errno.ENOSPC, None  # torch's writer failing mid-file: almost always space
    return None


def disk_message(code: int, filename: str | None, phase: str, folder, kept: str | None) -> str:
    """The message for a write that failed for ``code`` (an errno) in ``phase``."""
    name, cause = _DISK_CAUSES.get(code, (errno.errorcode.get(code, str(code)), "it failed"))
    where = Path(filename).parent if filename else Path(folder)
    if code in (errno.EACCES, errno.EPERM):  # may be a read as well as a write
        lines = [
            f"Access to {filename or folder} was denied while {phase_doing(phase)}: {cause} "
            f"({name}).",
            "Give yourself access to it, or set [output] dir to a folder you can write to.",
        ]
    else:
        lines = [f"Writing to {where} failed while {phase_doing(phase)}: {cause} ({name})."]
    if code in (errno.ENOSPC, errno.EDQUOT):
        lines.append("Free some space on that disk, or set [output] dir to a disk with room.")
    elif code == errno.EROFS:
        lines.append("Set [output] dir to a folder on a writable disk.")
    if kept:
        lines.append(f"The checkpoint {kept} is kept: run again with --resume to continue from it.")
    return " ".join(lines)


def is_bad_input(failed: Failed) -> bool:
    """True when the failure is the user's input to fix (exit code 2), not a job failure."""
    return failed.error_type in BAD_INPUT_ERRORS


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA (or other accelerator) out of memory, however torch spelled it."""
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def oom_message(phase: str, estimate=None) -> str:
    """What to change after running out of GPU memory in ``phase``, from the estimate."""
    doing = phase_doing(phase)
    lines = [f"The GPU ran out of memory while {doing} (phase '{phase}')."]
    if estimate is not None:
        total = estimate.total_bytes
        lines.append(
            f"The estimate for this recipe was {_gib(total)}"
            + (
                f" of {_gib(estimate.capacity_bytes)} available."
                if estimate.capacity_bytes
                else "."
            )
        )
        terms = [t for t in estimate.largest_first() if t.bytes > 0][:3]
        if terms:
            lines.append("Its largest terms, and how to shrink them:")
            for term in terms:
                how = _GROUP_ADVICE.get(term.group, "")
                lines.append(
                    f"  - {term.label}: {_gib(term.bytes)}" + (f" -> {how}" if how else "")
                )
        if estimate.advice:
            lines.append(f"Suggested change: {estimate.advice}")
    else:
        lines.append(
            "Shrink the largest memory users: "
            + _GROUP_ADVICE["activations"]
            + "; or "
            + _GROUP_ADVICE["weights"]
            + "."
        )
    lines.append(
        "Run `qlora-studio estimate RECIPE.toml` to check the new settings before retrying."
    )
    return "\n".join(lines)


def _gib(value: int | None) -> str:
    if value is None:
        return "?"
    return f"{value / 2**30:.2f} GiB"


def failure_from_exception(
    exc: BaseException, phase: str, *, estimate=None, folders=(), kept: str | None = None
) -> Failed:
    """The `Failed` event for ``exc`` raised in ``phase``; ``estimate`` feeds the OOM advice.

    ``folders`` are where the job writes (output and checkpoints), to tell why a write failed
    when the library does not say; ``kept`` is the newest intact checkpoint, named in the
    message of a failure that leaves it usable.
    """
    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    error_type = type(exc).__name__
    if is_out_of_memory(exc):
        return Failed(phase, "OutOfMemoryError", oom_message(phase, estimate), details)
    if error_type in BAD_INPUT_ERRORS:
        return Failed(phase, error_type, str(exc), details)
    cause = disk_cause(exc, folders)
    if cause is not None:
        code, filename = cause
        folder = next(iter(folders), "") if folders else ""
        message = disk_message(code, filename, phase, folder, kept)
        return Failed(phase, "DiskWriteError", message, details)
    if isinstance(exc, MemoryError):
        message = (
            f"The computer ran out of main memory while {phase_doing(phase)}. "
            "Close other programs, lower training.batch_size or dataset.max_length, "
            "or pick a smaller model."
        )
        return Failed(phase, error_type, message, details)
    if isinstance(exc, OSError) and getattr(exc, "filename", None):
        message = (
            f"A file operation failed while {phase_doing(phase)}: {exc}. "
            "Check that the folder exists, is writable and the disk is not full."
        )
        return Failed(phase, error_type, message, details)
    text = str(exc).strip() or error_type
    message = (
        f"The job failed while {phase_doing(phase)}: {error_type}: {text}. "
        "Check the recipe values for this phase; the log file named below has the traceback."
    )
    return Failed(phase, error_type, message, details)
