"""Numbers for people: bytes, durations and counts, the same in the CLI and the window.

The one place that turns sizes, times and counts into text; every caller uses these three.
Each returns an em dash (``"—"``) for an unknown value (None, NaN).
"""

from __future__ import annotations

import math

UNKNOWN = "—"

_BYTE_UNITS = (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))
_COUNT_UNITS = (("B", 1e9), ("M", 1e6), ("k", 1e3))


def _unknown(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_bytes(n: int | float | None) -> str:
    """A byte count in binary units with two decimals: ``"1.27 GiB"``, ``"512.00 MiB"``,
    ``"3.50 KiB"``, ``"1.00 TiB"``; under 1 KiB whole bytes (``"512 B"``).

    The unit is the largest (KiB, MiB, GiB, TiB) the value reaches, so ``1023 * 2**20`` is
    ``"1023.00 MiB"``; a value that would read ``"1024.00"`` in a unit is shown in the next
    (``2**30 - 1`` is ``"1.00 GiB"``). Negative values keep their sign (``"-1.50 GiB"``). None or NaN:
    ``"—"``.
    """
    if _unknown(n):
        return UNKNOWN
    value = float(n)  # type: ignore[arg-type]
    for unit, size in _BYTE_UNITS:
        if round(abs(value) / (size >> 10), 2) >= 1024:  # would read 1024.00 one unit down
            return f"{value / size:.2f} {unit}"
    return f"{int(value)} B"


def format_duration(seconds: int | float | None) -> str:
    """A duration rounded to whole seconds: ``"42 s"``, ``"3 min 05 s"``, ``"1 h 02 min"``.

    Under a minute seconds only; under an hour minutes and zero-padded seconds; from an hour
    on hours and zero-padded minutes (seconds dropped, not rounded up). None, NaN, infinity
    or a negative value: ``"—"``.
    """
    if _unknown(seconds) or not math.isfinite(seconds) or seconds < 0:  # type: ignore[arg-type]
        return UNKNOWN
    s = int(round(seconds))  # type: ignore[arg-type]
    if s >= 3600:
        return f"{s // 3600} h {(s % 3600) // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def format_count(n: int | float | None) -> str:
    """A count in decimal units with one decimal: ``"134.5 M"``, ``"12.3 k"``, ``"7.0 B"``
    (billions); under 1000 the whole number (``"999"``). A value that would read ``"1000.0"``
    in a unit is shown in the next (``999_960`` is ``"1.0 M"``). None or NaN: ``"—"``."""
    if _unknown(n):
        return UNKNOWN
    value = float(n)  # type: ignore[arg-type]
    for unit, size in _COUNT_UNITS:
        if round(abs(value) / (size / 1000), 1) >= 1000:  # would read 1000.0 one unit down
            return f"{value / size:.1f} {unit}"
    return f"{int(value)}"
