"""The plan table: real PlanRows for a simulated GPU, chosen with the mouse and the keyboard."""

from __future__ import annotations

from PySide6.QtCore import Qt

from studio.core.gpu import parse_fake_gpus
from studio.core.plan import PLAN_COLUMNS as COLUMNS
from studio.core.plan import plan_table
from studio.core.quant import DeviceTarget
from studio.ui.plan_view import PlanView

RTX_4090 = (
    '[{"name": "NVIDIA GeForce RTX 4090", "total_mib": 24564, "free_mib": 24000, '
    '"compute_capability": [8, 9]}]'
)
NAMES = {"smollm2-135m", "qwen2.5-1.5b", "llama-3.1-70b"}


def _rows():
    device = DeviceTarget("cuda", parse_fake_gpus(RTX_4090)[0])
    return plan_table(device, names=NAMES)


def _cell_centre(view: PlanView, row: int, column: int = 0):
    return view.visualRect(view.model().index(row, column)).center()


def test_double_clicking_a_row_chooses_its_model(qtbot):
    rows = _rows()
    view = PlanView(rows)
    qtbot.addWidget(view)
    view.resize(900, 300)
    view.show()
    qtbot.waitExposed(view)
    assert view.rowCount() == len(rows) and view.columnCount() == len(COLUMNS)
    seventy = next(i for i, r in enumerate(rows) if r.name == "llama-3.1-70b")
    assert view.item(seventy, 0).text() == "Llama-3.1-70B"
    assert view.item(seventy, 4).text() == "no"
    assert "Does not fit" in view.item(seventy, 0).toolTip()
    centre = _cell_centre(view, seventy)
    with qtbot.waitSignal(view.modelChosen, timeout=5000) as chosen:
        # a person's double click: the first click's press/release, then the double click
        qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=centre)
        qtbot.mouseDClick(view.viewport(), Qt.MouseButton.LeftButton, pos=centre)
    assert chosen.args == ["catalog:llama-3.1-70b"]


def test_enter_on_the_selected_row_chooses_it(qtbot):
    rows = _rows()
    view = PlanView(rows)
    qtbot.addWidget(view)
    view.show()
    qtbot.waitExposed(view)
    small = next(i for i, r in enumerate(rows) if r.name == "smollm2-135m")
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=_cell_centre(view, small, 2))
    assert view.currentRow() == small
    assert view.item(small, 4).text() == "fits"
    with qtbot.waitSignal(view.modelChosen, timeout=5000) as chosen:
        qtbot.keyClick(view, Qt.Key.Key_Return)
    assert chosen.args == ["catalog:smollm2-135m"]


def test_new_rows_replace_the_old_ones(qtbot):
    view = PlanView()
    qtbot.addWidget(view)
    assert view.rowCount() == 0
    rows = _rows()
    view.set_rows(rows[:1])
    view.set_rows(rows)
    assert view.rowCount() == len(rows)
    assert [view.source_at(i) for i in range(len(rows))] == [r.source for r in rows]
