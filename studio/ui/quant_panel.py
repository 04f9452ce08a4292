"""The quantization panel: mode, NF4/FP4, compute dtype, double quant and the fp32 upcast.

Each control is bound to its recipe key (`studio.ui.binding`). The compute dtype list also
follows the session's device: a dtype the device cannot run is shown disabled with its reason
(`studio.core.quant.compute_dtype_choices`), and ``auto`` shows what it resolves to.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QStandardItemModel
from PySide6.QtWidgets import QFormLayout, QGroupBox, QLabel

from studio.core.recipe import field_spec
from studio.ui.binding import connect_while_alive, field_editor


class QuantPanel(QGroupBox):
    """``quantModeCombo``, ``quantTypeCombo``, ``computeDtypeCombo``, ``doubleQuantCheck``,
    ``fp32UpcastCheck`` and ``computeDtypeNote``."""

    def __init__(self, session, *, on_error=None, parent=None) -> None:
        super().__init__("Quantization", parent)
        self.session = session

        def editor(key):
            return field_editor(session, f"quantization.{key}", on_error=on_error)

        self.mode = editor("mode")
        self.qtype = editor("quant_type")
        self.dtype = editor("compute_dtype")
        self.double = editor("double_quant")
        self.upcast = editor("fp32_upcast")
        self.dtype_note = QLabel(objectName="computeDtypeNote")
        self.dtype_note.setWordWrap(True)
        self.dtype_note.hide()

        form = QFormLayout(self)
        form.addRow("Mode", self.mode)
        form.addRow("4-bit type", self.qtype)
        form.addRow("Compute dtype", self.dtype)
        form.addRow(self.dtype_note)
        form.addRow(self.double)
        form.addRow(self.upcast)

        connect_while_alive(self, session.events.device, self._show_device)
        connect_while_alive(self, session.events.recipe, self._fall_back)
        self._show_device()

    def _show_device(self, *_args) -> None:
        """Enable the dtypes the device supports; show what auto means; fall back to auto
        (with a note) when the recipe asks for a dtype the device cannot run."""
        from studio.core.quant import compute_dtype_choices, resolve_compute_dtype

        device = self.session.device
        if device is None:
            return
        spec = field_spec("quantization.compute_dtype")
        helps = spec.choice_help or {}
        choices = compute_dtype_choices(device)
        model = self.dtype.model()
        assert isinstance(model, QStandardItemModel)
        note = ""
        for row in range(self.dtype.count()):
            key = self.dtype.itemData(row)
            item = model.item(row)
            if key == "auto":
                try:
                    item.setText(f"auto ({resolve_compute_dtype('auto', device)})")
                except ValueError as exc:
                    item.setText("auto")
                    note = str(exc)
                continue
            reason = choices.get(key)
            item.setEnabled(reason is None)
            item.setData(
                helps.get(key, "") if reason is None else f"Disabled: {reason}",
                Qt.ItemDataRole.ToolTipRole,
            )
        self._show_note(note)
        self._fall_back()

    def _fall_back(self, *_args) -> None:
        """A dtype the device cannot run becomes auto, with a note saying so."""
        from studio.core.quant import compute_dtype_choices

        device = self.session.device
        current = self.session.recipe.quantization.compute_dtype
        reason = compute_dtype_choices(device).get(current) if device is not None else None
        if reason is not None:
            self._show_note(f"{current} is not available on {device.name}: {reason}. Using auto.")
            self.session.edit("quantization.compute_dtype", "auto")

    def _show_note(self, note: str) -> None:
        self.dtype_note.setText(note)
        self.dtype_note.setVisible(bool(note))
