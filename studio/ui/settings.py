"""Remembered settings (the last recipe, window geometry and layout) through QSettings.

Settings are stored in INI format under the organization and application names. Tests point
QSettings elsewhere with ``QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, tmp)``
or by setting ``QLORA_STUDIO_SETTINGS_DIR``, so they never touch the user's own settings.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QSettings

from studio import APP_NAME

ORGANIZATION = "QLoRA Studio"
# Where the window puts a run whose recipe names a relative output folder (the default's).
DEFAULT_RUNS_DIR = Path.home() / "qlora-studio" / "runs"


def open_settings() -> QSettings:
    """The application's settings store (INI file, per user)."""
    folder = os.environ.get("QLORA_STUDIO_SETTINGS_DIR")
    if folder:
        return QSettings(os.path.join(folder, "qlora-studio.ini"), QSettings.Format.IniFormat)
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANIZATION, APP_NAME)


def restored_recipe():
    """The recipe remembered from the last session, or None. Its device is not restored: it
    names the hardware of that moment, and ``auto`` takes the best device present now (a GPU
    that appeared since must not lose to a remembered ``cpu``)."""
    from dataclasses import replace

    from studio.core.recipe import Recipe, RecipeError

    text = open_settings().value("recipe")
    if not text:
        return None
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        recipe = Recipe.from_dict(tomllib.loads(str(text)))
    except (ValueError, RecipeError):
        return None
    return replace(recipe, training=replace(recipe.training, device="auto"))


def remember_recipe(recipe) -> None:
    """Keep ``recipe`` for the next session."""
    from studio.core.recipe import recipe_to_toml

    settings = open_settings()
    settings.setValue("recipe", recipe_to_toml(recipe))
    settings.sync()


def default_recipe():
    """The recipe a new window starts with: the shipped one (`Recipe()`'s defaults)."""
    from studio.core.recipe import Recipe

    return Recipe()


def with_runs_dir(recipe):
    """``recipe`` with a relative output folder placed under `DEFAULT_RUNS_DIR` (a desktop
    launcher's working directory is no place for runs)."""
    from dataclasses import replace

    out = Path(recipe.output.dir).expanduser()
    if out.is_absolute():
        return recipe
    return replace(recipe, output=replace(recipe.output, dir=str(DEFAULT_RUNS_DIR / out.name)))
