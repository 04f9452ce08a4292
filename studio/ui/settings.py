"""Remembered settings (the last recipe, window geometry and layout) through QSettings.

Settings are stored in INI format under the organization and application names. Tests point
QSettings elsewhere with ``QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, tmp)``
or by setting ``QLORA_STUDIO_SETTINGS_DIR``, so they never touch the user's own settings.
"""

from __future__ import annotations

import os

from PySide6.QtCore import QSettings

from studio import APP_NAME

ORGANIZATION = "QLoRA Studio"


def open_settings() -> QSettings:
    """The application's settings store (INI file, per user)."""
    folder = os.environ.get("QLORA_STUDIO_SETTINGS_DIR")
    if folder:
        return QSettings(os.path.join(folder, "qlora-studio.ini"), QSettings.Format.IniFormat)
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANIZATION, APP_NAME)
