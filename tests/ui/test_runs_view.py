"""The Runs tab (studio.ui.runs_view) driven through its widgets: real short runs listed,
sorted and filtered; two or more selected with the mouse and compared; open, chat, use the
recipe, export, resume a stopped run, delete to the trash; a moved run shows as missing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import LONG, answer, choose, click, type_into
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QContextMenuEvent
from PySide6.QtWidgets import QApplication, QLineEdit, QMenu, QWidget
from runs_library import short_recipe, train

from studio.core.events import Finished, Stopped

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_models):
    """Two finished runs and one stopped (resumable) one, recorded in their own runs root."""
    folder = tmp_path_factory.mktemp("library")
    root = folder / "root"
    model = tiny_models["llama"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QLORA_STUDIO_RUNS_ROOT", str(root))
        assert isinstance(train(short_recipe(folder, model, "rank8"))[-1], Finished)
        assert isinstance(train(short_recipe(folder, model, "fp4-short"))[-1], Finished)
        stopped = short_recipe(folder, model, "rank16", training={"max_steps": 8})
        assert isinstance(train(stopped, stop_at_checkpoint=True)[-1], Stopped)
    return folder, root


@pytest.fixture
def runs_window(make_window, qtbot, library, monkeypatch, tmp_path):
    folder, root = library
    monkeypatch.setenv("QLORA_STUDIO_RUNS_ROOT", str(root))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # the trash of this test
    window = make_window()
    show_runs_tab(qtbot, window)
    view = window.runs_view
    qtbot.waitUntil(lambda: view.proxy.rowCount() == 3, timeout=20_000)
    return window, view, folder


def show_runs_tab(qtbot, window) -> None:
    bar = window.tabs.tabBar()
    index = window.tabs.indexOf(window.runs_view)
    qtbot.mouseClick(bar, Qt.MouseButton.LeftButton, pos=bar.tabRect(index).center())
    assert window.tabs.currentWidget() is window.runs_view


def _row_of(view, name: str) -> int:
    for row in range(view.proxy.rowCount()):
        if view.proxy.index(row, 0).data() == name:
            return row
    raise AssertionError(f"{name} is not in the table")


def click_row(qtbot, view, name: str, modifier=Qt.KeyboardModifier.NoModifier, button=None):
    index = view.proxy.index(_row_of(view, name), 0)
    rect = view.table.visualRect(index)
    qtbot.mouseClick(
        view.table.viewport(), button or Qt.MouseButton.LeftButton, modifier, rect.center()
    )


def right_click_row(qtbot, view, name: str) -> None:
    """A right click as the window system delivers it: the press, then the context menu
    event (QTest's synthetic clicks do not make one)."""
    click_row(qtbot, view, name, button=Qt.MouseButton.RightButton)
    viewport = view.table.viewport()
    pos = view.table.visualRect(view.proxy.index(_row_of(view, name), 0)).center()
    event = QContextMenuEvent(QContextMenuEvent.Reason.Mouse, pos, viewport.mapToGlobal(pos))
    QApplication.sendEvent(viewport, event)


def cell(view, name: str, column: str) -> str:
    from studio.ui.runs_view import COLUMNS

    return view.proxy.index(_row_of(view, name), COLUMNS.index(column)).data()


def test_runs_listed_compared_and_used(qtbot, runs_window):
    window, view, folder = runs_window
    assert cell(view, "rank8", "Status") == "finished"
    assert cell(view, "rank16", "Status") == "stopped, resumable"
    assert cell(view, "fp4-short", "Quantization") == "FP4 +DQ"
    assert cell(view, "rank8", "Rank") == "8" and cell(view, "rank8", "Steps") == "3/3"
    for column in ("Train loss", "Eval loss", "Estimate", "Peak", "Duration"):
        assert cell(view, "rank8", column) != "—", column

    # Sorting by a column header (rank: 8 first, then 16, 16).
    from studio.ui.runs_view import COLUMNS

    header = view.table.horizontalHeader()
    rank_x = header.sectionViewportPosition(COLUMNS.index("Rank")) + 5
    qtbot.mouseClick(header.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(rank_x, 5))
    ranks = [view.proxy.index(r, COLUMNS.index("Rank")).data() for r in range(3)]
    assert ranks in (["8", "16", "16"], ["16", "16", "8"])

    # Filter by typing.
    type_into(qtbot, window, "runsFilterEdit", "fp4")
    qtbot.waitUntil(lambda: view.proxy.rowCount() == 1)
    edit = window.findChild(QLineEdit, "runsFilterEdit")
    edit.selectAll()
    qtbot.keyClick(edit, Qt.Key.Key_Backspace)
    qtbot.waitUntil(lambda: view.proxy.rowCount() == 3)

    # One run selected: no comparison; three with Ctrl+click: overlaid, recipe diff.
    click_row(qtbot, view, "rank8")
    assert not view.compare.isVisible()
    assert not window.findChild(QWidget, "runsResumeButton").isEnabled()
    click_row(qtbot, view, "fp4-short", Qt.KeyboardModifier.ControlModifier)
    click_row(qtbot, view, "rank16", Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: view.compare.isVisible())
    compare = view.compare
    assert set(compare.differing_keys()) == {
        "quantization.quant_type",
        "lora.r",
        "dataset.max_length",
        "training.max_steps",
    }
    names = {item.name() for item in compare.loss_plot.listDataItems()}
    assert {"rank8", "rank8 eval", "fp4-short", "rank16"} <= names
    assert {"rank8", "fp4-short", "rank16"} == set(compare.drawn)
    assert all("memory" in d and "estimate" in d for d in compare.drawn.values())
    by_step = compare.drawn["rank8"]["loss"][0]
    choose(qtbot, window, "compareXCombo", "tokens")
    qtbot.waitUntil(lambda: compare.drawn["rank8"]["loss"][0] != by_step)
    tokens = compare.drawn["rank8"]["loss"][0]
    assert tokens == sorted(tokens) and tokens[0] > 0

    # Use the recipe of one run.
    click_row(qtbot, view, "fp4-short")
    click(qtbot, window, "runsRecipeButton")
    assert window.session.recipe.quantization.quant_type == "fp4"
    assert window.session.recipe.dataset.max_length == 48

    # The context menu: Use recipe on another row.
    right_click_row(qtbot, view, "rank8")
    qtbot.waitUntil(lambda: isinstance(QApplication.activePopupWidget(), QMenu))
    menu = QApplication.activePopupWidget()
    action = view.actions["recipe"]
    qtbot.mouseClick(menu, Qt.MouseButton.LeftButton, pos=menu.actionGeometry(action).center())
    qtbot.waitUntil(lambda: window.session.recipe.lora.r == 8)

    # Open: the bundle is the session's, its curves in the Training tab.
    click(qtbot, window, "runsOpenButton")
    qtbot.waitUntil(lambda: window.session.bundle == str(folder / "rank8"))
    assert window.tabs.currentIndex() == 0
    # Chat: the Chat tab with that bundle.
    show_runs_tab(qtbot, window)
    click_row(qtbot, view, "fp4-short")
    click(qtbot, window, "runsChatButton")
    qtbot.waitUntil(lambda: window.tabs.currentWidget() is window.chat)
    assert window.session.bundle == str(folder / "fp4-short")

    # Export opens the export dialog on the bundle (disabled with the reason when absent).
    show_runs_tab(qtbot, window)
    click_row(qtbot, view, "rank8")
    export = window.findChild(QWidget, "runsExportButton")
    from studio.ui.runs_view import _export_available

    if _export_available():
        click(qtbot, window, "runsExportButton")
        dialog = window.findChild(QWidget, "exportDialog")
        qtbot.waitUntil(lambda: dialog is not None and dialog.isVisible())
        assert str(folder / "rank8") in dialog.bundle_label.text()
        dialog.close()
    else:
        assert not export.isEnabled() and "not available" in export.toolTip()
    # A stopped run has no bundle to open.
    click_row(qtbot, view, "rank16")
    assert not window.findChild(QWidget, "runsOpenButton").isEnabled()


def test_resume_delete_and_missing(qtbot, runs_window):
    window, view, folder = runs_window
    click_row(qtbot, view, "rank16")
    seen = []
    answer("resumeButton", seen)
    click(qtbot, window, "runsResumeButton")
    qtbot.waitUntil(lambda: bool(seen), timeout=LONG)
    assert window.session.recipe.output.dir == str(folder / "rank16")
    qtbot.waitUntil(lambda: cell(view, "rank16", "Status") == "finished", timeout=LONG)
    assert cell(view, "rank16", "Steps") == "8/8"

    # Delete one run: asked first, then moved to the trash and gone from the list.
    show_runs_tab(qtbot, window)
    click_row(qtbot, view, "fp4-short")
    answer("cancelButton")
    click(qtbot, window, "runsDeleteButton")
    assert (folder / "fp4-short").is_dir() and view.proxy.rowCount() == 3
    answer("deleteButton")
    click(qtbot, window, "runsDeleteButton")
    qtbot.waitUntil(lambda: view.proxy.rowCount() == 2)
    assert not (folder / "fp4-short").exists()
    trashed = Path(os.environ["XDG_DATA_HOME"], "Trash", "files")
    assert "fp4-short" in {p.name for p in trashed.iterdir()}

    # Moved away: the run is still listed, as missing.
    shutil.move(str(folder / "rank8"), str(folder / "moved-rank8"))
    click(qtbot, window, "runsRefreshButton")
    qtbot.waitUntil(lambda: cell(view, "rank8", "Status") == "missing")
    click_row(qtbot, view, "rank8")
    assert not window.findChild(QWidget, "runsOpenButton").isEnabled()
