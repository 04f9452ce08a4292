"""Flows a person walks in the window that need no training run: the wheel over the settings,
a window that fits a laptop screen, Start disabled (with the reason) for a model or dataset
the window already knows is unusable, the estimate's Apply button, settings that have no
effect disabled."""

from __future__ import annotations

import json

import pytest
from conftest import choose, click, set_spin, type_into, use_model, wait_for_shape
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QLabel, QPushButton, QScrollArea

from studio.core.events import PhaseChanged
from studio.core.phases import Phase


def wheel(widget, steps: int = -3) -> None:
    """Turn the mouse wheel over ``widget``'s centre: a window-system event, delivered (and
    propagated to the parents when ignored) as a real one is."""
    window = widget.window()
    pos = widget.mapTo(window, widget.rect().center())
    QTest.wheelEvent(window.windowHandle(), QPointF(pos), QPoint(0, 120 * steps))
    QApplication.processEvents()


def test_the_wheel_scrolls_the_settings_and_changes_only_a_focused_control(make_window, qtbot):
    window = make_window()
    window.resize(1000, 600)  # the settings column needs scrolling
    scroll = window.findChild(QScrollArea, "settingsScroll")
    qtbot.waitUntil(lambda: scroll.verticalScrollBar().maximum() > 0)
    spin = window.findChild(object, "maxStepsSpin")
    combo = window.findChild(object, "optimizerCombo")
    before = (spin.value(), combo.currentIndex(), window.session.recipe)
    window.findChild(object, "startButton").setFocus()
    bar = scroll.verticalScrollBar()
    scroll.ensureWidgetVisible(combo)
    scrolled = bar.value()
    assert scrolled > 0
    wheel(combo, steps=1)  # up: the column scrolls, the optimizer stays
    assert bar.value() < scrolled, "the wheel scrolled the column"
    scroll.ensureWidgetVisible(spin)
    scrolled = bar.value()
    wheel(spin, steps=1)
    assert bar.value() < scrolled
    assert (spin.value(), combo.currentIndex(), window.session.recipe) == before
    # Once focused (clicked or tabbed into), the wheel does change it.
    scroll.ensureWidgetVisible(spin)
    spin.setFocus()
    wheel(spin, steps=1)
    assert spin.value() == before[0] + 1
    assert window.session.recipe.training.max_steps == before[0] + 1


FITS_SCRIPT = """
import json, sys
from PySide6.QtWidgets import QApplication
from studio.app import build_main_window
app = QApplication(sys.argv)
window = build_main_window(restore=False, autoload=False)
window.show()
app.processEvents()
area = window.screen().availableGeometry()
frame = window.frameGeometry()
print(json.dumps({"area": [area.width(), area.height()],
                  "frame": [frame.x(), frame.y(), frame.width(), frame.height()]}))
window.close()
"""


