"""UI test fixtures and helpers that drive the real widgets as a person does: type into a
field and press Enter, click buttons, answer the window's questions by clicking their
buttons, fill in the file dialog. Settings go to a temporary folder; windows are always shut
down."""

from __future__ import annotations

import json

import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (
    QAbstractButton,
    QApplication,
    QComboBox,
    QFileDialog,
    QLineEdit,
    QMessageBox,
    QPushButton,
)

LONG = 300_000  # generous waits for conditions (not timing assertions): 2 shared CPU cores


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path, monkeypatch):
    """QSettings go to a temporary folder, never the user's own settings."""
    folder = tmp_path / "settings"
    folder.mkdir()
    monkeypatch.setenv("QLORA_STUDIO_SETTINGS_DIR", str(folder))
    return folder


@pytest.fixture
def make_window(qtbot):
    """Build and show main windows (model not read until a test asks) and shut each down
    after the test."""
    windows = []

    def make(*, show: bool = True, **kwargs):
        from studio.app import build_main_window

        kwargs.setdefault("restore", False)
        kwargs.setdefault("autoload", False)
        window = build_main_window(**kwargs)
        qtbot.addWidget(window)
        windows.append(window)
        if show:
            window.show()
            qtbot.waitExposed(window)
        return window

    yield make
    for window in windows:
        if window.session is None:
            continue
        window.controller.shutdown()
        window.chat.shutdown()
    from studio.ui.background import wait_for_background

    wait_for_background(60000)


def type_into(qtbot, window, name: str, text: str) -> None:
    """Select all in the line edit ``name``, type ``text`` and press Enter."""
    edit = window.findChild(QLineEdit, name)
    edit.setFocus()
    edit.selectAll()
    qtbot.keyClicks(edit, text)
    qtbot.keyClick(edit, Qt.Key.Key_Return)


def set_spin(qtbot, window, name: str, value) -> None:
    """Type ``value`` into the spin box ``name`` (no Enter: keyboard tracking applies it)."""
    spin = window.findChild(object, name)
    spin.setFocus()
    spin.lineEdit().selectAll()
    qtbot.keyClicks(spin.lineEdit(), str(value))


def choose(qtbot, window, name: str, data) -> None:
    """Pick the item whose data is ``data`` in the combo ``name``, with the keyboard."""
    combo = window.findChild(QComboBox, name)
    combo.setFocus()
    target = combo.findData(data)
    assert target >= 0, f"{name} has no item {data!r}"
    while combo.currentIndex() != target:
        key = Qt.Key.Key_Down if combo.currentIndex() < target else Qt.Key.Key_Up
        qtbot.keyClick(combo, key)


def reveal(window, widget) -> None:
    """Scroll the settings column until ``widget`` is on screen, as a person would before
    clicking it (a click goes to whatever is under the mouse)."""
    from PySide6.QtWidgets import QScrollArea

    scroll = window.findChild(QScrollArea, "settingsScroll")
    if scroll is not None and scroll.widget().isAncestorOf(widget):
        scroll.ensureWidgetVisible(widget)
        QApplication.processEvents()


def click_check_box(qtbot, window, check) -> None:
    """Click a check box on its box (a click counts only on the box and its text, and a wide
    check box's centre can lie beyond its text)."""
    from PySide6.QtCore import QPoint

    reveal(window, check)
    qtbot.mouseClick(check, Qt.MouseButton.LeftButton, pos=QPoint(8, check.height() // 2))


def click(qtbot, window, name: str, timeout: int = 120_000) -> None:
    """Click the button ``name`` once it is enabled (Start waits for the dataset check)."""
    button = window.findChild(QAbstractButton, name)
    assert button is not None, name
    qtbot.waitUntil(button.isEnabled, timeout=timeout)
    reveal(window, button)
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def answer(button_name: str, seen: list | None = None) -> None:
    """Click ``button_name`` in the next question the window asks that has that button (a
    modal QMessageBox); several calls answer a sequence of questions."""

    def attempt() -> None:
        box = QApplication.activeModalWidget()
        button = box.findChild(QPushButton, button_name) if isinstance(box, QMessageBox) else None
        if button is None or not button.isVisible():
            QTimer.singleShot(20, attempt)
            return
        if seen is not None:
            seen.append(box.text())
        button.click()

    QTimer.singleShot(0, attempt)


def dismiss(seen: list) -> None:
    """Record the text of the next message box (a warning) and close it with its button."""

    def attempt() -> None:
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(20, attempt)
            return
        seen.append(box.text())
        box.buttons()[0].click()

    QTimer.singleShot(0, attempt)


def fill_file_dialog(path: str) -> None:
    """Type ``path`` into the next file dialog and accept it."""

    def attempt() -> None:
        dialog = QApplication.activeModalWidget()
        if isinstance(dialog, QFileDialog):
            dialog.selectFile(path)
            dialog.accept()
        else:
            QTimer.singleShot(20, attempt)

    QTimer.singleShot(0, attempt)


@pytest.fixture(autouse=True)
def _qt_file_dialogs(monkeypatch):
    """Qt's own file dialog (a widget tests can fill in), not the desktop's native one."""
    monkeypatch.setenv("QT_QPA_PLATFORMTHEME", "")
    QApplication.setAttribute(Qt.ApplicationAttribute.AA_DontUseNativeDialogs, True)


def use_model(qtbot, window, source: str, timeout: int = 120_000) -> None:
    """Type ``source`` as the model, as a person does, and wait until it is read."""
    from studio.core.session import LoadState

    window.load_model()
    type_into(qtbot, window, "modelSourceEdit", str(source))
    qtbot.waitUntil(
        lambda: window.session.model.state in (LoadState.READY, LoadState.FAILED),
        timeout=timeout,
    )


def wait_for_shape(qtbot, window, source: str, timeout: int = 120_000):
    """Point the window at ``source`` and wait until its shape is read and estimated."""
    use_model(qtbot, window, source, timeout)
    qtbot.waitUntil(lambda: window.session.estimate is not None, timeout=timeout)


def write_dataset(path, n=24):
    """A small alpaca-style JSONL dataset."""
    with path.open("w") as f:
        for i in range(n):
            row = {
                "instruction": f"Count to {i % 5 + 1}.",
                "input": "",
                "output": " ".join(str(k) for k in range(1, i % 5 + 2)),
            }
            f.write(json.dumps(row) + "\n")
    return path


def configure_run(qtbot, window, data, out, *, max_steps, save_steps=1, eval_steps=5):
    """Fill in a short run through the widgets."""
    type_into(qtbot, window, "datasetPathEdit", str(data))
    set_spin(qtbot, window, "maxLengthSpin", 64)
    set_spin(qtbot, window, "maxStepsSpin", max_steps)
    set_spin(qtbot, window, "saveStepsSpin", save_steps)
    set_spin(qtbot, window, "evalStepsSpin", eval_steps)
    set_spin(qtbot, window, "batchSizeSpin", 2)
    choose(qtbot, window, "optimizerCombo", "adamw_torch")
    type_into(qtbot, window, "outputDirEdit", str(out))
