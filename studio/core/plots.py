"""Small line charts as PNG files, drawn with numpy and zlib only (no plotting dependency).

`line_chart_png` draws one or more series on a white canvas with a framed plot area, tick
labels, a title and a legend, and returns PNG bytes. Text uses a built-in 5x7 pixel font
(upper-case letters, digits and a little punctuation; lower case is shown as upper case).
Used for the bundle's ``loss.png`` and ``vram.png``; the GUI draws its live plots itself.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

_FONT_ROWS = {
    "0": "01110 10001 10011 10101 11001 10001 01110",
    "1": "00100 01100 00100 00100 00100 00100 01110",
    "2": "01110 10001 00001 00010 00100 01000 11111",
    "3": "11110 00001 00001 01110 00001 00001 11110",
    "4": "00010 00110 01010 10010 11111 00010 00010",
    "5": "11111 10000 11110 00001 00001 10001 01110",
    "6": "00110 01000 10000 11110 10001 10001 01110",
    "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110",
    "9": "01110 10001 10001 01111 00001 00010 01100",
    "A": "01110 10001 10001 11111 10001 10001 10001",
    "B": "11110 10001 10001 11110 10001 10001 11110",
    "C": "01110 10001 10000 10000 10000 10001 01110",
    "D": "11100 10010 10001 10001 10001 10010 11100",
    "E": "11111 10000 10000 11110 10000 10000 11111",
    "F": "11111 10000 10000 11110 10000 10000 10000",
    "G": "01110 10001 10000 10111 10001 10001 01111",
    "H": "10001 10001 10001 11111 10001 10001 10001",
    "I": "01110 00100 00100 00100 00100 00100 01110",
    "J": "00111 00010 00010 00010 00010 10010 01100",
    "K": "10001 10010 10100 11000 10100 10010 10001",
    "L": "10000 10000 10000 10000 10000 10000 11111",
    "M": "10001 11011 10101 10101 10001 10001 10001",
    "N": "10001 10001 11001 10101 10011 10001 10001",
    "O": "01110 10001 10001 10001 10001 10001 01110",
    "P": "11110 10001 10001 11110 10000 10000 10000",
    "Q": "01110 10001 10001 10001 10101 10010 01101",
    "R": "11110 10001 10001 11110 10100 10010 10001",
    "S": "01111 10000 10000 01110 00001 00001 11110",
    "T": "11111 00100 00100 00100 00100 00100 00100",
    "U": "10001 10001 10001 10001 10001 10001 01110",
    "V": "10001 10001 10001 10001 10001 01010 00100",
    "W": "10001 10001 10001 10101 10101 10101 01010",
    "X": "10001 10001 01010 00100 01010 10001 10001",
    "Y": "10001 10001 10001 01010 00100 00100 00100",
    "Z": "11111 00001 00010 00100 01000 10000 11111",
    ".": "00000 00000 00000 00000 00000 01100 01100",
    ",": "00000 00000 00000 00000 01100 00100 01000",
    ":": "00000 01100 01100 00000 01100 01100 00000",
    "-": "00000 00000 00000 11111 00000 00000 00000",
    "+": "00000 00100 00100 11111 00100 00100 00000",
    "(": "00010 00100 01000 01000 01000 00100 00010",
    ")": "01000 00100 00010 00010 00010 00100 01000",
    "/": "00001 00010 00010 00100 01000 01000 10000",
    "%": "11001 11010 00010 00100 01000 01011 10011",
    "=": "00000 00000 11111 00000 11111 00000 00000",
    "_": "00000 00000 00000 00000 00000 00000 11111",
    "'": "00100 00100 01000 00000 00000 00000 00000",
    "?": "01110 10001 00001 00010 00100 00000 00100",
    " ": "00000 00000 00000 00000 00000 00000 00000",
}
_GLYPHS = {ch: [[c == "1" for c in row] for row in rows.split()] for ch, rows in _FONT_ROWS.items()}

# Series colours (RGB), chosen to stay apart for people with common colour-vision deficiencies.
PALETTE = ((0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233))


@dataclass(frozen=True)
class Series:
    """One line: ``label`` for the legend, points as ``xs``/``ys``; ``dashed`` for references."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    dashed: bool = False


class _Canvas:
    def __init__(self, width: int, height: int):
        import numpy as np

        self.np = np
        self.pixels = np.full((height, width, 3), 255, dtype=np.uint8)
        self.width, self.height = width, height

    def fill(self, x0: int, y0: int, x1: int, y1: int, color) -> None:
        x0, x1 = max(0, min(x0, x1)), min(self.width, max(x0, x1) + 1)
        y0, y1 = max(0, min(y0, y1)), min(self.height, max(y0, y1) + 1)
        if x0 < x1 and y0 < y1:
            self.pixels[y0:y1, x0:x1] = color

    def line(self, x0, y0, x1, y1, color, width: int = 1, dashed: bool = False) -> None:
        np = self.np
        length = max(abs(x1 - x0), abs(y1 - y0), 1.0)
        t = np.linspace(0.0, 1.0, int(length * 2) + 2)
        xs = np.rint(x0 + (x1 - x0) * t).astype(int)
        ys = np.rint(y0 + (y1 - y0) * t).astype(int)
        if dashed:
            keep = (np.arange(len(t)) // 12) % 2 == 0
            xs, ys = xs[keep], ys[keep]
        half = width // 2
        for dx in range(-half, width - half):
            for dy in range(-half, width - half):
                px, py = xs + dx, ys + dy
                ok = (px >= 0) & (px < self.width) & (py >= 0) & (py < self.height)
                self.pixels[py[ok], px[ok]] = color

    def text(self, x: int, y: int, text: str, color=(40, 40, 40), scale: int = 1) -> None:
        for i, ch in enumerate(text.upper()):
            glyph = _GLYPHS.get(ch, _GLYPHS["?"])
            for row, bits in enumerate(glyph):
                for col, on in enumerate(bits):
                    if on:
                        gx, gy = x + (i * 6 + col) * scale, y + row * scale
                        self.fill(gx, gy, gx + scale - 1, gy + scale - 1, color)

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + self.pixels[row].tobytes() for row in range(self.height))

        def chunk(kind: bytes, data: bytes) -> bytes:
            body = kind + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b"")
        )


