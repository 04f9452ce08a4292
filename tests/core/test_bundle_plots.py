"""The bundle's loss.png and vram.png: what `bundle_charts` puts in them and how the axes read."""

from __future__ import annotations

import math

from studio.core.plots import (
    RSS_LABEL,
    Series,
    bundle_charts,
    chart_axes,
    format_tick,
    line_chart_png,
    shows_markers,
    training_seconds,
)

GIB = 1 << 30


def step_row(step, loss=2.0, elapsed=None, **memory):
    return {
        "type": "StepLogged",
        "step": step,
        "max_steps": 10,
        "epoch": 0.0,
        "loss": loss,
        "learning_rate": 1e-4,
        "grad_norm": 1.0,
        "tokens_per_second": 100.0,
        "elapsed_s": step * 0.5 if elapsed is None else elapsed,
        "eta_s": None,
        **memory,
    }


def test_loss_plot_of_one_step_shows_a_marker_in_a_readable_range():
    loss, _ = bundle_charts([step_row(1, loss=5.448904514312756)])
    (train,) = loss.series
    assert shows_markers(train)  # one point on a line chart is otherwise invisible
    axes = loss.axes()
    low, high = axes.y_range
    assert low < 5.4489 - 0.1 and high > 5.4489 + 0.1  # centred, not on an edge
    labels = [format_tick(t) for t in axes.y_ticks]
    assert len(labels) >= 2 and all(len(label) <= 4 for label in labels), labels
    assert axes.x_ticks == [0, 1, 2] and axes.x_labels == ["0", "1", "2"]
    assert line_chart_png(loss.series)[:8] == b"\x89PNG\r\n\x1a\n"


def test_loss_plot_step_ticks_are_whole_numbers():
    for last in (2, 3, 7, 45, 1234):
        loss, _ = bundle_charts([step_row(s, loss=3 - s / last) for s in range(1, last + 1)])
        ticks = loss.axes().x_ticks
        assert len(ticks) >= 2 and all(t == int(t) for t in ticks), (last, ticks)
    many = Series("train loss", list(range(1, 501)), [1.0] * 500)
    assert not shows_markers(many)  # a long curve stays a plain line
    assert not shows_markers(Series("estimate", [1, 2], [1.0, 1.0], dashed=True))


def test_memory_plot_of_a_cpu_run_draws_the_engine_rss_against_training_time():
    rows = [step_row(s, elapsed=s * 0.01, process_rss_bytes=GIB + s * (1 << 20)) for s in (1, 5)]
    _, memory = bundle_charts(rows, estimate={"total_bytes": 2 * GIB}, measured={"bytes": GIB})
    labels = [s.label for s in memory.series]
    assert labels == [RSS_LABEL, "estimate"] and RSS_LABEL == "engine process RSS"
    rss = memory.series[0]
    assert list(rss.xs) == [0.01, 0.05]
    assert [round(y * 1024) for y in rss.ys] == [1025, 1029]  # GiB
    assert memory.note == ""  # the curve says it; no "no GPU memory figures" over it
    assert memory.x_label == "training time (seconds)" and memory.y_label == "GiB"
    axes = memory.axes()
    assert axes.y_range[0] == 0 and axes.y_range[1] > 2.0  # the estimate stays off the frame
    assert all(len(label) <= 4 for label in axes.x_labels), axes.x_labels


def test_memory_plot_of_old_cpu_metrics_without_rss_says_so():
    _, memory = bundle_charts([step_row(1), step_row(2)], measured={"bytes": GIB})
    assert memory.series == () and memory.note == "trained on the CPU: peak RSS 1.00 GiB"


def test_memory_plot_on_a_gpu_shows_torch_figures_and_leaves_host_rss_out():
    rows = [
        step_row(
            s,
            cuda_allocated_bytes=GIB // 2,
            cuda_reserved_bytes=GIB,
            cuda_peak_bytes=GIB,
            process_rss_bytes=6 * GIB,  # host RAM: would squash the GPU lines to the floor
        )
        for s in (1, 2, 3)
    ]
    _, memory = bundle_charts(rows)
    assert [s.label for s in memory.series] == ["allocated", "reserved", "peak reserved"]
    assert list(memory.series[0].xs) == [0.5, 1.0, 1.5]  # elapsed_s, not steps
    assert memory.title == "GPU memory (GiB)"


def test_memory_plot_time_reads_as_clock_time_on_long_runs_and_continues_after_resume():
    assert training_seconds([{"elapsed_s": e} for e in (10, 20, 5, 15)]) == [10, 20, 25, 35]
    rows = [step_row(s, elapsed=s * 60.0, process_rss_bytes=GIB) for s in range(1, 31)]
    _, memory = bundle_charts(rows)
    axes = memory.axes()
    assert memory.x_label == "training time (m:ss)"
    assert all(t % 60 == 0 for t in axes.x_ticks)
    assert "10:00" in axes.x_labels and "30:00" in axes.x_labels, axes.x_labels


def test_flat_series_sit_in_the_middle_of_the_plot():
    axes = chart_axes([Series("lr", [1, 2, 3], [2e-4, 2e-4, 2e-4 * (1 + 1e-15)])])
    low, high = axes.y_range
    assert math.isclose((low + high) / 2, 2e-4, rel_tol=1e-6) and high - low > 2e-5
