"""A real short training run through the window on a tiny model: Start, loss points arrive,
Pause holds, Resume, Stop leaves a checkpoint, then a resumed run finishes and its bundle is
saved elsewhere and loads."""

from __future__ import annotations

import json

import pytest
from conftest import wait_for_shape
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QPushButton

from studio.core.bundle import read_bundle
from studio.ui.main_window import checkpoints_of

pytestmark = pytest.mark.slow
LONG = 300_000  # generous waits (not timing assertions): 2 shared CPU cores


def write_dataset(path, n=24):
    with path.open("w") as f:
        for i in range(n):
            f.write(
                json.dumps(
                    {
                        "instruction": f"Count to {i % 5 + 1}.",
                        "input": "",
                        "output": " ".join(str(k) for k in range(1, i % 5 + 2)),
                    }
                )
                + "\n"
            )
    return path


def curve_points(window) -> int:
    items = window.loss_plot.plot_widget.getPlotItem().listDataItems()
    x, _ = items[0].getData()
    return 0 if x is None else len(x)


def test_train_pause_stop_resume_finish_and_save(
    make_window, qtbot, tiny_models, tmp_path, monkeypatch
):
    window = make_window()
    data = write_dataset(tmp_path / "data.jsonl")
    out = tmp_path / "run"
    window.dataset.path.setText(str(data))
    window.dataset._edited()
    window.findChild(object, "maxLengthSpin").setValue(64)
    window.findChild(object, "maxStepsSpin").setValue(40)
    window.findChild(object, "saveStepsSpin").setValue(2)
    window.findChild(object, "evalStepsSpin").setValue(5)
    window.findChild(object, "batchSizeSpin").setValue(2)
    optimizer = window.findChild(object, "optimizerCombo")
    optimizer.setCurrentIndex(optimizer.findData("adamw_torch"))
    window.training.output.setText(str(out))
    wait_for_shape(qtbot, window, str(tiny_models["llama"]))

    start = window.findChild(QPushButton, "startButton")
    pause = window.findChild(QPushButton, "pauseButton")
    stop = window.findChild(QPushButton, "stopButton")
    qtbot.mouseClick(start, Qt.MouseButton.LeftButton)
    assert window.controller.is_active

    # Loss points arrive in the plot (drawn by the redraw timer).
    qtbot.waitUntil(lambda: curve_points(window) >= 2, timeout=LONG)

    # Pause holds: once Paused arrived, no new steps while we wait.
    qtbot.mouseClick(pause, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.controller.state == "paused", timeout=LONG)
    assert pause.text() == "Resume"
    held = len(window.loss_plot.steps)
    qtbot.wait(3000)
    assert len(window.loss_plot.steps) == held

    # Resume: steps continue.
    qtbot.mouseClick(pause, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(window.loss_plot.steps) > held, timeout=LONG)

    # Stop leaves a checkpoint.
    ended = []
    window.controller.jobEnded.connect(ended.append)
    qtbot.mouseClick(stop, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(ended), timeout=LONG)
    assert type(ended[0]).__name__ == "Stopped", ended[0]
    assert ended[0].checkpoint and checkpoints_of(str(out))
    assert not window.controller.is_active
    assert start.isEnabled() and not stop.isEnabled()
    assert window.vram_plot.t_proc, "the engine's memory was sampled (RSS on the CPU)"

    # Start again: resume from the checkpoint and run to the end.
    monkeypatch.setattr(window, "ask_resume", lambda checkpoint: True)
    ended.clear()
    qtbot.mouseClick(start, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(ended), timeout=LONG)
    assert type(ended[0]).__name__ == "Finished", ended[0]
    assert window.findChild(QPushButton, "saveBundleButton").isEnabled()
    assert window.estimate_panel.measured.isVisible() or window.estimate_panel.measured.text()
    info = read_bundle(out)
    assert info.recipe.training.max_steps == 40

    # Save a copy elsewhere (atomic), replacing only after confirmation.
    target = tmp_path / "saved" / "my-adapter"
    assert window.save_bundle(str(target)) == target
    assert read_bundle(target).recipe.lora.r == window.recipe().lora.r
    from PySide6.QtWidgets import QMessageBox

    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.No)
    assert window.save_bundle(str(target)) is None  # declined: the existing copy stays
    assert read_bundle(target)

    # Opening the bundle shows its loss curve and readies the chat.
    assert window.open_bundle(str(target))
    assert window.loss_plot.steps and window.chat.bundle == str(target)

    # Chat: the prompt is answered with the adapter and by the base model, side by side.
    window.findChild(object, "chatPromptEdit").setPlainText("Count to 3.")
    send = window.findChild(QPushButton, "chatSendButton")
    assert send.isEnabled()
    qtbot.mouseClick(send, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(
        lambda: window.chat.answers is not None or "⚠" in window.chat.status.text(), timeout=LONG
    )
    assert window.chat.answers is not None, window.chat.status.toolTip()
    adapter_answer, base_answer = window.chat.answers
    assert isinstance(adapter_answer, str) and isinstance(base_answer, str)
    assert window.findChild(object, "chatAdapterView").toPlainText() == adapter_answer
