"""The window's menus: File (recipes, bundles, quit) and Help."""

from __future__ import annotations

from PySide6.QtGui import QAction, QKeySequence

from studio.ui.flows import about


def build_menus(window) -> None:
    """Add the menus to ``window`` (a built `MainWindow`); each action has an object name."""

    def add(menu, text, slot, shortcut=None, name=None):
        action = QAction(text, window, objectName=name or "")
        if shortcut:
            action.setShortcut(shortcut)
        action.triggered.connect(lambda _checked=False: slot())
        menu.addAction(action)
        return action

    recipes, keys = window.recipes, QKeySequence.StandardKey
    file = window.menuBar().addMenu("&File")
    add(file, "&Open recipe…", recipes.open, keys.Open, "openRecipeAction")
    add(file, "&Save recipe as…", recipes.save_as, keys.Save, "saveRecipeAction")
    file.addSeparator()
    add(file, "Open &bundle…", window.bundles.open, None, "openBundleAction")
    bundle_actions = (
        add(file, "Save b&undle…", window.bundles.save, None, "saveBundleAction"),
        add(file, "&Export bundle…", window.bundles.export, None, "exportBundleAction"),
    )

    def enable(*_args) -> None:  # a finished or opened bundle, and no job running
        ready = window.session.bundle is not None and not window.session.job.active
        for action in bundle_actions:
            action.setEnabled(ready)

    window.session.events.bundle.connect(enable)
    window.session.events.job.connect(enable)
    enable()
    file.addSeparator()
    add(file, "&Quit", window.close, QKeySequence.StandardKey.Quit, "quitAction")
    help_menu = window.menuBar().addMenu("&Help")
    add(help_menu, "&About", lambda: about(window))