def text_width(text: str, scale: int = 1) -> int:
    """Pixels the built-in font needs for ``text``."""
    return max(len(text) * 6 - 1, 0) * scale


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering ``low``..``high`` (about ``count`` of them)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = start
    while value <= high + step * 1e-6:
        ticks.append(round(value, 12))
        value += step
    return ticks


def format_tick(value: float) -> str:
    """A short label: 0.5, 12, 3.2K, 1.5M, 2.1G, 1E-4."""
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if magnitude >= limit:
            return f"{value / limit:.3g}{suffix}"
    if magnitude < 1e-3:
        return f"{value:.0e}".replace("e-0", "e-")
    return f"{value:.3g}"


def line_chart_png(
    series: Sequence[Series],
    *,
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    note: str = "",
    width: int = 640,
    height: int = 400,
    y_format=format_tick,
    y_from_zero: bool = False,
) -> bytes:
    """PNG bytes of a line chart of ``series``; ``note`` is printed in the plot area if given
    (e.g. why there is nothing to show); ``y_from_zero`` starts the y axis at 0 (for
    quantities such as memory). Non-finite points are skipped."""
    canvas = _Canvas(width, height)
    left, right, top, bottom = 70, width - 20, 34, height - 44
    canvas.text(left, 10, title, scale=2)
    drawn = [
        (
            s,
            [
                (float(x), float(y))
                for x, y in zip(s.xs, s.ys, strict=False)
                if _finite(x) and _finite(y)
            ],
        )
        for s in series
    ]
    points = [p for _, pts in drawn for p in pts]
    if points:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        if y_from_zero:
            ys.append(0.0)
        x_ticks = nice_ticks(min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1)
        y_ticks = nice_ticks(min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1)
        x_lo, x_hi = min(x_ticks[0], min(xs)), max(x_ticks[-1], max(xs))
        y_lo, y_hi = min(y_ticks[0], min(ys)), max(y_ticks[-1], max(ys))
    else:
        x_ticks, y_ticks, x_lo, x_hi, y_lo, y_hi = [], [], 0.0, 1.0, 0.0, 1.0
        if y_from_zero:
            y_ticks = nice_ticks(0.0, 1.0)

    def px(x: float) -> float:
        return left + (x - x_lo) / ((x_hi - x_lo) or 1.0) * (right - left)

    def py(y: float) -> float:
        return bottom - (y - y_lo) / ((y_hi - y_lo) or 1.0) * (bottom - top)

    grid, axis = (232, 232, 232), (90, 90, 90)
    for tick in y_ticks:
        y = round(py(tick))
        canvas.line(left, y, right, y, grid)
        label = y_format(tick)
        canvas.text(left - 6 - text_width(label), y - 3, label)
    for tick in x_ticks:
        x = round(px(tick))
        canvas.line(x, top, x, bottom, grid)
        label = format_tick(tick)
        canvas.text(x - text_width(label) // 2, bottom + 6, label)
    canvas.line(left, top, left, bottom, axis)
    canvas.line(left, bottom, right, bottom, axis)
    canvas.line(left, top, right, top, axis)
    canvas.line(right, top, right, bottom, axis)
    if x_label:
        canvas.text((left + right - text_width(x_label)) // 2, height - 16, x_label)
    if y_label:
        canvas.text(4, top - 12 if top > 20 else 2, y_label)

    for index, (s, pts) in enumerate(drawn):
        color = PALETTE[index % len(PALETTE)]
        if len(pts) == 1:
            x, y = px(pts[0][0]), py(pts[0][1])
            canvas.fill(round(x) - 2, round(y) - 2, round(x) + 2, round(y) + 2, color)
        for (xa, ya), (xb, yb) in zip(pts, pts[1:], strict=False):
            canvas.line(px(xa), py(ya), px(xb), py(yb), color, width=2, dashed=s.dashed)
    legend_y = top + 8
    for index, (s, _) in enumerate(drawn):
        color = PALETTE[index % len(PALETTE)]
        x = right - 12 - text_width(s.label) - 24
        canvas.fill(x - 4, legend_y - 3, right - 6, legend_y + 9, (255, 255, 255))
        canvas.line(x, legend_y + 3, x + 16, legend_y + 3, color, width=2, dashed=s.dashed)
        canvas.text(x + 22, legend_y, s.label)
        legend_y += 14
    if note:
        canvas.text((left + right - text_width(note)) // 2, (top + bottom) // 2, note)
    return canvas.png()


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
