"""Where QLoRA Studio keeps its cache and finds its bundled resources."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def cache_dir() -> Path:
    """The cache folder (converted models and the like); not created here.

    ``$QLORA_STUDIO_CACHE`` if set, else ``$XDG_CACHE_HOME/qlora-studio``, else
    ``~/.cache/qlora-studio``.
    """
    explicit = os.environ.get("QLORA_STUDIO_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "qlora-studio"
    return Path.home() / ".cache" / "qlora-studio"


def resources_dir() -> Path:
    """The ``resources/`` folder: beside the ``studio`` package, or inside a PyInstaller build."""
    bundle_root = getattr(sys, "_MEIPASS", None)
    if bundle_root:
        return Path(bundle_root) / "resources"
    return Path(__file__).resolve().parents[2] / "resources"
