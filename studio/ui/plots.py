"""Live plots (pyqtgraph): loss, learning rate and grad norm against steps, memory against time.

Events only append to lists; `refresh` (called from a timer, a few times a second) redraws
what changed, with downsampling and clip-to-view so long runs stay smooth.

pyqtgraph takes longer to import than the rest of the window takes to build, so a plot can
start as an empty frame (``widget``) whose pyqtgraph widget (``plot_widget``) is made by
`build`, which the window calls right after its first paint. (Importing it on a thread
instead slowed that paint down: the import holds the GIL.) Data that arrives before `build`
is kept and drawn then.

The axes read like the bundle's PNGs (studio.core.plots): no SI-prefix scaling ("x0.001"),
whole-number step ticks, seconds or m:ss for time, as many decimals as the tick spacing
needs; a curve of few points gets markers, and a flat curve sits in a readable range
instead of one a few float steps wide.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from studio.core.plots import CLOCK_FROM_S, MARKERS_UP_TO, format_clock

GIB = float(1 << 30)
EMA_BETA = 0.9  # smoothing of the training loss (like TensorBoard's 0.9)
MIN_MEMORY_SPAN_GIB = 1 / 16  # the memory axis never zooms below 64 MiB top to bottom
# one line per GPU of a run on several GPUs (matplotlib's tab10 without the colours in use)
GPU_COLORS = (
    "#1f77b4",
    "#d62728",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#9467bd",
)
CLOCK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600)

_pg = None
_axes = None


def _pyqtgraph():
    """pyqtgraph, imported once and configured for the studio's look."""
    global _pg
    if _pg is None:
        import pyqtgraph as pg  # a plain import, so that PyInstaller's analysis sees it

        pg.setConfigOptions(antialias=True, background="w", foreground="#333")
        _pg = pg
    return _pg


def _decimals(spacing: float) -> int:
    """Decimals that show ticks ``spacing`` apart as different numbers."""
    places = max(0, -math.floor(math.log10(spacing) + 1e-9))
    while places < 15 and abs(spacing * 10**places - round(spacing * 10**places)) > 1e-6:
        places += 1
    return places


def tick_label(value: float, spacing: float) -> str:
    """A tick's text: 5.4, 0.25, 1200, 2.0e-4; as many decimals as ``spacing`` needs."""
    if not (math.isfinite(value) and math.isfinite(spacing)) or spacing <= 0:
        return f"{value:g}"
    if abs(value) < spacing * 1e-6:
        return "0"
    magnitude = abs(value)
    if 1e-3 <= magnitude < 1e6:
        return f"{value:.{_decimals(spacing)}f}"
    exponent = math.floor(math.log10(magnitude))
    mantissa = value / 10**exponent
    return f"{mantissa:.{_decimals(spacing / 10**exponent)}f}e{exponent}"


def _axis_classes():
    """The axis classes (pyqtgraph subclasses, so made after pyqtgraph is imported)."""
    global _axes
    if _axes is not None:
        return _axes
    pg = _pyqtgraph()

    class NumberAxis(pg.AxisItem):
        """Plain numbers: no SI-prefix scaling, `tick_label` texts."""

        def __init__(self, orientation, **kwargs):
            super().__init__(orientation, **kwargs)
            self.enableAutoSIPrefix(False)

        def tickStrings(self, values, scale, spacing):
            return [tick_label(v * scale, spacing * scale) for v in values]

    class StepAxis(NumberAxis):
        """Optimizer steps: ticks only at whole numbers."""

        def tickSpacing(self, minVal, maxVal, size):
            levels = []
            for spacing, _offset in super().tickSpacing(minVal, maxVal, size):
                whole = float(max(1, math.ceil(spacing * (1 - 1e-9))))
                if all(whole != s for s, _ in levels):
                    levels.append((whole, 0.0))
            return levels

    class TimeAxis(NumberAxis):
        """Seconds; with ``clock`` set, m:ss (h:mm:ss) at whole seconds, minutes or hours."""

        clock = False

        def tickSpacing(self, minVal, maxVal, size):
            if not self.clock:
                return super().tickSpacing(minVal, maxVal, size)
            span = abs(maxVal - minVal)
            if span == 0:
                return []
            intervals = max(2.25, 2.25 * self._tickDensity * math.sqrt(size / 300.0))
            fitting = [s for s in CLOCK_STEPS if s <= span / intervals] or [CLOCK_STEPS[0]]
            major = fitting[-1]
            levels = [(float(major), 0.0)]
            minor = next((s for s in reversed(fitting) if major % s == 0 and major >= 4 * s), 0)
            if minor:
                levels.append((float(minor), 0.0))
            return levels

        def tickStrings(self, values, scale, spacing):
            if self.clock:
                return [format_clock(v * scale) for v in values]
            return super().tickStrings(values, scale, spacing)

    _axes = SimpleNamespace(NumberAxis=NumberAxis, StepAxis=StepAxis, TimeAxis=TimeAxis)
    return _axes


