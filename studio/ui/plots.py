"""Live plots (pyqtgraph): loss against steps and memory against time.

Events only append to lists; `refresh` (called from a timer, a few times a second) redraws
what changed, with downsampling and clip-to-view so long runs stay smooth.
"""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import Qt

GIB = float(1 << 30)
EMA_BETA = 0.9  # smoothing of the training loss (like TensorBoard's 0.9)

pg.setConfigOptions(antialias=True, background="w", foreground="#333")


def _plot(name: str, title: str, xlabel: str, ylabel: str) -> pg.PlotWidget:
    plot = pg.PlotWidget(title=title)
    plot.setObjectName(name)
    plot.showGrid(x=True, y=True, alpha=0.25)
    plot.setLabel("bottom", xlabel)
    plot.setLabel("left", ylabel)
    plot.addLegend(offset=(-10, 10))
    item = plot.getPlotItem()
    item.setDownsampling(auto=True, mode="peak")
    item.setClipToView(True)
    plot.setMinimumHeight(160)
    return plot


class LossPlot:
    """``lossPlot``: training loss (raw and EMA-smoothed) and evaluation loss against steps."""

    def __init__(self) -> None:
        self.widget = _plot("lossPlot", "Loss", "step", "loss")
        self.raw = self.widget.plot(name="training", pen=pg.mkPen("#90caf9", width=1))
        self.smooth = self.widget.plot(name="smoothed (EMA)", pen=pg.mkPen("#1565c0", width=2))
        self.eval = self.widget.plot(
            name="evaluation",
            pen=pg.mkPen("#ef6c00", width=2),
            symbol="o",
            symbolSize=6,
            symbolBrush="#ef6c00",
        )
        self.clear()

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

    def refresh(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        self.raw.setData(self.steps, self.losses)
        self.smooth.setData(self.steps, self.ema)
        self.eval.setData(self.eval_steps, self.eval_losses)


class VramPlot:
    """``vramPlot``: memory (GiB) against seconds since the job started.

    Lines: the device's used memory and the engine process's own memory (NVML, or the
    process's resident memory on the CPU), torch reserved and allocated (from the steps),
    the estimate and the capacity as horizontal lines.
    """

    def __init__(self) -> None:
        self.widget = _plot("vramPlot", "Memory", "seconds", "GiB")
        self.used = self.widget.plot(name="device used", pen=pg.mkPen("#6a1b9a", width=2))
        self.process = self.widget.plot(name="engine process", pen=pg.mkPen("#2e7d32", width=2))
        self.reserved = self.widget.plot(name="torch reserved", pen=pg.mkPen("#ef6c00", width=2))
        self.allocated = self.widget.plot(
            name="torch allocated", pen=pg.mkPen("#ffb74d", width=1, style=Qt.PenStyle.DashLine)
        )
        self.estimate_line = pg.InfiniteLine(
            angle=0,
            movable=False,
            pen=pg.mkPen("#1565c0", width=2, style=Qt.PenStyle.DashLine),
            label="estimate",
            labelOpts={"position": 0.12, "color": "#1565c0"},
        )
        self.capacity_line = pg.InfiniteLine(
            angle=0,
            movable=False,
            pen=pg.mkPen("#c62828", width=2),
            label="capacity",
            labelOpts={"position": 0.12, "color": "#c62828"},
        )
        self.widget.addItem(self.estimate_line)
        self.widget.addItem(self.capacity_line)
        self.estimate_line.hide()
        self.capacity_line.hide()
        self.process_name = "engine process"
        self.clear()

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
        self.process_name = "engine process RSS (CPU)" if cpu else "engine process (NVML)"
        legend = self.widget.getPlotItem().legend
        if legend is None:
            return
        legend.clear()
        if not cpu:
            legend.addItem(self.used, "device used (NVML)")
        legend.addItem(self.process, self.process_name)
        if not cpu:
            legend.addItem(self.reserved, "torch reserved")
            legend.addItem(self.allocated, "torch allocated")

    def set_estimate(self, total_bytes: int | None) -> None:
        self._set_line(self.estimate_line, total_bytes, "estimate")

    def set_capacity(self, capacity_bytes: int | None) -> None:
        self._set_line(self.capacity_line, capacity_bytes, "capacity")

    def _set_line(self, line, value, name) -> None:
        if value:
            line.setValue(value / GIB)
            line.label.setFormat(f"{name} {value / GIB:.2f} GiB")
            line.show()
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

    def refresh(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        self.used.setData(self.t_used, self.v_used)
        self.process.setData(self.t_proc, self.v_proc)
        self.reserved.setData(self.t_torch, self.v_reserved)
        self.allocated.setData(self.t_torch, self.v_allocated)
