"""Real short training runs on a tiny model, driven through the window as a person does:
finish a run, start another over its bundle, pause and resume, close mid-run with a
checkpoint, reopen, resume (replacing the earlier bundle), save the bundle with the button,
open bundles from the File menu, chat, and close during a run in each of the three ways."""

from __future__ import annotations

import pytest
from conftest import (
    LONG,
    answer,
    click,
    configure_run,
    fill_file_dialog,
    set_spin,
    use_model,
    wait_for_shape,
    write_dataset,
)
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QDialog, QLabel, QPushButton

from studio.core.bundle import read_bundle
from studio.core.engine.output import inspect_output
from studio.core.events import Failed, Finished, Paused, Resumed, StepLogged, Stopped
from studio.core.phases import JobState

pytestmark = pytest.mark.slow


def curve_points(window) -> int:
    items = window.loss_plot.plot_widget.getPlotItem().listDataItems()
    x, _ = items[0].getData()
    return 0 if x is None else len(x)


def run_to_end(qtbot, window, *answers) -> object:
    """Click Start (answering the questions with ``answers``) and wait for the job's end."""
    ended = []
    window.controller.jobEnded.connect(ended.append)
    for name in answers:
        answer(name)
    click(qtbot, window, "startButton")
    qtbot.waitUntil(lambda: bool(ended), timeout=LONG)
    return ended[0]


def test_train_replace_pause_close_reopen_resume_save_open_and_chat(
    make_window, qtbot, tiny_models, tmp_path
):
    data = write_dataset(tmp_path / "data.jsonl")
    out = tmp_path / "run"
    window = make_window()
    wait_for_shape(qtbot, window, str(tiny_models["llama"]))
    configure_run(qtbot, window, data, out, max_steps=3, save_steps=2)

    # A first short run finishes: its bundle is in place.
    first = run_to_end(qtbot, window)
    assert isinstance(first, Finished), first
    assert read_bundle(out).recipe.training.max_steps == 3
    status = window.findChild(QLabel, "jobStatusLabel")
    assert "ETA" not in status.text() and "Saving" not in window.statusBar().currentMessage()
    assert "Finished" in window.statusBar().currentMessage()

    # A longer run over it: the window asks before it will replace that bundle.
    set_spin(qtbot, window, "maxStepsSpin", 60)
    events = []
    window.controller.eventReceived.connect(events.append)
    seen = []
    answer("replaceButton", seen)
    click(qtbot, window, "startButton")
    assert seen and str(out) in seen[0]
    qtbot.waitUntil(lambda: curve_points(window) >= 2, timeout=LONG)

    # Pause: said at once, confirmed by the engine; no step is trained while paused.
    pause = window.findChild(QPushButton, "pauseButton")
    click(qtbot, window, "pauseButton")
    assert "Pausing" in window.findChild(QLabel, "jobPhaseLabel").text()
    qtbot.waitUntil(lambda: window.session.job is JobState.PAUSED, timeout=LONG)
    assert pause.text() == "Resume"
    click(qtbot, window, "pauseButton")
    qtbot.waitUntil(lambda: any(isinstance(e, Resumed) for e in events), timeout=LONG)
    held = next(i for i, e in enumerate(events) if isinstance(e, Paused))
    resumed = next(i for i, e in enumerate(events) if isinstance(e, Resumed))
    assert not any(isinstance(e, StepLogged) for e in events[held:resumed])
    steps_before = len(window.loss_plot.steps)
    qtbot.waitUntil(lambda: len(window.loss_plot.steps) > steps_before, timeout=LONG)

    # Close mid-run: "Stop with checkpoint and close" keeps the work.
    answer("stopAndCloseButton")
    window.close()
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=LONG)
    state = inspect_output(out)
    assert state.resumable and state.bundle_exists

    # Reopen: Start offers to resume; resuming over the first bundle asks to replace it.
    again = make_window(restore=True)
    assert again.session.recipe.output.dir == str(out)
    again.load_model()
    qtbot.waitUntil(lambda: again.findChild(QPushButton, "startButton").isEnabled(), timeout=LONG)
    seen.clear()
    answer("resumeButton", seen)
    answer("replaceButton", seen)
    ended = run_to_end(qtbot, again)
    assert isinstance(ended, Finished), ended
    assert len(seen) == 2 and "checkpoint" in seen[0] and "Resum" in seen[1]
    assert ended.step == 60 and read_bundle(out).recipe.training.max_steps == 60
    assert again.findChild(QLabel, "measuredPeakLabel").isVisible()
    assert again.vram_plot.t_proc, "the engine's memory was sampled (RSS on the CPU)"

    # Save the bundle with the button, into a folder typed in the file dialog.
    target = tmp_path / "saved" / "my-adapter"
    target.parent.mkdir()
    fill_file_dialog(str(target))
    click(qtbot, again, "saveBundleButton")
    qtbot.waitUntil(lambda: target.is_dir(), timeout=LONG)
    assert read_bundle(target).recipe.training.max_steps == 60
    assert str(target) in again.statusBar().currentMessage()

    # Saving again onto that existing folder picks it (not opens it) and asks before replacing.
    (target / "stale-marker.txt").write_text("from before")
    seen = []
    answer("replaceButton", seen)
    fill_file_dialog(str(target))
    again.findChild(QAction, "saveBundleAction").trigger()
    qtbot.waitUntil(lambda: not (target / "stale-marker.txt").exists(), timeout=LONG)
    assert seen and "already exists" in seen[0]
    assert read_bundle(target).recipe.training.max_steps == 60

    # File ▸ Export bundle… opens the export dialog for this bundle (export itself: its own tests).
    export = again.findChild(QAction, "exportBundleAction")
    assert export.isEnabled()
    export.trigger()
    qtbot.waitUntil(lambda: again.findChild(QDialog, "exportDialog") is not None)
    dialog = again.findChild(QDialog, "exportDialog")
    assert str(out) in dialog.findChild(QLabel, "exportBundleLabel").text()
    dialog.reject()

    # Chat with it, then open the saved copy from the File menu: the answers start afresh.
    again.findChild(object, "chatPromptEdit").setPlainText("Count to 3.")
    click(qtbot, again, "chatSendButton")
    qtbot.waitUntil(
        lambda: again.chat.answers is not None or "⚠" in again.chat.status.text(), timeout=LONG
    )
    assert again.chat.answers is not None, again.chat.status.toolTip()
    assert again.findChild(object, "chatAdapterView").toPlainText() == again.chat.answers[0]
    fill_file_dialog(str(target))
    again.findChild(QAction, "openBundleAction").trigger()
    qtbot.waitUntil(lambda: again.session.bundle == str(target), timeout=LONG)
    assert (
        again.chat.answers is None and not again.findChild(object, "chatAdapterView").toPlainText()
    )
    assert again.loss_plot.steps, "the opened bundle's loss curve is shown"


