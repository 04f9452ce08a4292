"""Importing on a worker thread, then continuing on the GUI thread: how the window keeps each
event-loop turn of its launch short.

After the first paint, `MainWindow` imports the modules its panels need (`WINDOW_MODULES`)
and the live view imports pyqtgraph this way: an import holds the GUI thread for as long as it
runs (pyqtgraph about 0.3 s, the session model about 55 ms), while on a worker thread it only
takes the GIL in short slices and the window keeps painting. None of these modules makes a Qt
object when imported, so importing them off the GUI thread is safe; what uses them runs on
the GUI thread once they are in.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Callable, Iterable

from PySide6.QtCore import QObject, QTimer

# What `MainWindow.build` imports, with what the session and the live view import as they
# start, and pyqtgraph (the plots); a test checks that none of them brings in torch.
WINDOW_MODULES = (
    "studio.core.session",
    "studio.ui.chat_panel",
    "studio.ui.dataset_panel",
    "studio.ui.estimate_widget",
    "studio.ui.flows",
    "studio.ui.hardware_panel",
    "studio.ui.job_controller",
    "studio.ui.live",
    "studio.ui.model_panel",
    "studio.ui.plots",
    "studio.ui.quant_panel",
    "studio.ui.readers",
    "studio.ui.runs_view",
    "studio.ui.status",
    "studio.ui.training_panel",
    "studio.core.engine.runner",
    "studio.core.engine.preflight",
    "studio.core.models",
    "studio.core.monitor",
    "studio.core.scaling",
    "studio.core.gpu",
    "studio.core.quant",
    "multiprocessing.spawn",
    "pynvml",
    "pyqtgraph",
)

POLL_MS = 10


def import_then(owner: QObject, modules: Iterable[str], then: Callable[[], None]) -> None:
    """Import ``modules`` on a worker thread, then call ``then`` on the GUI thread (not at
    all if ``owner`` is deleted first). A module that fails to import is skipped: the code
    that needs it imports it again and reports the error there."""
    names = tuple(modules)

    def import_all() -> None:
        for name in names:
            with contextlib.suppress(Exception):
                importlib.import_module(name)

    loader = threading.Thread(target=import_all, name="import-for-window", daemon=True)
    loader.start()

    def when_done() -> None:
        if loader.is_alive():
            QTimer.singleShot(POLL_MS, owner, when_done)
        else:
            then()

    QTimer.singleShot(0, owner, when_done)
