"""Widgets bound to the session: each shows one recipe key and sends edits back.

`field_editor(session, "training.max_steps")` makes the control for that key from the recipe
field's metadata (`studio.core.recipe.field_spec`): a spin box with its bounds and step, a combo
with its choices and their help, a check box or a line edit, with the help as tooltip. The
editor follows ``session.events.recipe`` (signals blocked while it shows a new value) and
calls `Session.edit` on every user edit; an edit the recipe refuses is undone and reported
through ``on_error``. Keys that have no effect given the others are disabled with the reason.

Spin boxes and combos here take the mouse wheel only when they have focus, so scrolling the
settings column never changes a setting (Qt's default changes whatever is under the cursor).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Qt, QTimer
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QLabel,
    QLineEdit,
    QSizePolicy,
    QSpinBox,
    QSplitter,
    QWidget,
)

from studio.core.recipe import RecipeError, field_spec

INT_MIN, INT_MAX = -(2**31), 2**31 - 1


class _WheelOnlyWithFocus:
    """Mixin: ignore wheel events unless focused, so they scroll the parent instead."""

    def wheelEvent(self, event) -> None:
        if self.hasFocus():
            super().wheelEvent(event)
        else:
            event.ignore()


class SpinBox(_WheelOnlyWithFocus, QSpinBox):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)


class DoubleSpinBox(_WheelOnlyWithFocus, QDoubleSpinBox):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)

    def textFromValue(self, value: float) -> str:
        # 0.001 rather than 0.001000: enough digits for the value, no trailing zeros.
        text = f"{value:.{self.decimals()}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text


class ComboBox(_WheelOnlyWithFocus, QComboBox):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        # Long items must not widen the settings column; the popup shows them whole.
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(10)


class EvenSplitter(QSplitter):
    """A splitter that shares its length evenly between its widgets the first time it is laid
    out (before that it has no length to share); the person may move the handle after."""

    def __init__(self, orientation, **kwargs) -> None:
        super().__init__(orientation, **kwargs)
        self._shared = False

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        horizontal = self.orientation() == Qt.Orientation.Horizontal
        length = self.width() if horizontal else self.height()
        if not self._shared and length > 0 and self.count():
            self._shared = True
            self.setSizes([length // self.count()] * self.count())


class ElidedLabel(QLabel):
    """A one-line label that elides long text (…) instead of widening its window; the whole
    text is in the tooltip."""

    def __init__(self, text: str = "", parent=None, **kwargs) -> None:
        super().__init__(parent, **kwargs)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setMinimumWidth(20)
        self._full = ""
        self.setText(text)

    def setText(self, text: str) -> None:
        self._full = text
        self.setToolTip(text if len(text) > 40 else "")
        self._elide()

    def text(self) -> str:
        """The whole text, as set (not the elided one on screen)."""
        return self._full

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        metrics = self.fontMetrics()
        shown = metrics.elidedText(self._full, Qt.TextElideMode.ElideRight, max(20, self.width()))
        super().setText(shown)


def connect_while_alive(widget: QObject, signal, callback: Callable) -> None:
    """Connect a psygnal ``signal`` to ``callback`` until ``widget`` is destroyed."""
    signal.connect(callback)

    def disconnect(*_args) -> None:
        with contextlib.suppress(ValueError, RuntimeError):
            signal.disconnect(callback)

    widget.destroyed.connect(disconnect)


def _value_of(recipe, dotted: str) -> Any:
    section, key = dotted.split(".", 1)
    return getattr(getattr(recipe, section), key)


class FieldEditor(QObject):
    """Binds one control (``widget``) to one recipe key of a session."""

    def __init__(self, session, dotted: str, *, on_error: Callable[[str], None] | None = None):
        super().__init__()
        self.spec = field_spec(dotted)
        self.session = session
        self.dotted = dotted
        self.on_error = on_error
        self.widget = self._make()
        self.setParent(self.widget)  # lives as long as its control
        self.widget.setObjectName(_object_name(dotted))
        self.widget.setToolTip(self.spec.help)
        self._show()
        connect_while_alive(self.widget, session.events.recipe, self._show)

    # -- building ---------------------------------------------------------------------
    def _make(self) -> QWidget:
        spec = self.spec
        if spec.choices:
            combo = ComboBox()
            labels = spec.choice_labels or {}
            helps = spec.choice_help or {}
            for choice in spec.choices:
                combo.addItem(labels.get(choice, choice), choice)
                if choice in helps:
                    combo.setItemData(combo.count() - 1, helps[choice], Qt.ItemDataRole.ToolTipRole)
            combo.currentIndexChanged.connect(lambda _i: self._edited(combo.currentData()))
            return combo
        if spec.type is bool:
            check = QCheckBox(spec.label)
            check.toggled.connect(self._edited)
            return check
        if spec.type is int:
            spin = SpinBox()
            # A QSpinBox holds a C int: larger bounds (the seed's) are clamped to it.
            low = max(int(_bound(spec.minimum, INT_MIN)), INT_MIN)
            spin.setRange(low, min(int(_bound(spec.maximum, INT_MAX)), INT_MAX))
            spin.setSingleStep(int(spec.step or 1))
            spin.valueChanged.connect(self._edited)
            return spin
        if spec.type is float:
            spin = DoubleSpinBox()
            spin.setDecimals(spec.decimals if spec.decimals is not None else 4)
            spin.setRange(float(_bound(spec.minimum, -1e9)), float(_bound(spec.maximum, 1e9)))
            spin.setSingleStep(float(spec.step or 0.1))
            spin.valueChanged.connect(self._edited)
            return spin
        edit = QLineEdit()
        edit.editingFinished.connect(lambda: self._edited(self._text_value(edit.text())))
        return edit

    def _text_value(self, text: str) -> Any:
        text = text.strip()
        if self.dotted == "lora.target_modules":
            if text in ("", "all-linear"):
                return "all-linear"
            return [part.strip() for part in text.split(",") if part.strip()]
        return text

    # -- model -> widget ----------------------------------------------------------------
    def _show(self, *_args) -> None:
        # Always the session's current recipe, not the event's argument: an edit made by
        # another subscriber of the same event may already have replaced it.
        value = _value_of(self.session.recipe, self.dotted)
        widget = self.widget
        blocked = widget.blockSignals(True)
        try:
            if isinstance(widget, QComboBox):
                widget.setCurrentIndex(max(0, widget.findData(value)))
            elif isinstance(widget, QCheckBox):
                widget.setChecked(bool(value))
            elif isinstance(widget, (QSpinBox, QDoubleSpinBox)):
                widget.setValue(value)
            else:
                shown = value if isinstance(value, str) else ", ".join(value)
                if widget.text() != shown:
                    widget.setText(shown)
                    widget.setCursorPosition(0)
        finally:
            widget.blockSignals(blocked)
        reason = self.session.inactive_fields().get(self.dotted)
        widget.setEnabled(reason is None)
        widget.setToolTip(self.spec.help + (f"\n\nNo effect now: {reason}." if reason else ""))

    # -- widget -> model ----------------------------------------------------------------
    def _edited(self, value) -> None:
        if value == _value_of(self.session.recipe, self.dotted):
            return
        try:
            self.session.edit(self.dotted, value)
        except RecipeError as exc:
            if self.on_error is not None:
                self.on_error(str(exc))
            # Show the recipe's value again, after the widget finished its own update.
            QTimer.singleShot(0, self._show)


def _bound(value, fallback):
    return fallback if value is None else value


def _object_name(dotted: str) -> str:
    """``training.max_steps`` -> ``trainingMaxStepsEdit`` unless a name is fixed below."""
    if dotted in OBJECT_NAMES:
        return OBJECT_NAMES[dotted]
    section, key = dotted.split(".", 1)
    words = key.split("_")
    return section + "".join(w.capitalize() for w in words) + "Edit"


# The object names tests and docs/architecture.md know the controls by.
OBJECT_NAMES = {
    "quantization.mode": "quantModeCombo",
    "quantization.quant_type": "quantTypeCombo",
    "quantization.compute_dtype": "computeDtypeCombo",
    "quantization.double_quant": "doubleQuantCheck",
    "quantization.fp32_upcast": "fp32UpcastCheck",
    "lora.r": "loraRankSpin",
    "lora.alpha": "loraAlphaSpin",
    "lora.dropout": "loraDropoutSpin",
    "lora.target_modules": "loraTargetsEdit",
    "training.max_steps": "maxStepsSpin",
    "training.epochs": "epochsSpin",
    "training.batch_size": "batchSizeSpin",
    "training.grad_accum": "gradAccumSpin",
    "training.learning_rate": "learningRateSpin",
    "training.optimizer": "optimizerCombo",
    "training.gradient_checkpointing": "gradCheckpointCheck",
    "training.save_steps": "saveStepsSpin",
    "training.eval_steps": "evalStepsSpin",
    "training.seed": "seedSpin",
    "output.dir": "outputDirEdit",
    "dataset.path": "datasetPathEdit",
    "dataset.format": "datasetFormatCombo",
    "dataset.max_length": "maxLengthSpin",
    "dataset.train_on_prompt": "trainOnPromptCheck",
    "model.source": "modelSourceEdit",
}


def field_editor(session, dotted: str, *, on_error: Callable[[str], None] | None = None):
    """The bound control for ``dotted`` (see `FieldEditor`); returns the widget."""
    return FieldEditor(session, dotted, on_error=on_error).widget
