"""Turning an exception inside the job into a `Failed` event a person can act on.

Bad input (recipe, model source, dataset, quantization settings, an existing output folder)
keeps its error type, so front ends can tell it apart (the CLI exits 2 for those). Running out
of GPU memory names the phase and the largest terms of the memory estimate with what to change.
Anything else says what failed and where, with the traceback in ``details``.
"""

from __future__ import annotations

import traceback

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


def failure_from_exception(exc: BaseException, phase: str, *, estimate=None) -> Failed:
    """The `Failed` event for ``exc`` raised in ``phase``; ``estimate`` feeds the OOM advice."""
    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    error_type = type(exc).__name__
    if is_out_of_memory(exc):
        return Failed(phase, "OutOfMemoryError", oom_message(phase, estimate), details)
    if error_type in BAD_INPUT_ERRORS:
        return Failed(phase, error_type, str(exc), details)
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
        "The traceback below says where; check the recipe values for this phase."
    )
    return Failed(phase, error_type, message, details)