def test_a_failed_job_shows_its_phase_and_message_until_the_model_changes(
    make_window, qtbot, tiny_models, tmp_path
):
    # A folder that cannot be created (under /proc): only the engine finds out, at its start.
    out = "/proc/qlora-studio-test/run"
    window = make_window()
    wait_for_shape(qtbot, window, str(tiny_models["llama"]))
    configure_run(qtbot, window, write_dataset(tmp_path / "d.jsonl"), out, max_steps=3)
    ended = run_to_end(qtbot, window)
    assert isinstance(ended, Failed), ended
    panel = window.findChild(object, "failurePanel")
    assert panel.isVisible()
    message = window.findChild(QLabel, "failureMessageLabel").text()
    assert "/proc/qlora-studio-test" in message and "Traceback" not in message, message
    title = window.findChild(QLabel, "failureTitleLabel").text()
    assert ended.phase.label in title
    # The window stays usable; a different model source clears the stale failure.
    assert window.findChild(QPushButton, "startButton").isEnabled()
    assert window.settings_column.isEnabled()
    use_model(qtbot, window, str(tiny_models["qwen2"]))
    assert not panel.isVisible()


@pytest.mark.parametrize("choice", ["keep", "kill"])
def test_closing_during_a_run_offers_keep_running_and_stop_now(
    make_window, qtbot, tiny_models, tmp_path, choice
):
    window = make_window()
    out = tmp_path / "run"
    wait_for_shape(qtbot, window, str(tiny_models["llama"]))
    configure_run(qtbot, window, write_dataset(tmp_path / "d.jsonl"), out, max_steps=500)
    ended = []
    window.controller.jobEnded.connect(ended.append)
    click(qtbot, window, "startButton")
    qtbot.waitUntil(lambda: len(window.loss_plot.steps) >= 1, timeout=LONG)
    if choice == "keep":
        answer("keepRunningButton")
        window.close()
        assert window.isVisible() and window.controller.is_active
        click(qtbot, window, "stopButton")
        qtbot.waitUntil(lambda: bool(ended), timeout=LONG)
        assert isinstance(ended[0], Stopped) and inspect_output(out).resumable
    else:
        answer("killAndCloseButton")
        window.close()
        qtbot.waitUntil(lambda: not window.isVisible(), timeout=LONG)
        assert isinstance(ended[0], Failed) and ended[0].error_type == "EngineKilled"
        assert not window.controller.is_active


def test_a_run_on_two_simulated_gpus_draws_one_memory_line_per_gpu(
    make_window, qtbot, tiny_models, tmp_path, monkeypatch
):
    import json

    gpus = [
        {
            "name": f"Card {i}",
            "total_mib": 24576,
            "free_mib": 24000 - 500 * i,
            "compute_capability": [8, 6],
        }
        for i in range(2)
    ]
    monkeypatch.setenv("QLORA_STUDIO_FAKE_GPUS", json.dumps(gpus))
    data = write_dataset(tmp_path / "data.jsonl")
    out = tmp_path / "run"
    window = make_window()
    wait_for_shape(qtbot, window, str(tiny_models["llama"]))
    configure_run(qtbot, window, data, out, max_steps=2, save_steps=2)
    set_spin(qtbot, window, "distributedNumProcessesEdit", 2)
    assert "per GPU (2 processes" in window.findChild(QLabel, "estimateTotalLabel").text()

    ended = run_to_end(qtbot, window)
    assert isinstance(ended, Finished), ended
    assert read_bundle(out).steps == 2
    plot = window.vram_plot
    assert sorted(plot.gpu_curves) == [0, 1]
    for index, used_mib in ((0, 576), (1, 1076)):
        x, y = plot.gpu_curves[index].getData()
        assert len(x) >= 1 and y[-1] * 1024 == pytest.approx(used_mib)
    legend = plot.plot_widget.getPlotItem().legend
    names = [label.text for _, label in legend.items]
    assert "GPU 0 used" in names and "GPU 1 used" in names
    assert curve_points(window) >= 1, "rank 0's loss is plotted"
