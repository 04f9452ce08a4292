"""Render the application icon's PNG sizes from resources/icons/qlora-studio.svg.

    python packaging/render_icons.py

Writes resources/icons/hicolor/<N>x<N>/apps/<APP_ID>.png for each size in `SIZES`, the
scalable copy hicolor/scalable/apps/<APP_ID>.svg (the freedesktop icon theme layout, ready
to copy into /usr/share/icons or a Flatpak), and resources/icons/qlora-studio.png (256 px,
used by the PyInstaller build). Uses Qt's SVG renderer, headless.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studio import APP_ID  # noqa: E402

ICONS = ROOT / "resources" / "icons"
SOURCE = ICONS / "qlora-studio.svg"
SIZES = (16, 24, 32, 48, 64, 128, 256)


def render(size: int, target: Path) -> None:
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    renderer = QSvgRenderer(str(SOURCE))
    if not renderer.isValid():
        raise SystemExit(f"{SOURCE}: Qt cannot read this SVG")
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
    renderer.render(painter)
    painter.end()
    target.parent.mkdir(parents=True, exist_ok=True)
    if not image.save(str(target), "PNG"):
        raise SystemExit(f"{target}: could not be written")


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtGui import QGuiApplication

    app = QGuiApplication.instance() or QGuiApplication([])  # noqa: F841 - Qt needs one
    for size in SIZES:
        render(size, ICONS / "hicolor" / f"{size}x{size}" / "apps" / f"{APP_ID}.png")
    scalable = ICONS / "hicolor" / "scalable" / "apps" / f"{APP_ID}.svg"
    scalable.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SOURCE, scalable)
    shutil.copyfile(
        ICONS / "hicolor" / "256x256" / "apps" / f"{APP_ID}.png", ICONS / "qlora-studio.png"
    )
    print(f"rendered {len(SIZES)} sizes into {ICONS / 'hicolor'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