def _keep_flat_readable(view, values) -> None:
    """Give a flat curve (all values equal, up to float noise) a range around its value;
    pyqtgraph would zoom into a span a few float steps wide and label ticks with 15 digits."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    flat = bool(finite) and high - low <= 1e-9 * max(abs(low), abs(high), 1e-300)
    span = (abs(high) * 0.2 or 1.0) if flat else None
    view.setLimits(minYRange=span, maxYRange=span)


def _marked(curve, count: int) -> None:
    """Markers on ``curve`` while it has few points (a single point is otherwise invisible)."""
    symbol = "o" if count <= MARKERS_UP_TO else None
    if curve.opts["symbol"] != symbol:
        curve.setSymbol(symbol)


class _LazyPlot:
    """A titled plot whose pyqtgraph widget is made on the first `build`."""

    legend_offset = (-10, 10)  # top right: loss and learning rate fall away from it

    def __init__(self, name: str, title: str, xlabel: str, ylabel: str) -> None:
        self._labels = (name, title, xlabel, ylabel)
        self.widget = QWidget(objectName=f"{name}Frame")
        self.widget.setMinimumHeight(90)
        self._layout = QVBoxLayout(self.widget)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._placeholder = QLabel(f"{title}", alignment=Qt.AlignmentFlag.AlignCenter)
        self._layout.addWidget(self._placeholder)
        self.plot_widget = None
        self._dirty = True

    @property
    def built(self) -> bool:
        return self.plot_widget is not None

    @property
    def dirty(self) -> bool:
        """New data since the last redraw, and a widget to draw it in."""
        return self._dirty and self.built

    def build(self) -> None:
        """Make the pyqtgraph widget (once) and draw what has been collected so far."""
        if self.built:
            return
        pg = _pyqtgraph()
        name, title, xlabel, ylabel = self._labels
        plot = pg.PlotWidget(title=title, axisItems=self._axis_items(_axis_classes()))
        plot.setObjectName(name)
        plot.showGrid(x=True, y=True, alpha=0.25)
        plot.setLabel("bottom", xlabel)
        plot.setLabel("left", ylabel)
        plot.addLegend(
            offset=self.legend_offset,
            brush=(255, 255, 255, 200),  # the curves show through, as in the Runs view
        )
        item = plot.getPlotItem()
        item.setDownsampling(auto=True, mode="peak")
        item.setClipToView(True)
        self.plot_widget = plot
        self._add_items(pg, plot)
        self._layout.replaceWidget(self._placeholder, plot)
        self._placeholder.deleteLater()
        plot.show()  # a child added to an already visible frame starts hidden
        self._dirty = True
        self.refresh()

    def refresh(self) -> None:
        """Redraw when data changed since the last redraw (nothing before `build`)."""
        if not self._dirty or not self.built:
            return
        self._dirty = False
        self._draw()

    def _axis_items(self, axes) -> dict:
        return {"bottom": axes.NumberAxis("bottom"), "left": axes.NumberAxis("left")}

    def _add_items(self, pg, plot) -> None:
        raise NotImplementedError

    def _draw(self) -> None:
        raise NotImplementedError


class _StepPlot(_LazyPlot):
    """A plot against optimizer steps: whole-number step ticks, at least two steps wide."""

    def _axis_items(self, axes) -> dict:
        return {"bottom": axes.StepAxis("bottom"), "left": axes.NumberAxis("left")}

    def build(self) -> None:
        fresh = not self.built
        super().build()
        if fresh:
            self.plot_widget.getViewBox().setLimits(minXRange=2)


class LossPlot(_StepPlot):
    """``lossPlot``: training loss (raw and EMA-smoothed) and evaluation loss against steps."""

    def __init__(self) -> None:
        super().__init__("lossPlot", "Loss", "step", "loss")
        self.clear()

    def _add_items(self, pg, plot) -> None:
        self.raw = plot.plot(
            name="training",
            pen=pg.mkPen("#90caf9", width=1),
            symbolSize=6,
            symbolPen=pg.mkPen("#1565c0", width=1),
            symbolBrush="#90caf9",
        )
        self.smooth = plot.plot(name="smoothed (EMA)", pen=pg.mkPen("#1565c0", width=2))
        self.eval = plot.plot(
            name="evaluation",
            pen=pg.mkPen("#ef6c00", width=2),
            symbol="o",
            symbolSize=6,
            symbolBrush="#ef6c00",
        )

    def clear(self) -> None:
        self.steps: list[float] = []
        self.losses: list[float] = []
        self.ema: list[float] = []
        self._biased: list[float] = []
        self.eval_steps: list[float] = []
        self.eval_losses: list[float] = []
        self._dirty = True
        self.refresh()

    def add_step(self, step: int, loss: float) -> None:
        if self.steps and step <= self.steps[-1]:
            # Resumed from an earlier checkpoint: drop the part that will be redone.
            keep = sum(1 for s in self.steps if s < step)
            del self.steps[keep:], self.losses[keep:], self.ema[keep:], self._biased[keep:]
        self.steps.append(step)
        self.losses.append(loss)
        # Bias-corrected EMA: without the correction the first points lean toward zero.
        biased = EMA_BETA * (self._biased[-1] if self._biased else 0.0) + (1 - EMA_BETA) * loss
        self._biased.append(biased)
        self.ema.append(biased / (1 - EMA_BETA ** len(self._biased)))
        self._dirty = True

    def add_eval(self, step: int, loss: float) -> None:
        self.eval_steps.append(step)
        self.eval_losses.append(loss)
        self._dirty = True

    def _draw(self) -> None:
        _marked(self.raw, len(self.steps))
        self.raw.setData(self.steps, self.losses)
        self.smooth.setData(self.steps, self.ema)
        self.eval.setData(self.eval_steps, self.eval_losses)
        _keep_flat_readable(
            self.plot_widget.getViewBox(), self.losses + self.ema + self.eval_losses
        )


class LrPlot(_StepPlot):
    """``lrPlot``: the learning rate (left axis) and the gradient norm (right axis, its own
    scale) against steps; fed with `add_step` from each StepLogged."""

    LR_COLOR = "#2e7d32"
    NORM_COLOR = "#6a1b9a"

    def __init__(self) -> None:
        super().__init__("lrPlot", "Learning rate and grad norm", "step", "learning rate")
        self.clear()

    def _axis_items(self, axes) -> dict:
        return {**super()._axis_items(axes), "right": axes.NumberAxis("right")}

    def _add_items(self, pg, plot) -> None:
        item = plot.getPlotItem()
        self.lr = plot.plot(
            name="learning rate",
            pen=pg.mkPen(self.LR_COLOR, width=2),
            symbolSize=5,
            symbolPen=pg.mkPen(self.LR_COLOR, width=1),
            symbolBrush=self.LR_COLOR,
        )
        item.getAxis("left").setLabel("learning rate", color=self.LR_COLOR)
        # The grad norm has its own scale: a second view box over the plot's, sharing x.
        self.norm_view = pg.ViewBox()
        item.showAxis("right")
        right = item.getAxis("right")
        right.setLabel("grad norm", color=self.NORM_COLOR)
        right.setGrid(False)
        item.scene().addItem(self.norm_view)
        right.linkToView(self.norm_view)
        self.norm_view.setXLink(item.getViewBox())
        self.grad_norm = pg.PlotDataItem(
            pen=pg.mkPen(self.NORM_COLOR, width=1.5),
            symbolSize=5,
            symbolPen=pg.mkPen(self.NORM_COLOR, width=1),
            symbolBrush=self.NORM_COLOR,
        )
        self.grad_norm.setDownsampling(auto=True, method="peak")
        self.grad_norm.setClipToView(True)
        self.norm_view.addItem(self.grad_norm)
        item.legend.addItem(self.grad_norm, "grad norm")
        item.getViewBox().sigResized.connect(self._follow_main_view)
        self._follow_main_view()

    def _follow_main_view(self) -> None:
        main = self.plot_widget.getPlotItem().getViewBox()
        self.norm_view.setGeometry(main.sceneBoundingRect())
        self.norm_view.linkedViewChanged(main, self.norm_view.XAxis)

    def clear(self) -> None:
        self.steps: list[float] = []
        self.learning_rates: list[float] = []
        self.norm_steps: list[float] = []
        self.grad_norms: list[float] = []
        self._dirty = True
        self.refresh()

    def add_step(self, step: int, lr: float, grad_norm: float | None) -> None:
        """One logged step's learning rate and gradient norm (None when not logged)."""
        if self.steps and step <= self.steps[-1]:
            # Resumed from an earlier checkpoint: drop the part that will be redone.
            keep = sum(1 for s in self.steps if s < step)
            del self.steps[keep:], self.learning_rates[keep:]
            keep = sum(1 for s in self.norm_steps if s < step)
            del self.norm_steps[keep:], self.grad_norms[keep:]
        self.steps.append(step)
        self.learning_rates.append(lr)
        if grad_norm is not None and math.isfinite(grad_norm):
            self.norm_steps.append(step)
            self.grad_norms.append(grad_norm)
        self._dirty = True

    def _draw(self) -> None:
        _marked(self.lr, len(self.steps))
        _marked(self.grad_norm, len(self.norm_steps))
        self.lr.setData(self.steps, self.learning_rates)
        self.grad_norm.setData(self.norm_steps, self.grad_norms)
        _keep_flat_readable(self.plot_widget.getViewBox(), self.learning_rates)
        _keep_flat_readable(self.norm_view, self.grad_norms)


