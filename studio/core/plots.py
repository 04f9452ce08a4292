"""Small line charts as PNG files, drawn with numpy and zlib only (no plotting dependency).

`line_chart_png` draws one or more series on a white canvas with a framed plot area, tick
labels, a title and a legend, and returns PNG bytes. Text uses a built-in 5x7 pixel font
(upper-case letters, digits and a little punctuation; lower case is shown as upper case).
`bundle_charts` says what the bundle's ``loss.png`` and ``vram.png`` show (as `Chart`s, whose
series and axes can be read without decoding the image); the GUI draws its live plots itself.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

from studio.core.events import EvalLogged, StepLogged, rows_of

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
    color: tuple[int, int, int] | None = None  # RGB; None: the palette's, by position


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


def nice_ticks(low: float, high: float, count: int = 5, *, integer: bool = False) -> list[float]:
    """Round tick values covering ``low``..``high`` (about ``count`` of them); with
    ``integer`` only whole numbers (for steps)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    factors = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = next(m * magnitude for m in factors if m * magnitude >= raw)
    if integer:
        step = max(1, round(step))
    return _ticks_every(low, high, step)


def time_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Ticks for seconds: round numbers, or whole minutes and hours once the span is long
    enough to be shown as clock time (see `format_clock`)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high < CLOCK_FROM_S:
        return nice_ticks(low, high, count)
    raw = (high - low) / max(count, 1)
    steps = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
    step = next((s for s in steps if s >= raw), None)
    if step is None:
        return nice_ticks(low, high, count)
    return _ticks_every(low, high, step)


def _ticks_every(low: float, high: float, step: float) -> list[float]:
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


CLOCK_FROM_S = 600.0  # time axes spanning this many seconds or more read as m:ss


