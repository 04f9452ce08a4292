"""The live plots: built after the window shows, nothing collected before that is lost."""

from __future__ import annotations

import math

from studio.ui.plots import GIB, LossPlot, LrPlot, VramPlot, tick_label


def curve(item):
    x, y = item.getData()
    return ([] if x is None else list(x)), ([] if y is None else list(y))


def test_loss_collected_before_build_is_drawn_by_build(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot.widget)
    plot.add_step(1, 2.0)
    plot.add_step(2, 1.0)
    plot.add_eval(2, 1.5)
    plot.refresh()  # nothing to draw on yet: must not fail, must not drop the data
    assert not plot.built
    plot.build()
    assert plot.built and plot.plot_widget.objectName() == "lossPlot"
    assert curve(plot.raw) == ([1, 2], [2.0, 1.0])
    assert curve(plot.eval) == ([2], [1.5])
    xs, ema = curve(plot.smooth)
    assert xs == [1, 2] and ema[0] == 2.0 and 1.0 < ema[1] < 2.0
    plot.build()  # idempotent
    plot.add_step(3, 0.5)
    plot.refresh()
    assert curve(plot.raw)[0] == [1, 2, 3]


def test_memory_plot_settings_made_before_build_apply_at_build(qtbot):
    plot = VramPlot()
    qtbot.addWidget(plot.widget)
    plot.set_cpu_mode(True)
    plot.set_estimate(3 * (1 << 30))
    plot.set_capacity(None)
    plot.add_device(0.5, None, 1 << 30)
    plot.build()
    estimate, capacity = plot.lines["estimate"], plot.lines["capacity"]
    assert estimate.isVisible() and abs(estimate.value() - 3.0) < 1e-9
    assert not capacity.isVisible()
    legend = plot.plot_widget.getPlotItem().legend
    assert [label.text for _, label in legend.items] == ["engine process RSS (CPU)"]
    assert curve(plot.process) == ([0.5], [(1 << 30) / GIB])
    plot.set_cpu_mode(False)  # after build it changes the legend at once
    assert len(legend.items) == 4


def test_reference_lines_set_after_build_show_their_values(qtbot):
    plot = VramPlot()
    qtbot.addWidget(plot.widget)
    plot.build()
    plot.set_estimate(None)  # hidden at first, as before the model's shape is known
    plot.set_estimate(3 * (1 << 30))
    assert plot.lines["estimate"].label.toPlainText() == "estimate 3.00 GiB"
    plot.set_estimate(3 * (1 << 30) + (1 << 29))
    assert plot.lines["estimate"].label.toPlainText() == "estimate 3.50 GiB"
    plot.set_capacity(8 * (1 << 30))
    assert plot.lines["capacity"].label.toPlainText() == "capacity 8.00 GiB"


def test_a_deferred_window_paints_first_then_builds_its_panels_and_plots(make_window, qtbot):
    window = make_window(defer_build=True, show=False)
    assert window.session is None, "nothing but the frame before the first paint"
    window.show()
    qtbot.waitUntil(lambda: window.session is not None, timeout=30_000)
    qtbot.waitUntil(lambda: window.loss_plot.built and window.vram_plot.built, timeout=30_000)
    assert window.loss_plot.plot_widget.isVisible()
    assert window.findChild(object, "startButton").isVisible()


def test_window_built_for_scripts_has_its_plots_at_once(make_window):
    from pyqtgraph import PlotWidget

    window = make_window()
    for name in ("lossPlot", "vramPlot"):
        assert window.findChild(PlotWidget, name) is not None, name


# -- how the plots read ------------------------------------------------------------------
def data(item):
    """All of a curve's points (`curve` gives what is drawn: clipped to the view)."""
    x, y = item.xData, item.yData
    return ([] if x is None else list(x)), ([] if y is None else list(y))


def shown(plot, qtbot):
    """``plot`` built and on screen (offscreen), at a size a window gives it."""
    qtbot.addWidget(plot.widget)
    plot.build()
    plot.widget.resize(640, 260)
    plot.widget.show()
    qtbot.waitExposed(plot.widget)
    return plot


def tick_texts(axis, low, high, size):
    """The tick labels pyqtgraph generates for ``low``..``high``, level by level."""
    return [
        axis.tickStrings(values, axis.autoSIPrefixScale, spacing)
        for spacing, values in axis.tickValues(low, high, size)
    ]


