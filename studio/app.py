"""Builds the QApplication and the main window.

`build_main_window` returns the window without entering the event loop (tests and scripts
drive it); `run_app` is what ``qlora-studio`` runs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from studio import APP_ID, APP_NAME


def ensure_application(argv: Sequence[str] | None = None):
    """The QApplication, created with the application's names when there is none yet."""
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None:
        app = QApplication(list(argv) if argv is not None else sys.argv[:1])
    app.setApplicationName(APP_NAME)
    app.setApplicationDisplayName(APP_NAME)
    app.setOrganizationName("QLoRA Studio")
    app.setOrganizationDomain("qlora-studio.github.io")
    app.setDesktopFileName(APP_ID)
    return app


def build_main_window(
    recipe_path: str | None = None,
    *,
    restore: bool = True,
    autoload: bool = True,
    defer_build: bool = False,
):
    """The main window (not shown), with ``recipe_path`` loaded if given.

    With ``defer_build`` (what `run_app` uses) the window paints its frame first and builds
    its panels and plots right after that first paint, so it appears sooner; otherwise
    everything exists at once.

    Creates the QApplication if there is none. Raises `RecipeError` for a bad recipe file.
    """
    ensure_application()
    from studio.core.recipe import load_recipe
    from studio.ui.main_window import MainWindow

    recipe = load_recipe(recipe_path) if recipe_path else None
    return MainWindow(recipe, restore=restore, autoload=autoload, defer_build=defer_build)


def run_app(recipe_path: str | None = None, argv: Sequence[str] | None = None) -> int:
    """Open the window and run the event loop until it closes; returns the exit code."""
    app = ensure_application(argv)
    _set_icon(app)
    window = build_main_window(recipe_path, defer_build=True)
    window.show()
    code = app.exec()
    if window.session is not None:
        window.controller.shutdown()
    from studio.ui.background import shutdown_helper, wait_for_background

    shutdown_helper()  # a read still running in it is abandoned, and its waiting thread ends
    wait_for_background(5000)
    return code


def _set_icon(app) -> None:
    from PySide6.QtGui import QIcon

    from studio.core.paths import resources_dir

    for name in ("icons/qlora-studio.svg", "icons/qlora-studio.png", "qlora-studio.svg"):
        path = resources_dir() / name
        if path.exists():
            app.setWindowIcon(QIcon(str(path)))
            return
