"""The engine process's memory allocator settings, so that its peak is repeatable.

On Linux (glibc) a freed block only goes back to the system when it was allocated with mmap
or sits at the top of the heap. glibc's mmap threshold starts at 128 KiB but rises, up to
32 MiB, every time a mmapped block is freed; from then on tensors below it come from the heap,
and what they leave behind when freed stays resident in fragments. Measured on the built-in
model (batch 4 x 256 tokens, no checkpointing): the engine process stayed at 3,865 MiB
resident between steps, with about 800 MiB of live data, and peaked at 4,453 MiB (4.39 GiB in
another run) where the live tensors peak at 3,403 MiB; how much of the freed memory stays
resident depends on the order of allocations, so the peak wandered from run to run.

`configure_allocator` (called first thing in the engine process, before torch is imported)
fixes the mmap and trim thresholds at 128 KiB, which also turns the dynamic raise off, and
caps malloc arenas at 2: every tensor of 128 KiB or more is mapped on its own and returned at
once when freed, so the resident memory follows the live tensors (805 MiB between steps in
the same run) and the peak is the same from run to run. A user who set any of glibc's
``MALLOC_*`` variables (or ``GLIBC_TUNABLES``) keeps their choice. Elsewhere (macOS, Windows,
musl) nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MMAP_THRESHOLD = 128 * 1024
TRIM_THRESHOLD = 128 * 1024
ARENA_MAX = 2

_USER_VARIABLES = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_ARENA_MAX",
    "MALLOC_TOP_PAD_",
    "GLIBC_TUNABLES",
)


# What `configure_allocator` did in this process (the manifest's measured peak names it).
APPLIED: dict = {}


def configure_allocator() -> dict:
    """Apply the settings above through glibc's ``mallopt``; returns what was done, also kept
    in `APPLIED` for the run's manifest (``{"allocator": "glibc", "mmap_threshold": ...}``)."""
    APPLIED.clear()
    APPLIED.update(_configure())
    return dict(APPLIED)


def _configure() -> dict:
    if not sys.platform.startswith("linux"):
        return {"allocator": "system", "changed": False}
    user = [name for name in _USER_VARIABLES if name in os.environ]
    if user:
        return {"allocator": "glibc", "changed": False, "user_settings": user}
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries without mallopt
        return {"allocator": "unknown", "changed": False}
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    applied = {
        "mmap_threshold": MMAP_THRESHOLD if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) else None,
        "trim_threshold": TRIM_THRESHOLD if mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) else None,
        "arena_max": ARENA_MAX if mallopt(M_ARENA_MAX, ARENA_MAX) else None,
    }
    return {"allocator": "glibc", "changed": True, **applied}