def view_range(plot, axis=1, view=None):
    view = view or plot.plot_widget.getViewBox()
    return view.viewRange()[axis]


def test_loss_plot_of_one_step_shows_a_marker_and_short_tick_labels(qtbot):
    plot = shown(LossPlot(), qtbot)
    plot.add_step(1, 5.4489004)
    plot.refresh()
    assert plot.ema[0] != plot.losses[0]  # 5.448900400000001: the EMA's float noise
    # pyqtgraph zoomed into that 1e-15 span and labelled its ticks 5.448900400000001
    qtbot.waitUntil(lambda: abs(sum(view_range(plot)) / 2 - 5.4489) < 1e-3, timeout=5000)
    low, high = view_range(plot)
    assert high - low > 0.1, (low, high)
    assert plot.raw.opts["symbol"] is not None  # a single point on a line is invisible
    assert len(plot.raw.scatter.data) == 1 and plot.raw.scatter.isVisible()
    axis = plot.plot_widget.getAxis("left")
    texts = tick_texts(axis, low, high, axis.height())
    assert texts and all(0 < len(t) <= 4 for level in texts for t in level), texts
    assert "(x" not in axis.labelString()


def test_loss_plot_markers_go_once_a_curve_is_long(qtbot):
    plot = shown(LossPlot(), qtbot)
    for step in range(1, 201):
        plot.add_step(step, 3.0 - step / 100)
    plot.refresh()
    assert plot.raw.opts["symbol"] is None


def test_step_axes_tick_only_whole_steps(qtbot):
    plot = shown(LossPlot(), qtbot)
    for step, loss in ((1, 2.0), (2, 1.5), (3, 1.2)):
        plot.add_step(step, loss)
    plot.refresh()
    lr = shown(LrPlot(), qtbot)
    for axis in (plot.plot_widget.getAxis("bottom"), lr.plot_widget.getAxis("bottom")):
        for size in (120, 400, 1200, 3000):
            values = [v for _, level in axis.tickValues(1, 3, size) for v in level]
            assert values and all(v == int(v) for v in values), (size, values)
    qtbot.waitUntil(lambda: view_range(plot, axis=0)[1] > 3, timeout=5000)
    low, high = view_range(plot, axis=0)
    axis = plot.plot_widget.getAxis("bottom")
    texts = [t for level in tick_texts(axis, low, high, axis.width()) for t in level]
    assert "1" in texts and "3" in texts and not any("." in t for t in texts), texts


def test_memory_axes_have_no_si_prefix_scaling(qtbot):
    plot = shown(VramPlot(), qtbot)
    plot.set_cpu_mode(True)
    for t in (0.01, 0.02, 0.03, 0.04, 0.05):
        plot.add_device(t, None, (1 << 30) + int(t * (1 << 24)))
    plot.refresh()
    bottom, left = plot.plot_widget.getAxis("bottom"), plot.plot_widget.getAxis("left")
    qtbot.waitUntil(lambda: bottom.range[1] < 0.2, timeout=5000)
    assert "x0.001" not in bottom.labelString() and "(x" not in bottom.labelString()
    assert "seconds" in bottom.labelString()
    assert "(x" not in left.labelString()
    low, high = view_range(plot, axis=0)
    texts = [t for level in tick_texts(bottom, low, high, bottom.width()) for t in level]
    assert "0.02" in texts and all(len(t) <= 5 for t in texts), texts
    low, high = view_range(plot)
    assert high - low >= 1 / 16 - 1e-9  # GiB: memory a few MiB apart reads 1.00, 1.01
    texts = [t for level in tick_texts(left, low, high, left.height()) for t in level]
    assert "1.00" in texts and all(len(t) <= 5 for t in texts), texts


def test_memory_time_reads_as_minutes_on_long_runs(qtbot):
    plot = shown(VramPlot(), qtbot)
    for t in range(0, 1500, 10):
        plot.add_device(float(t), None, 1 << 30)
    plot.refresh()
    bottom = plot.plot_widget.getAxis("bottom")
    assert "m:ss" in bottom.labelString()
    qtbot.waitUntil(lambda: bottom.range[1] > 1000, timeout=5000)
    low, high = view_range(plot, axis=0)
    texts = tick_texts(bottom, low, high, bottom.width())
    assert "5:00" in texts[0] and "20:00" in texts[0], texts


