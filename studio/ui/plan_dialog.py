"""Model ▸ What fits…: the catalog of models people fine-tune, each estimated with the current
recipe on the session's device, as a table to pick a base model from (`PlanView`). The table
is computed in the helper process (reading the catalog's shapes imports transformers);
choosing a row sets ``model.source`` to that ``catalog:<name>`` plan."""

from __future__ import annotations

from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QVBoxLayout

from studio.ui.background import run_in_helper
from studio.ui.plan_view import PlanView


class PlanDialog(QDialog):
    """``planDialog``: the table (``planView``) and a status line (``planStatusLabel``)."""

    def __init__(self, session, parent=None) -> None:
        super().__init__(parent)
        self.setObjectName("planDialog")
        self.setWindowTitle("What fits on this device")
        self.resize(900, 560)
        self.session = session
        device = session.device
        self.status = QLabel(
            f"Estimating every catalog model for {getattr(device, 'name', 'this device')} with "
            "the current settings…",
            objectName="planStatusLabel",
        )
        self.status.setWordWrap(True)
        self.view = PlanView()
        self.view.modelChosen.connect(self._chosen)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.status)
        layout.addWidget(self.view, 1)
        layout.addWidget(buttons)
        self.rows = None
        from studio.core.helper import plan_models

        self._task = run_in_helper(
            plan_models,
            device,
            session.recipe,
            on_result=self._show,
            on_error=lambda exc, details: self.status.setText(f"⚠ {exc}"),
            owner=self,
        )

    def _show(self, rows) -> None:
        self.rows = rows
        self.view.set_rows(rows)
        self.status.setText(
            "Each model with the current recipe on this device; the longest sequence and the "
            "largest batch that fit. Double-click a model (or press Enter) to plan with it: "
            "its estimate is exact without downloading it, training needs the real weights."
        )

    def _chosen(self, source: str) -> None:
        self.session.edit("model.source", source)
        self.accept()
