"""The live plots: built after the window shows, nothing collected before that is lost."""

from __future__ import annotations

from studio.ui.plots import GIB, LossPlot, VramPlot


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


def test_window_with_deferred_plots_builds_and_shows_them_once_shown(make_window, qtbot):
    window = make_window(defer_plots=True)
    assert not window.loss_plot.built
    window.show()
    qtbot.waitUntil(lambda: window.loss_plot.built and window.vram_plot.built, timeout=30_000)
    assert window.loss_plot.plot_widget.isVisible()


def test_window_built_for_scripts_has_its_plots_at_once(make_window):
    from pyqtgraph import PlotWidget

    window = make_window()
    for name in ("lossPlot", "vramPlot"):
        assert window.findChild(PlotWidget, name) is not None, name