class VramPlot(_LazyPlot):
    """``vramPlot``: memory (GiB) against seconds since the job started.

    Lines: the device's used memory and the engine process's own memory (NVML, or the
    process's resident memory on the CPU), torch reserved and allocated (from the steps),
    for a run on several GPUs one used-memory line per GPU (``GPU 1 used``), and the
    estimate (per GPU for such a run) and the capacity as horizontal lines.
    """

    legend_offset = (-10, -10)  # bottom right: memory rises over a run, away from it

    def __init__(self) -> None:
        super().__init__("vramPlot", "Memory", "seconds since start", "GiB")
        self.cpu_mode = False
        self.process_name = "engine process"
        self.reference = {"estimate": None, "capacity": None}
        self.clear()

    def _axis_items(self, axes) -> dict:
        return {"bottom": axes.TimeAxis("bottom"), "left": axes.NumberAxis("left")}

    def _add_items(self, pg, plot) -> None:
        plot.getViewBox().setLimits(minYRange=MIN_MEMORY_SPAN_GIB, xMin=0)
        self.used = plot.plot(name="device used", pen=pg.mkPen("#6a1b9a", width=2))
        self.process = plot.plot(name="engine process", pen=pg.mkPen("#2e7d32", width=2))
        self.reserved = plot.plot(name="torch reserved", pen=pg.mkPen("#ef6c00", width=2))
        self.allocated = plot.plot(
            name="torch allocated", pen=pg.mkPen("#ffb74d", width=1, style=Qt.PenStyle.DashLine)
        )
        self.gpu_curves: dict = {}
        self.lines = {}
        for name, pen in (
            ("estimate", pg.mkPen("#1565c0", width=2, style=Qt.PenStyle.DashLine)),
            ("capacity", pg.mkPen("#c62828", width=2)),
        ):
            line = pg.InfiniteLine(
                angle=0,
                movable=False,
                pen=pen,
                label=name,
                # Left-aligned just below the line: a narrow plot never clips it at the side, and
                # a line at the top of the view (the auto-range ends there) not at the top.
                labelOpts={"position": 0.02, "anchors": [(0, 0), (0, 0)], "color": pen.color()},
            )
            plot.addItem(line)
            self.lines[name] = line
        self._show_legend()
        for name in self.lines:
            self._show_line(name)

    def clear(self) -> None:
        self.t_used: list[float] = []
        self.v_used: list[float] = []
        self.t_proc: list[float] = []
        self.v_proc: list[float] = []
        self.t_torch: list[float] = []
        self.v_reserved: list[float] = []
        self.v_allocated: list[float] = []
        self.gpu_points: dict[int, tuple[list[float], list[float]]] = {}
        if self.built:
            for curve in self.gpu_curves.values():
                self.plot_widget.getPlotItem().removeItem(curve)
            self.gpu_curves = {}
            self._show_legend()
        self._dirty = True
        self.refresh()

    def set_cpu_mode(self, cpu: bool) -> None:
        """On the CPU the process line is the engine's resident memory (psutil) and the
        device and torch CUDA lines stay empty, so the legend leaves them out."""
        self.cpu_mode = cpu
        self.process_name = "engine process RSS (CPU)" if cpu else "engine process (NVML)"
        self._show_legend()

    def _show_legend(self) -> None:
        legend = self.plot_widget.getPlotItem().legend if self.built else None
        if legend is None:
            return
        legend.clear()
        if not self.cpu_mode:
            legend.addItem(self.used, "device used (NVML)")
        legend.addItem(self.process, self.process_name)
        if not self.cpu_mode:
            legend.addItem(self.reserved, "torch reserved")
            legend.addItem(self.allocated, "torch allocated")
        for _, curve in sorted(self.gpu_curves.items()):
            legend.addItem(curve, curve.name())

    def set_estimate(self, total_bytes: int | None) -> None:
        self.reference["estimate"] = total_bytes
        self._show_line("estimate")

    def set_capacity(self, capacity_bytes: int | None) -> None:
        self.reference["capacity"] = capacity_bytes
        self._show_line("capacity")

    def _show_line(self, name: str) -> None:
        if not self.built:
            return
        line, value = self.lines[name], self.reference[name]
        if value:
            line.show()
            line.setValue(value / GIB)
            line.label.setFormat(f"{name} {value / GIB:.2f} GiB")
            # pyqtgraph redraws a label's text only on a value change and only while it is
            # shown; a new format or a line hidden until now would keep the old text.
            line.label.valueChanged()
        else:
            line.hide()

    def add_device(self, t: float, used_bytes: int | None, process_bytes: int | None) -> None:
        if used_bytes is not None:
            self.t_used.append(t)
            self.v_used.append(used_bytes / GIB)
        if process_bytes is not None:
            self.t_proc.append(t)
            self.v_proc.append(process_bytes / GIB)
        self._dirty = True

    def add_gpus(self, t: float, per_gpu_used) -> None:
        """One reading of each GPU a run on several GPUs uses: ``(index, used bytes)`` pairs."""
        for index, used in per_gpu_used:
            times, values = self.gpu_points.setdefault(index, ([], []))
            times.append(t)
            values.append(used / GIB)
            self._dirty = True

    def add_torch(self, t: float, allocated: int | None, reserved: int | None) -> None:
        if allocated is None and reserved is None:
            return
        self.t_torch.append(t)
        self.v_allocated.append((allocated or 0) / GIB)
        self.v_reserved.append((reserved or 0) / GIB)
        self._dirty = True

    def _draw(self) -> None:
        gpu_times = [times for times, _ in self.gpu_points.values()]
        last = max(
            ts[-1] for ts in (self.t_used, self.t_proc, self.t_torch, *gpu_times, [0.0]) if ts
        )
        axis = self.plot_widget.getAxis("bottom")
        clock = last >= CLOCK_FROM_S
        if axis.clock != clock:
            axis.clock = clock
            axis.setLabel("time since start (m:ss)" if clock else "seconds since start")
            axis.picture = None  # redraw the ticks in the new format
            axis.update()
        self.used.setData(self.t_used, self.v_used)
        self.process.setData(self.t_proc, self.v_proc)
        self.reserved.setData(self.t_torch, self.v_reserved)
        self.allocated.setData(self.t_torch, self.v_allocated)
        self._draw_gpus()

    def _draw_gpus(self) -> None:
        new = [index for index in self.gpu_points if index not in self.gpu_curves]
        for index in new:
            pg = _pyqtgraph()
            color = GPU_COLORS[index % len(GPU_COLORS)]
            self.gpu_curves[index] = self.plot_widget.plot(
                name=f"GPU {index} used", pen=pg.mkPen(color, width=2)
            )
        if new:
            self._show_legend()
        for index, (times, values) in self.gpu_points.items():
            self.gpu_curves[index].setData(times, values)
