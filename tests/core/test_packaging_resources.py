"""The desktop integration files: one application id everywhere, a valid .desktop entry and
AppStream metainfo (checked with the freedesktop validators where installed), and an icon
set whose PNGs really have their sizes."""

from __future__ import annotations

import configparser
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from studio import APP_ID, APP_NAME

RESOURCES = Path(__file__).resolve().parents[2] / "resources"
DESKTOP = RESOURCES / f"{APP_ID}.desktop"
METAINFO = RESOURCES / f"{APP_ID}.metainfo.xml"
ICONS = RESOURCES / "icons"
SIZES = (16, 24, 32, 48, 64, 128, 256)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def _desktop_entry() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    parser.optionxform = str
    parser.read(DESKTOP, encoding="utf-8")
    return parser["Desktop Entry"]


def test_desktop_entry_uses_the_app_id_and_the_gui_script():
    entry = _desktop_entry()
    assert entry["Type"] == "Application" and entry["Name"] == APP_NAME
    assert entry["Icon"] == APP_ID
    assert entry["Exec"].split()[0] == "qlora-studio-gui"  # pyproject's gui-script
    assert entry["Terminal"] == "false"


def test_metainfo_uses_the_app_id():
    root = ET.parse(METAINFO).getroot()
    assert root.tag == "component" and root.get("type") == "desktop-application"
    assert root.findtext("id") == APP_ID
    assert root.findtext("name") == APP_NAME
    assert root.findtext("launchable") == DESKTOP.name
    assert {b.text for b in root.iter("binary")} == {"qlora-studio", "qlora-studio-gui"}


@pytest.mark.skipif(shutil.which("appstreamcli") is None, reason="appstreamcli not installed")
def test_metainfo_passes_appstreamcli():
    done = subprocess.run(
        ["appstreamcli", "validate", "--no-net", str(METAINFO)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(
    shutil.which("desktop-file-validate") is None, reason="desktop-file-validate not installed"
)
def test_desktop_file_passes_desktop_file_validate():
    done = subprocess.run(
        ["desktop-file-validate", str(DESKTOP)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "error" not in done.stdout, done.stdout + done.stderr


def test_icon_set():
    svg = ET.parse(ICONS / "qlora-studio.svg").getroot()
    assert svg.tag.endswith("svg") and svg.get("viewBox") == "0 0 256 256"
    scalable = ICONS / "hicolor" / "scalable" / "apps" / f"{APP_ID}.svg"
    assert scalable.read_bytes() == (ICONS / "qlora-studio.svg").read_bytes()
    for size in SIZES:
        png = ICONS / "hicolor" / f"{size}x{size}" / "apps" / f"{APP_ID}.png"
        assert _png_size(png) == (size, size)
    assert _png_size(ICONS / "qlora-studio.png") == (256, 256)  # the PyInstaller icon


def test_qt_reads_the_svg(qapp):
    from PySide6.QtGui import QIcon
    from PySide6.QtSvg import QSvgRenderer

    assert QSvgRenderer(str(ICONS / "qlora-studio.svg")).isValid()
    assert not QIcon(str(ICONS / "qlora-studio.svg")).pixmap(32, 32).isNull()
