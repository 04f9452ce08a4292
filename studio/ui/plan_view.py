"""What fits on this GPU, as a table to pick a model from.

`PlanView` shows the rows of `studio.core.plan.plan_table` (one per catalog model: parameters,
4-bit weights, the recipe's estimate, whether it fits, the longest max_length and the largest
batch that fit, and the advice as a tooltip). Activating a row (double click, or Enter on the
selected row) emits ``modelChosen(source)`` with its ``catalog:<name>`` source; the window
decides what to do with it (for example set it as the model and show its estimate as a plan).
Self-contained: it knows nothing of the window or the session.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

from studio.core.plan import PLAN_COLUMNS

VERDICT_COLOURS = {"fits": "#2e7d32", "tight": "#ef6c00", "does_not_fit": "#c62828"}
SOURCE_ROLE = Qt.ItemDataRole.UserRole


class PlanView(QTableWidget):
    """A read-only table of PlanRows; ``modelChosen(str)`` carries the chosen row's source."""

    modelChosen = Signal(str)

    def __init__(self, rows=(), parent=None):
        super().__init__(0, len(PLAN_COLUMNS), parent)
        self.setObjectName("planView")
        self.setHorizontalHeaderLabels(PLAN_COLUMNS)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.verticalHeader().setVisible(False)
        header = self.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for column in range(1, len(PLAN_COLUMNS)):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        self.cellDoubleClicked.connect(self._activated)
        self.set_rows(rows)

    def set_rows(self, rows) -> None:
        """Show ``rows`` (`studio.core.plan.PlanRow`), in their order."""
        self.setRowCount(0)
        self.setRowCount(len(rows))
        for index, row in enumerate(rows):
            cells = row.cells()
            tip = row.advice or "The recipe fits as it is."
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(SOURCE_ROLE, row.source)
                item.setToolTip(f"{row.display_name} ({row.hub_id}): {tip}")
                if column:
                    item.setTextAlignment(
                        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                    )
                if column == 4:
                    item.setForeground(QBrush(QColor(VERDICT_COLOURS.get(row.verdict, "#000"))))
                self.setItem(index, column, item)

    def source_at(self, row: int) -> str | None:
        item = self.item(row, 0)
        return item.data(SOURCE_ROLE) if item is not None else None

    def keyPressEvent(self, event) -> None:  # noqa: N802 - Qt's name
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self.currentRow() >= 0:
            self._activated(self.currentRow(), 0)
            event.accept()
            return
        super().keyPressEvent(event)

    def _activated(self, row: int, _column: int) -> None:
        source = self.source_at(row)
        if source is not None:
            self.modelChosen.emit(source)
