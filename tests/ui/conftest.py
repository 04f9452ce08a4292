"""UI test fixtures: settings in a temporary folder, windows that are always shut down."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path, monkeypatch):
    """QSettings go to a temporary folder, never the user's own settings."""
    folder = tmp_path / "settings"
    folder.mkdir()
    monkeypatch.setenv("QLORA_STUDIO_SETTINGS_DIR", str(folder))
    return folder


@pytest.fixture
def make_window(qtbot):
    """Build main windows (not shown, model not read) and shut each down after the test."""
    windows = []

    def make(**kwargs):
        from studio.app import build_main_window

        kwargs.setdefault("restore", False)
        kwargs.setdefault("autoload", False)
        window = build_main_window(**kwargs)
        qtbot.addWidget(window)
        windows.append(window)
        return window

    yield make
    for window in windows:
        window.controller.shutdown()
        window.chat.shutdown()
    from studio.ui.background import wait_for_background

    wait_for_background(60000)


def wait_for_shape(qtbot, window, source: str, timeout: int = 120_000):
    """Point the window at ``source`` and wait until its shape is read and estimated."""
    window.model_panel.set_source(source)
    qtbot.waitUntil(
        lambda: window.estimate is not None and window.shape is not None, timeout=timeout
    )