def format_clock(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    total = round(seconds)
    sign, total = ("-", -total) if total < 0 else ("", total)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{sign}{hours}:{minutes:02d}:{secs:02d}"
    return f"{sign}{minutes}:{secs:02d}"


# A series with at most this many points gets a marker on each point: a single point, or a
# few, would otherwise be invisible or read as a bent line with no data behind the bends.
MARKERS_UP_TO = 40


def shows_markers(series: Series) -> bool:
    """Whether `line_chart_png` marks each point of ``series`` (reference lines never)."""
    points = sum(1 for x, y in zip(series.xs, series.ys, strict=False) if _finite(x) and _finite(y))
    return not series.dashed and 0 < points <= MARKERS_UP_TO


@dataclass(frozen=True)
class Axes:
    """Where a chart's axes start and end and where their ticks go (with their labels)."""

    x_range: tuple[float, float]
    y_range: tuple[float, float]
    x_ticks: list[float]
    y_ticks: list[float]
    x_labels: list[str]


def _span(low: float, high: float) -> tuple[float, float]:
    """``low``..``high``, widened around the value when it is (all but) a single value, so
    that a flat series sits in the middle of a readable range instead of on an edge."""
    if high - low <= 1e-9 * max(abs(low), abs(high), 1e-300):
        middle = (low + high) / 2
        pad = abs(middle) * 0.1 or 1.0
        return middle - pad, middle + pad
    return low, high


def chart_axes(series: Sequence[Series], *, x_kind: str = "number", y_from_zero: bool = False):
    """The `Axes` `line_chart_png` draws for ``series``. ``x_kind``: ``"number"``,
    ``"integer"`` (whole-number ticks, for steps) or ``"seconds"`` (`time_ticks`, read as
    m:ss from `CLOCK_FROM_S` on)."""
    points = [
        (float(x), float(y))
        for s in series
        for x, y in zip(s.xs, s.ys, strict=False)
        if _finite(x) and _finite(y)
    ]
    if not points:
        y_ticks = nice_ticks(0.0, 1.0) if y_from_zero else []
        return Axes((0.0, 1.0), (0.0, 1.0), [], y_ticks, [])
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if y_from_zero:
        ys.append(0.0)
    x_low, x_high = min(xs), max(xs)
    if x_kind == "integer" and x_high - x_low < 2:
        x_low, x_high = math.floor(x_low) - 1, math.ceil(x_high) + 1
    else:
        x_low, x_high = _span(x_low, x_high)
    y_low, y_high = _span(min(ys), max(ys))
    pad = (y_high - y_low) * 0.05  # keeps lines at the extremes off the frame
    y_low, y_high = y_low - pad, y_high + pad
    if y_from_zero and y_low < 0 <= min(ys):
        y_low = 0.0
    if x_kind == "seconds":
        x_ticks = time_ticks(x_low, x_high)
        clock = x_high >= CLOCK_FROM_S
        x_labels = [format_clock(t) if clock else format_tick(t) for t in x_ticks]
    else:
        x_ticks = nice_ticks(x_low, x_high, integer=x_kind == "integer")
        x_labels = [format_tick(t) for t in x_ticks]
    y_ticks = nice_ticks(y_low, y_high)
    return Axes(
        (min([x_low, *x_ticks[:1]]), max([x_high, *x_ticks[-1:]])),
        (min([y_low, *y_ticks[:1]]), max([y_high, *y_ticks[-1:]])),
        x_ticks,
        y_ticks,
        x_labels,
    )


def line_chart_png(series: Sequence[Series], **options) -> bytes:
    """PNG bytes of a line chart; ``options`` are `chart_canvas`'s."""
    return chart_canvas(series, **options).png()


def chart_canvas(
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
    x_kind: str = "number",
) -> _Canvas:
    """A line chart of ``series``; ``note`` is printed in the plot area if given
    (e.g. why there is nothing to show); ``y_from_zero`` starts the y axis at 0 (for
    quantities such as memory); ``x_kind`` as in `chart_axes`. Non-finite points are
    skipped; a series of few points gets a marker on each (`shows_markers`)."""
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
    axes = chart_axes(series, x_kind=x_kind, y_from_zero=y_from_zero)
    (x_lo, x_hi), (y_lo, y_hi) = axes.x_range, axes.y_range

    def px(x: float) -> float:
        return left + (x - x_lo) / ((x_hi - x_lo) or 1.0) * (right - left)

    def py(y: float) -> float:
        return bottom - (y - y_lo) / ((y_hi - y_lo) or 1.0) * (bottom - top)

    grid, axis = (232, 232, 232), (90, 90, 90)
    for tick in axes.y_ticks:
        y = round(py(tick))
        canvas.line(left, y, right, y, grid)
        label = y_format(tick)
        canvas.text(left - 6 - text_width(label), y - 3, label)
    for tick, label in zip(axes.x_ticks, axes.x_labels, strict=True):
        x = round(px(tick))
        canvas.line(x, top, x, bottom, grid)
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
        color = s.color or PALETTE[index % len(PALETTE)]
        for (xa, ya), (xb, yb) in zip(pts, pts[1:], strict=False):
            canvas.line(px(xa), py(ya), px(xb), py(yb), color, width=2, dashed=s.dashed)
        if shows_markers(s):
            for x, y in pts:
                x, y = round(px(x)), round(py(y))
                canvas.fill(x - 2, y - 2, x + 2, y + 2, color)
    legend_y = top + 8
    for index, (s, _) in enumerate(drawn):
        color = s.color or PALETTE[index % len(PALETTE)]
        x = right - 12 - text_width(s.label) - 24
        canvas.fill(x - 4, legend_y - 3, right - 6, legend_y + 9, (255, 255, 255))
        canvas.line(x, legend_y + 3, x + 16, legend_y + 3, color, width=2, dashed=s.dashed)
        canvas.text(x + 22, legend_y, s.label)
        legend_y += 14
    if note:
        canvas.text((left + right - text_width(note)) // 2, (top + bottom) // 2, note)
    return canvas


def stacked_png(charts: Sequence[Chart], *, width: int = 640, height: int = 400) -> bytes:
    """One PNG of ``charts`` drawn one above the other, each ``width`` x ``height``."""
    import numpy as np

    canvases = [chart.canvas(width, height) for chart in charts]
    stacked = _Canvas(width, height * len(canvases))
    stacked.pixels = np.concatenate([c.pixels for c in canvases], axis=0)
    stacked.height = stacked.pixels.shape[0]
    return stacked.png()


# ------------------------------------------------------------------ the bundle's charts
@dataclass(frozen=True)
class Chart:
    """A chart `line_chart_png` draws: its series and options, kept so they can be read."""

    series: tuple[Series, ...]
    title: str = ""
    x_label: str = ""
    y_label: str = ""
    note: str = ""
    y_from_zero: bool = False
    x_kind: str = "number"

    def axes(self) -> Axes:
        return chart_axes(self.series, x_kind=self.x_kind, y_from_zero=self.y_from_zero)

    def png(self, width: int = 640, height: int = 400) -> bytes:
        return self.canvas(width, height).png()

    def canvas(self, width: int = 640, height: int = 400) -> _Canvas:
        return chart_canvas(
            self.series,
            title=self.title,
            x_label=self.x_label,
            y_label=self.y_label,
            note=self.note,
            width=width,
            height=height,
            y_from_zero=self.y_from_zero,
            x_kind=self.x_kind,
        )


GIB = float(1 << 30)
RSS_LABEL = "engine process RSS"


def training_seconds(steps: Sequence[dict]) -> list[float]:
    """Each step's ``elapsed_s`` as time since the run began: a resumed run's clock starts
    again at 0, so from a step whose time went back on, the earlier sessions' time is added."""
    times: list[float] = []
    offset = previous = 0.0
    for row in steps:
        elapsed = float(row.get("elapsed_s") or 0.0)
        if elapsed < previous:  # a new session: its clock restarted at 0
            offset = times[-1]
        previous = elapsed
        times.append(offset + elapsed)
    return times


def loss_chart(metrics: Sequence[dict]) -> Chart:
    """``loss.png``: training loss (and evaluation loss) against steps."""
    steps = rows_of(metrics, StepLogged)
    evals = rows_of(metrics, EvalLogged)
    series = [Series("train loss", [m["step"] for m in steps], [m["loss"] for m in steps])]
    if evals:
        series.append(
            Series("eval loss", [m["step"] for m in evals], [m["eval_loss"] for m in evals])
        )
    return Chart(
        tuple(series),
        title="Loss",
        x_label="step",
        y_label="loss",
        note="" if steps else "no steps were logged",
        x_kind="integer",
    )


def memory_chart(
    metrics: Sequence[dict], *, estimate: dict | None = None, measured: dict | None = None
) -> Chart:
    """``vram.png``: memory (GiB) against the run's training time (``elapsed_s``).

    On a GPU: torch's allocated, reserved and peak reserved memory. The engine process's
    resident memory (host RAM) is left out there: it is often several times the GPU
    figures and would flatten them. On the CPU: the engine process's resident memory
    (``process_rss_bytes``, "engine process RSS"). Both with the estimate as a dashed line.
    """
    steps = rows_of(metrics, StepLogged)
    times = training_seconds(steps)
    timed = list(zip(times, steps, strict=True))
    cuda = [(t, m) for t, m in timed if m.get("cuda_reserved_bytes") is not None]
    series: list[Series] = []
    if cuda:
        xs = [t for t, _ in cuda]
        for label, key in (
            ("allocated", "cuda_allocated_bytes"),
            ("reserved", "cuda_reserved_bytes"),
            ("peak reserved", "cuda_peak_bytes"),
        ):
            series.append(Series(label, xs, [_gib(m.get(key)) for _, m in cuda]))
        span_rows = cuda
    else:
        span_rows = [(t, m) for t, m in timed if m.get("process_rss_bytes") is not None]
        if span_rows:
            series.append(
                Series(
                    RSS_LABEL,
                    [t for t, _ in span_rows],
                    [_gib(m["process_rss_bytes"]) for _, m in span_rows],
                )
            )
    span_rows = span_rows or timed
    span = sorted({span_rows[0][0], span_rows[-1][0]}) if span_rows else []
    if estimate and estimate.get("total_bytes") and span:
        series.append(
            Series("estimate", span, [estimate["total_bytes"] / GIB] * len(span), dashed=True)
        )
    note = ""
    if not cuda and not any(s.label == RSS_LABEL for s in series):
        note = "trained on the CPU: no GPU memory figures"
        if measured and measured.get("bytes"):
            note = f"trained on the CPU: peak RSS {measured['bytes'] / GIB:.2f} GiB"
    chart = Chart(
        tuple(series),
        title="GPU memory (GiB)" if cuda else "Memory (GiB)",
        y_label="GiB",
        note=note,
        y_from_zero=True,
        x_kind="seconds",
    )
    clock = chart.axes().x_range[1] >= CLOCK_FROM_S
    return replace(chart, x_label=f"training time ({'m:ss' if clock else 'seconds'})")


def bundle_charts(
    metrics, *, estimate: dict | None = None, measured: dict | None = None
) -> tuple[Chart, Chart]:
    """The bundle's ``loss.png`` and ``vram.png`` charts for ``metrics`` (event dicts)."""
    metrics = list(metrics)
    return loss_chart(metrics), memory_chart(metrics, estimate=estimate, measured=measured)


def _gib(value) -> float:
    return value / GIB if _finite(value) else math.nan


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
