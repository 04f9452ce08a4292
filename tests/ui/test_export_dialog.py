"""The Export dialog on a real bundle: Export writes the model (the export runs in a child
process), Cancel mid-export stops that process and leaves nothing behind."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import LONG, choose, click
from PySide6.QtWidgets import QLineEdit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export_helpers import tiny_bundle  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tiny_models, tmp_path_factory) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("dialog-bundle"), tiny_models["llama"], "llama")


def open_dialog(qtbot, bundle, out: Path):
    from studio.ui.export_dialog import ExportDialog

    dialog = ExportDialog(str(bundle))
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitExposed(dialog)
    edit = dialog.findChild(QLineEdit, "exportOutputEdit")
    edit.selectAll()
    qtbot.keyClicks(edit, str(out))
    return dialog


def test_export_button_writes_a_merged_model(qtbot, bundle, tmp_path):
    out = tmp_path / "merged"
    dialog = open_dialog(qtbot, bundle, out)
    assert not dialog.findChild(object, "exportGgufTypeCombo").isEnabled()  # merged chosen
    with qtbot.waitSignal(dialog.exported, timeout=LONG) as done:
        click(qtbot, dialog, "exportButton")
        assert dialog.state == "running"
        assert not dialog.findChild(object, "exportButton").isEnabled()
    assert dialog.state == "done"
    result = done.args[0]
    assert result["path"] == str(out) and result["merge_into"] in ("original", "dequantized")
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    message = dialog.findChild(object, "exportMessageLabel").text()
    assert f"Exported to {out}" in message and "mean KL" in message
    assert dialog.findChild(object, "exportProgressBar").value() == 1000
    assert dialog.findChild(object, "exportCancelButton").text() == "Close"


def test_cancel_mid_export_stops_the_work_and_leaves_nothing(qtbot, bundle, tmp_path):
    import psutil

    out = tmp_path / "gguf"
    dialog = open_dialog(qtbot, bundle, out)
    choose(qtbot, dialog, "exportFormatCombo", "gguf")
    click(qtbot, dialog, "exportButton")
    # Wait until llama.cpp's converter runs (a grandchild process), then cancel.
    qtbot.waitUntil(
        lambda: "converting" in dialog.findChild(object, "exportMessageLabel").text(),
        timeout=LONG,
    )
    child = psutil.Process(dialog._process.processId())
    qtbot.waitUntil(lambda: bool(child.children(recursive=True)), timeout=60_000)
    processes = [child, *child.children(recursive=True)]
    click(qtbot, dialog, "exportCancelButton")
    qtbot.waitUntil(lambda: dialog.state == "cancelled", timeout=60_000)
    gone, alive = psutil.wait_procs(processes, timeout=30)
    assert not alive, alive
    assert "Cancelled" in dialog.findChild(object, "exportMessageLabel").text()
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert dialog.findChild(object, "exportButton").isEnabled()