def test_the_window_fits_a_1366_by_768_screen_at_start(tmp_path):
    import os
    import subprocess
    import sys

    config = tmp_path / "screen.json"
    config.write_text(
        json.dumps(
            {
                "windowFrameMargins": True,
                "screens": [
                    {"name": "laptop", "x": 0, "y": 0, "width": 1366, "height": 768, "dpr": 1}
                ],
            }
        )
    )
    env = dict(
        os.environ,
        QT_QPA_PLATFORM=f"offscreen:configfile={config}",
        QLORA_STUDIO_SETTINGS_DIR=str(tmp_path),
    )
    done = subprocess.run(
        [sys.executable, "-c", FITS_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["area"] == [1366, 768], "the simulated laptop screen was used"
    x, y, width, height = seen["frame"]
    assert x >= 0 and y >= 0 and x + width <= 1366 and y + height <= 768, seen


def test_long_status_text_elides_instead_of_widening_the_window(make_window, qtbot):
    window = make_window()
    width = window.width()
    long = "a very long status message " * 40
    window.session.apply_event(PhaseChanged(Phase.RESOLVING, long, None))
    window.statusBar().showMessage(long)
    qtbot.wait(50)  # let the layout settle (no condition to wait on: nothing should change)
    assert window.width() == width
    phase = window.findChild(QLabel, "jobPhaseLabel")
    assert long.strip() in phase.text() and phase.toolTip()
    assert QLabel.text(phase).endswith("…"), "drawn elided"
    assert phase.width() < window.width()


def test_start_is_disabled_with_the_reason_for_a_model_that_cannot_be_read(
    make_window, qtbot, tiny_models, tmp_path
):
    window = make_window()
    wait_for_shape(qtbot, window, str(tiny_models["llama"]))
    line = window.vram_plot.lines["estimate"]
    assert line.isVisible()
    start = window.findChild(QPushButton, "startButton")
    qtbot.waitUntil(start.isEnabled, timeout=120_000)  # once the dataset is checked
    missing = tmp_path / "no-such-model"
    use_model(qtbot, window, str(missing))
    assert not start.isEnabled()
    reason = window.findChild(QLabel, "startBlockedLabel")
    assert reason.isVisible() and str(missing) in reason.text()
    verdict = window.findChild(QLabel, "estimateVerdictLabel").text()
    assert "cannot be read" in verdict, "the estimate says why, not 'waiting for the shape'"
    assert not line.isVisible(), "no stale estimate line on the memory plot"
    # Back to a good model: everything follows.
    wait_for_shape(qtbot, window, str(tiny_models["llama"]))
    qtbot.waitUntil(start.isEnabled, timeout=120_000)
    assert not reason.isVisible() and line.isVisible()


def test_start_is_disabled_for_a_dataset_the_window_flagged(
    make_window, qtbot, tiny_models, tmp_path
):
    window = make_window()
    wait_for_shape(qtbot, window, str(tiny_models["llama"]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')
    type_into(qtbot, window, "datasetPathEdit", str(bad))
    error = window.findChild(QLabel, "datasetErrorLabel")
    qtbot.waitUntil(lambda: error.isVisible(), timeout=120_000)
    assert "bad.jsonl" in error.text(), "named in the settings column, not only in the preview"
    start = window.findChild(QPushButton, "startButton")
    assert not start.isEnabled()
    assert "dataset" in window.findChild(QLabel, "startBlockedLabel").text().lower()
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    type_into(qtbot, window, "datasetPathEdit", str(good))
    qtbot.waitUntil(lambda: start.isEnabled(), timeout=120_000)
    assert not error.isVisible()


def test_the_advice_has_an_apply_button_that_makes_it_fit(
    make_window, qtbot, tiny_models, monkeypatch, tmp_path
):
    monkeypatch.setenv(
        "QLORA_STUDIO_FAKE_GPUS",
        json.dumps(
            [{"name": "Small", "total_mib": 1000, "free_mib": 1000, "compute_capability": [8, 6]}]
        ),
    )
    # Examples longer than max_length, so the estimate counts max_length itself.
    data = tmp_path / "long.jsonl"
    row = {"instruction": "Write.", "output": " ".join(["word"] * 3000)}
    data.write_text("".join(json.dumps(row) + "\n" for _ in range(4)))
    window = make_window()
    wait_for_shape(qtbot, window, str(tiny_models["llama"]))
    type_into(qtbot, window, "datasetPathEdit", str(data))
    qtbot.waitUntil(lambda: window.session.data_longest is not None, timeout=120_000)
    set_spin(qtbot, window, "batchSizeSpin", 16)
    set_spin(qtbot, window, "maxLengthSpin", 2048)
    assert window.session.estimate.sequence_tokens == 2048
    assert window.session.estimate.verdict == "does_not_fit"
    apply = window.findChild(QPushButton, "applyAdviceButton")
    assert apply.isVisible()
    changes = window.session.estimate.advice_changes
    click(qtbot, window, "applyAdviceButton")
    assert window.session.estimate.verdict != "does_not_fit"
    for section, values in changes.items():
        for key, value in values.items():
            assert getattr(getattr(window.session.recipe, section), key) == value
    assert window.findChild(object, "gradCheckpointCheck").isChecked() == (
        window.session.recipe.training.gradient_checkpointing
    )
    assert not apply.isVisible()


def test_settings_without_effect_are_disabled_with_the_reason(make_window, qtbot):
    window = make_window()
    upcast = window.findChild(object, "fp32UpcastCheck")
    qtype = window.findChild(object, "quantTypeCombo")
    epochs = window.findChild(object, "epochsSpin")
    assert upcast.isEnabled() and qtype.isEnabled()
    assert not epochs.isEnabled(), "max_steps wins over epochs"
    choose(qtbot, window, "quantModeCombo", "none")
    assert not upcast.isEnabled() and "No effect now" in upcast.toolTip()
    assert not qtype.isEnabled()
    choose(qtbot, window, "quantModeCombo", "8bit")
    assert upcast.isEnabled() and not qtype.isEnabled()
    set_spin(qtbot, window, "maxStepsSpin", -1)
    assert epochs.isEnabled()


def test_an_edit_the_recipe_refuses_is_undone_and_said(make_window, qtbot):
    window = make_window()
    type_into(qtbot, window, "outputDirEdit", "   ")
    message = window.statusBar().currentMessage()
    assert "Not changed" in message and "output.dir" in message
    edit = window.findChild(object, "outputDirEdit")
    qtbot.waitUntil(lambda: edit.text() == window.session.recipe.output.dir)


def test_lora_targets_the_model_lacks_block_start_naming_the_modules_it_has(
    make_window, qtbot, tiny_models
):
    window = make_window()
    wait_for_shape(qtbot, window, str(tiny_models["llama"]))
    start = window.findChild(QPushButton, "startButton")
    qtbot.waitUntil(start.isEnabled, timeout=120_000)
    type_into(qtbot, window, "loraTargetsEdit", "nonexistent_proj")
    assert not start.isEnabled()
    reason = window.findChild(QLabel, "startBlockedLabel").text()
    assert "nonexistent_proj" in reason and "q_proj" in reason, reason
    type_into(qtbot, window, "loraTargetsEdit", "q_proj, v_proj")
    qtbot.waitUntil(start.isEnabled, timeout=120_000)


HOLD_LOCK = """
import sys
from studio.core.engine.lock import acquire
lock = acquire(sys.argv[1], command="qlora-studio train elsewhere.toml")
print("held", flush=True)
sys.stdin.read()
"""


def test_start_on_an_output_folder_another_run_holds_says_who_holds_it(
    make_window, qtbot, tiny_models, tmp_path
):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from conftest import dismiss

    out = tmp_path / "run"
    repo = Path(__file__).resolve().parents[2]
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(repo)),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        window = make_window()
        wait_for_shape(qtbot, window, str(tiny_models["llama"]))
        type_into(qtbot, window, "outputDirEdit", str(out))
        seen = []
        dismiss(seen)
        click(qtbot, window, "startButton")
        assert seen and str(holder.pid) in seen[0], seen
        assert not window.controller.is_active
    finally:
        holder.stdin.close()
        holder.wait(30)


def test_start_right_after_typing_a_path_without_enter_waits_for_its_check(
    make_window, qtbot, tiny_models, tmp_path
):
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QLineEdit

    window = make_window()
    wait_for_shape(qtbot, window, str(tiny_models["llama"]))
    start = window.findChild(QPushButton, "startButton")
    qtbot.waitUntil(start.isEnabled, timeout=120_000)
    edit = window.findChild(QLineEdit, "datasetPathEdit")
    edit.setFocus()
    edit.selectAll()
    qtbot.keyClicks(edit, str(tmp_path / "missing.jsonl"))  # no Enter
    qtbot.mouseClick(start, Qt.MouseButton.LeftButton)  # focus leaves the edit: it commits
    assert window.session.recipe.dataset.path == str(tmp_path / "missing.jsonl")
    assert not window.controller.is_active, "nothing starts on a file nobody checked"
    error = window.findChild(QLabel, "datasetErrorLabel")
    qtbot.waitUntil(error.isVisible, timeout=120_000)
    assert "missing.jsonl" in error.text() and not start.isEnabled()


def test_several_gpus_show_the_per_gpu_estimate(make_window, qtbot, tiny_models, monkeypatch):
    gpus = [
        {"name": f"Card {i}", "total_mib": 24576, "free_mib": 24000, "compute_capability": [8, 6]}
        for i in range(2)
    ]
    monkeypatch.setenv("QLORA_STUDIO_FAKE_GPUS", json.dumps(gpus))
    window = make_window()
    wait_for_shape(qtbot, window, str(tiny_models["llama"]))
    # the figures below are compared with each other: all of them after the data is measured
    qtbot.waitUntil(lambda: window.session.data_longest is not None, timeout=120_000)
    strategy = window.findChild(object, "distributedStrategyEdit")
    assert not strategy.isEnabled(), "one process: the strategy has no effect"
    one = window.session.estimate.total_bytes
    set_spin(qtbot, window, "distributedNumProcessesEdit", 2)
    assert strategy.isEnabled()
    choose(qtbot, window, "distributedStrategyEdit", "ddp")
    label = window.findChild(QLabel, "estimateTotalLabel")
    assert "per GPU (2 processes, DDP)" in label.text()
    ddp = window.session.estimate.total_bytes
    choose(qtbot, window, "distributedStrategyEdit", "fsdp")
    assert "FSDP" in label.text()
    assert window.session.estimate.total_bytes < ddp, "FSDP shards what DDP replicates"
    assert ddp >= one


@pytest.mark.slow
def test_what_fits_lists_catalog_models_and_picking_one_plans_with_it(
    make_window, qtbot, monkeypatch
):
    from PySide6.QtWidgets import QDialog

    gpu = [
        {"name": "RTX 4090", "total_mib": 24564, "free_mib": 24000, "compute_capability": [8, 9]}
    ]
    monkeypatch.setenv("QLORA_STUDIO_FAKE_GPUS", json.dumps(gpu))
    window = make_window()
    click(qtbot, window, "whatFitsButton")
    qtbot.waitUntil(lambda: window.findChild(QDialog, "planDialog") is not None)
    dialog = window.findChild(QDialog, "planDialog")
    qtbot.waitUntil(lambda: dialog.rows is not None, timeout=600_000)
    view = dialog.view
    names = [view.item(row, 0).text() for row in range(view.rowCount())]
    assert any("70B" in name for name in names) and any("SmolLM2" in name for name in names)
    row = next(i for i, name in enumerate(names) if "70B" in name)
    view.setCurrentCell(row, 0)
    view.setFocus()
    qtbot.keyClick(view, Qt.Key.Key_Return)  # Enter on the selected row picks it
    source = window.session.recipe.model.source
    assert source.startswith("catalog:") and "70b" in source.lower()
    window.load_model()
    qtbot.waitUntil(lambda: window.session.estimate is not None, timeout=300_000)
    assert "(plan)" in window.findChild(QLabel, "modelSummaryLabel").text()
    reason = window.findChild(QLabel, "startBlockedLabel").text()
    assert "is a plan" in reason and not window.findChild(QPushButton, "startButton").isEnabled()
