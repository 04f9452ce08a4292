"""The Qt binding must not leak references to None (PySide6 6.12.0 on Python 3.11 drops one on
every void call, and a running window then aborts with ``none_dealloc`` within minutes)."""

from __future__ import annotations

import sys

import PySide6
from PySide6.QtWidgets import QLabel


def test_void_calls_keep_none_alive(qapp):
    label = QLabel("x")
    before = sys.getrefcount(None)
    for _ in range(2000):
        label.setText("y")
    lost = before - sys.getrefcount(None)
    assert lost < 100, (
        f"PySide6 {PySide6.__version__} loses a reference to None per call on Python "
        f"{sys.version.split()[0]}; install another PySide6 release (see pyproject.toml)"
    )
