"""The quantization panel: mode, NF4/FP4, compute dtype, double quant and the fp32 upcast.

The compute dtype list follows the device: a dtype the device cannot run is shown disabled
with its reason (from `studio.core.quant.compute_dtype_choices`), and ``auto`` shows what
it resolves to.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QStandardItemModel
from PySide6.QtWidgets import QCheckBox, QComboBox, QFormLayout, QGroupBox, QLabel

from studio.core.recipe import QuantizationSection

MODES = (
    (
        "4bit",
        "4-bit",
        "Store the frozen base weights in 4 bits (QLoRA): about 4.5 bits per "
        "weight (4.13 with double quantization). Smallest memory; a little slower per step.",
    ),
    (
        "8bit",
        "8-bit",
        "LLM.int8(): 1 byte per weight plus outlier handling. Twice the weight "
        "memory of 4-bit; closer to the original quality.",
    ),
    (
        "none",
        "none (16/32-bit)",
        "No quantization: the base weights stay in the compute dtype "
        "(2 bytes per weight in bf16/fp16, 4 in fp32). Plain LoRA; the most memory.",
    ),
)
TYPES = (
    (
        "nf4",
        "NF4",
        "NormalFloat4: 16 levels placed for normally distributed weights. Usually "
        "the better choice for pretrained models; same memory as FP4.",
    ),
    ("fp4", "FP4", "A 4-bit float format. Same memory as NF4; usually slightly worse quality."),
)
DTYPES = {
    "auto": "Pick the best the device supports: bfloat16 where available, else float16 "
    "(float32 on the CPU where needed).",
    "bfloat16": "The dtype matmuls run in and non-quantized weights are held in: float32 range, "
    "2 bytes. Needs compute capability 8.0+ (Ampere) or the CPU.",
    "float16": "2 bytes, narrower range than bfloat16 (loss scaling needed); runs on every GPU.",
    "float32": "4 bytes: twice the memory of non-quantized weights and activations; slow on GPUs.",
}


class QuantPanel(QGroupBox):
    """Edits a `QuantizationSection`; emits ``changed`` on every edit."""

    changed = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__("Quantization", parent)
        self.mode = QComboBox(objectName="quantModeCombo")
        for key, text, tip in MODES:
            self.mode.addItem(text, key)
            self.mode.setItemData(self.mode.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.mode.setToolTip("How the frozen base model is held in memory.")
        self.qtype = QComboBox(objectName="quantTypeCombo")
        for key, text, tip in TYPES:
            self.qtype.addItem(text, key)
            self.qtype.setItemData(self.qtype.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.qtype.setToolTip("The 4-bit data type. NF4 and FP4 take exactly the same memory.")
        self.dtype = QComboBox(objectName="computeDtypeCombo")
        for key in DTYPES:
            self.dtype.addItem(key, key)
        self.double = QCheckBox("Double quantization", objectName="doubleQuantCheck")
        self.double.setToolTip(
            "Quantize the 4-bit blocks' fp32 scales to 8 bits too: saves about 0.37 bits per "
            "weight (~3 GB on a 65B model) for a negligible quality cost."
        )
        self.upcast = QCheckBox(
            "Upcast non-quantized weights to fp32", objectName="fp32UpcastCheck"
        )
        self.upcast.setToolTip(
            "PEFT's k-bit preparation: embeddings, norms and lm_head in float32. More stable "
            "training; costs 2x those weights and makes activations float32 (much more memory)."
        )
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

        self._device = None
        self.set_section(QuantizationSection())
        for combo in (self.mode, self.qtype, self.dtype):
            combo.currentIndexChanged.connect(self._edited)
        for check in (self.double, self.upcast):
            check.toggled.connect(self._edited)

    def section(self) -> QuantizationSection:
        return QuantizationSection(
            mode=self.mode.currentData(),
            quant_type=self.qtype.currentData(),
            compute_dtype=self.dtype.currentData(),
            double_quant=self.double.isChecked(),
            fp32_upcast=self.upcast.isChecked(),
        )

    def set_section(self, section: QuantizationSection) -> None:
        blockers = [w.blockSignals(True) for w in self._widgets()]
        try:
            self.mode.setCurrentIndex(max(0, self.mode.findData(section.mode)))
            self.qtype.setCurrentIndex(max(0, self.qtype.findData(section.quant_type)))
            self.dtype.setCurrentIndex(max(0, self.dtype.findData(section.compute_dtype)))
            self.double.setChecked(section.double_quant)
            self.upcast.setChecked(section.fp32_upcast)
        finally:
            for w, was in zip(self._widgets(), blockers, strict=True):
                w.blockSignals(was)
        self._refresh_enabled()
        if self._device is not None:
            self.set_device(self._device, emit=False)

    def _widgets(self):
        return (self.mode, self.qtype, self.dtype, self.double, self.upcast)

    def set_device(self, device, *, emit: bool = True) -> None:
        """Enable the dtypes ``device`` (a `DeviceTarget`) supports; show what auto means."""
        from studio.core.quant import compute_dtype_choices, resolve_compute_dtype

        self._device = device
        choices = compute_dtype_choices(device)
        model = self.dtype.model()
        assert isinstance(model, QStandardItemModel)
        note = ""
        for row in range(self.dtype.count()):
            key = self.dtype.itemData(row)
            item = model.item(row)
            if key == "auto":
                try:
                    resolved = resolve_compute_dtype("auto", device)
                    item.setText(f"auto ({resolved})")
                except ValueError as exc:
                    item.setText("auto")
                    note = str(exc)
                item.setToolTip(DTYPES["auto"])
                continue
            reason = choices.get(key)
            item.setEnabled(reason is None)
            item.setToolTip(DTYPES[key] if reason is None else f"Disabled: {reason}")
        current = self.dtype.currentData()
        if choices.get(current) is not None:
            note = f"{current} is not available on {device.name}: {choices[current]}. Using auto."
            self.dtype.blockSignals(True)
            self.dtype.setCurrentIndex(self.dtype.findData("auto"))
            self.dtype.blockSignals(False)
        self.dtype_note.setText(note)
        self.dtype_note.setVisible(bool(note))
        self.dtype.setToolTip(
            DTYPES.get(self.dtype.currentData(), "") + "\n\nDisabled items show why when hovered."
        )
        if emit:
            self.changed.emit()

    def _refresh_enabled(self) -> None:
        four_bit = self.mode.currentData() == "4bit"
        self.qtype.setEnabled(four_bit)
        self.double.setEnabled(four_bit)

    def _edited(self, *_args) -> None:
        self._refresh_enabled()
        self.dtype.setToolTip(DTYPES.get(self.dtype.currentData(), ""))
        self.changed.emit()
