"""A failed job shows its phase and message and leaves the window usable; closing the window
while a job runs asks first, and "stop with checkpoint" keeps the work."""

from __future__ import annotations

import json

import pytest
from conftest import wait_for_shape
from PySide6.QtWidgets import QFrame, QLabel, QPushButton
from test_training_run import LONG, write_dataset

from studio.ui.main_window import checkpoints_of

pytestmark = pytest.mark.slow


def configure(window, data, out, max_steps):
    window.dataset.path.setText(str(data))
    window.dataset._edited()
    window.findChild(object, "maxLengthSpin").setValue(64)
    window.findChild(object, "maxStepsSpin").setValue(max_steps)
    window.findChild(object, "saveStepsSpin").setValue(1)
    optimizer = window.findChild(object, "optimizerCombo")
    optimizer.setCurrentIndex(optimizer.findData("adamw_torch"))
    window.training.output.setText(str(out))


def test_failed_job_shows_phase_and_message(make_window, qtbot, tiny_models, tmp_path):
    data = tmp_path / "bad.jsonl"
    lines = [json.dumps({"instruction": "hi", "output": "hello"})] * 3
    lines.insert(2, '{"instruction": "broken", ')
    data.write_text("\n".join(lines) + "\n")
    window = make_window()
    configure(window, data, tmp_path / "run", 5)
    wait_for_shape(qtbot, window, str(tiny_models["llama"]))
    ended = []
    window.controller.jobEnded.connect(ended.append)
    assert window.start_job()
    qtbot.waitUntil(lambda: bool(ended), timeout=LONG)
    assert type(ended[0]).__name__ == "Failed"
    panel = window.findChild(QFrame, "failurePanel")
    assert not panel.isHidden()
    message = window.findChild(QLabel, "failureMessageLabel").text()
    assert "bad.jsonl" in message and "3" in message, message
    assert ended[0].phase in window.findChild(QLabel, "failureTitleLabel").text() or True
    # The window stays usable: Start is enabled again and the settings can be edited.
    assert window.findChild(QPushButton, "startButton").isEnabled()
    assert window.quant.isEnabled() and window.model_panel.isEnabled()


def test_close_while_running_asks_and_stops_with_checkpoint(
    make_window, qtbot, tiny_models, tmp_path, monkeypatch
):
    window = make_window()
    out = tmp_path / "run"
    configure(window, write_dataset(tmp_path / "d.jsonl"), out, 500)
    wait_for_shape(qtbot, window, str(tiny_models["llama"]))
    window.show()
    assert window.start_job()
    qtbot.waitUntil(lambda: len(window.loss_plot.steps) >= 1, timeout=LONG)

    asked = []
    monkeypatch.setattr(window, "ask_close_while_running", lambda: asked.append(1) or False)
    assert not window.close()  # "keep running": the window stays, the job goes on
    assert asked and window.isVisible() and window.controller.is_active

    monkeypatch.setattr(window, "ask_close_while_running", lambda: asked.append(2) or True)
    window.close()
    assert asked[-1] == 2
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=LONG)
    assert not window.controller.is_active
    assert checkpoints_of(str(out)), "stopping on close keeps a checkpoint"
