"""Live plots (pyqtgraph): loss against steps and memory against time.

Events only append to lists; `refresh` (called from a timer, a few times a second) redraws
what changed, with downsampling and clip-to-view so long runs stay smooth.

pyqtgraph takes longer to import than the rest of the window takes to build, so a plot can
start as an empty frame (``widget``) whose pyqtgraph widget (``plot_widget``) is made by
`build`, which the window calls right after its first paint. (Importing it on a thread
instead slowed that paint down: the import holds the GIL.) Data that arrives before `build`
is kept and drawn then.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

GIB = float(1 << 30)
EMA_BETA = 0.9  # smoothing of the training loss (like TensorBoard's 0.9)

_pg = None


def _pyqtgraph():
    """pyqtgraph, imported once and configured for the studio's look."""
    global _pg
    if _pg is None:
        import pyqtgraph as pg  # a plain import, so that PyInstaller's analysis sees it

        pg.setConfigOptions(antialias=True, background="w", foreground="#333")
        _pg = pg
    return _pg


class _LazyPlot:
    """A titled plot whose pyqtgraph widget is made on the first `build`."""

    def __init__(self, name: str, title: str, xlabel: str, ylabel: str) -> None:
        self._labels = (name, title, xlabel, ylabel)
        self.widget = QWidget(objectName=f"{name}Frame")
        self.widget.setMinimumHeight(160)
        self._layout = QVBoxLayout(self.widget)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._placeholder = QLabel(f"{title}", alignment=Qt.AlignmentFlag.AlignCenter)
        self._layout.addWidget(self._placeholder)
        self.plot_widget = None
        self._dirty = True

    @property
    def built(self) -> bool:
        return self.plot_widget is not None

    def build(self) -> None:
        """Make the pyqtgraph widget (once) and draw what has been collected so far."""
        if self.built:
            return
        pg = _pyqtgraph()
        name, title, xlabel, ylabel = self._labels
        plot = pg.PlotWidget(title=title)
        plot.setObjectName(name)
        plot.showGrid(x=True, y=True, alpha=0.25)
        plot.setLabel("bottom", xlabel)
        plot.setLabel("left", ylabel)
        plot.addLegend(offset=(-10, 10))
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

    def _add_items(self, pg, plot) -> None:
        raise NotImplementedError

    def _draw(self) -> None:
        raise NotImplementedError


class LossPlot(_LazyPlot):
    """``lossPlot``: training loss (raw and EMA-smoothed) and evaluation loss against steps."""

    def __init__(self) -> None:
        super().__init__("lossPlot", "Loss", "step", "loss")
        self.clear()

    def _add_items(self, pg, plot) -> None:
        self.raw = plot.plot(name="training", pen=pg.mkPen("#90caf9", width=1))
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
        self.raw.setData(self.steps, self.losses)
        self.smooth.setData(self.steps, self.ema)
        self.eval.setData(self.eval_steps, self.eval_losses)


class VramPlot(_LazyPlot):
    """``vramPlot``: memory (GiB) against seconds since the job started.

    Lines: the device's used memory and the engine process's own memory (NVML, or the
    process's resident memory on the CPU), torch reserved and allocated (from the steps),
    the estimate and the capacity as horizontal lines.
    """

    def __init__(self) -> None:
        super().__init__("vramPlot", "Memory", "seconds", "GiB")
        self.cpu_mode = False
        self.process_name = "engine process"
        self.reference = {"estimate": None, "capacity": None}
        self.clear()

    def _add_items(self, pg, plot) -> None:
        self.used = plot.plot(name="device used", pen=pg.mkPen("#6a1b9a", width=2))
        self.process = plot.plot(name="engine process", pen=pg.mkPen("#2e7d32", width=2))
        self.reserved = plot.plot(name="torch reserved", pen=pg.mkPen("#ef6c00", width=2))
        self.allocated = plot.plot(
            name="torch allocated", pen=pg.mkPen("#ffb74d", width=1, style=Qt.PenStyle.DashLine)
        )
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
                labelOpts={"position": 0.12, "color": pen.color()},
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

    def add_torch(self, t: float, allocated: int | None, reserved: int | None) -> None:
        if allocated is None and reserved is None:
            return
        self.t_torch.append(t)
        self.v_allocated.append((allocated or 0) / GIB)
        self.v_reserved.append((reserved or 0) / GIB)
        self._dirty = True

    def _draw(self) -> None:
        self.used.setData(self.t_used, self.v_used)
        self.process.setData(self.t_proc, self.v_proc)
        self.reserved.setData(self.t_torch, self.v_reserved)
        self.allocated.setData(self.t_torch, self.v_allocated)