def test_lr_plot_draws_learning_rate_and_grad_norm(qtbot):
    lr = LrPlot()
    qtbot.addWidget(lr.widget)
    lr.add_step(1, 2e-4, 1.5)  # before build: kept
    shown(lr, qtbot)
    assert lr.built and lr.plot_widget.objectName() == "lrPlot"
    assert data(lr.lr) == ([1], [2e-4]) and data(lr.grad_norm) == ([1], [1.5])
    assert lr.lr.opts["symbol"] is not None and lr.grad_norm.opts["symbol"] is not None
    lr.add_step(2, 2e-4, None)  # a step without a logged grad norm
    lr.add_step(3, 2e-4, 0.5)
    lr.refresh()
    assert data(lr.lr) == ([1, 2, 3], [2e-4] * 3)
    assert data(lr.grad_norm) == ([1, 3], [1.5, 0.5])
    assert lr.grad_norm.getViewBox() is lr.norm_view  # its own scale, on the right axis
    lr.add_step(2, 1e-4, 1.0)  # resumed from step 1: steps 2 and 3 are redone
    lr.refresh()
    assert data(lr.lr) == ([1, 2], [2e-4, 1e-4])
    assert data(lr.grad_norm) == ([1, 2], [1.5, 1.0])
    lr.clear()
    assert data(lr.lr) == ([], []) and data(lr.grad_norm) == ([], [])


def test_lr_plot_of_a_constant_rate_reads_plainly(qtbot):
    lr = shown(LrPlot(), qtbot)
    for step in (1, 2, 3):
        lr.add_step(step, 2e-4, 1.0)
    lr.refresh()
    qtbot.waitUntil(lambda: view_range(lr)[0] < 2e-4 < view_range(lr)[1], timeout=5000)
    low, high = view_range(lr)
    assert 1e-5 < high - low < 1e-3
    axis = lr.plot_widget.getAxis("left")
    texts = [t for level in tick_texts(axis, low, high, axis.height()) for t in level]
    assert "2.0e-4" in texts and all(len(t) <= 7 for t in texts), texts
    norm_low, norm_high = view_range(lr, view=lr.norm_view)
    assert norm_low < 1.0 < norm_high and norm_high - norm_low > 0.1


def test_tick_labels_have_the_decimals_their_spacing_needs():
    assert tick_label(5.25, 0.25) == "5.25" and tick_label(5.0, 0.2) == "5.0"
    assert tick_label(1200.0, 100.0) == "1200" and tick_label(0.0, 0.5) == "0"
    assert tick_label(1.5e-4, 5e-6) == "1.50e-4" and tick_label(3e-5, 1e-5) == "3e-5"
    assert not math.isnan(float(tick_label(1e7, 1e6)))


def test_the_launch_paints_first_and_builds_everything_without_torch(tmp_path):
    """In a fresh process, as `qlora-studio` starts: the frame paints before any panel
    exists, the panels and plots are built after it (their modules imported on a worker
    thread), and none of that imports torch or the training libraries."""
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import sys
        from PySide6.QtCore import QEvent, QObject, QTimer
        from PySide6.QtWidgets import QApplication
        app = QApplication([])
        from studio.app import build_main_window
        window = build_main_window(defer_build=True)
        seen = []
        class FirstPaint(QObject):
            def eventFilter(self, obj, event):
                if event.type() == QEvent.Type.Paint and not seen:
                    seen.append(window.session is None)
                return False
        watcher = FirstPaint()
        window.installEventFilter(watcher)
        def check():
            if window.session is None or not all(p.built for p in window.live.plots):
                QTimer.singleShot(20, check)
                return
            heavy = [m for m in ("torch", "transformers", "peft", "bitsandbytes") if m in sys.modules]
            print("first paint before build:", seen[0], "heavy:", heavy, flush=True)
            app.quit()
        window.show()
        QTimer.singleShot(0, check)
        QTimer.singleShot(60000, app.quit)
        app.exec()
        """
    )
    env = dict(
        os.environ,
        QT_QPA_PLATFORM="offscreen",
        QLORA_STUDIO_SETTINGS_DIR=str(tmp_path),
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert "first paint before build: True heavy: []" in done.stdout, done.stdout + done.stderr
