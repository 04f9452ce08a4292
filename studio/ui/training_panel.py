"""LoRA and training settings (everything of the recipe's [lora], [training] and [output]
that a person tunes; other keys are kept as loaded)."""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from studio.core.recipe import OPTIMIZERS, LoraSection, OutputSection, TrainingSection

OPTIMIZER_TIPS = {
    "adamw_torch": "PyTorch AdamW: 8 bytes of state per trainable parameter.",
    "adamw_8bit": "bitsandbytes 8-bit AdamW: about 2 bytes of state per trainable parameter.",
    "paged_adamw_8bit": "8-bit AdamW with states in paged (managed) memory: ~2 bytes per "
    "parameter, moved to the CPU under memory pressure instead of running out.",
    "paged_adamw_32bit": "32-bit AdamW with paged states: 8 bytes per parameter, pageable.",
}


def _spin(name: str, lo: int, hi: int, tip: str, step: int = 1) -> QSpinBox:
    spin = QSpinBox(objectName=name)
    spin.setRange(lo, hi)
    spin.setSingleStep(step)
    spin.setToolTip(tip)
    spin.setKeyboardTracking(False)
    return spin


class TrainingPanel(QWidget):
    """Two group boxes, LoRA and Training; emits ``changed`` on every edit."""

    changed = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.rank = _spin(
            "loraRankSpin",
            1,
            1024,
            "LoRA rank r: adapter size and capacity. "
            "Trainable parameters (and their optimizer state) grow linearly with r.",
        )
        self.alpha = _spin(
            "loraAlphaSpin",
            1,
            4096,
            "LoRA alpha: the update is scaled by "
            "alpha / r. Twice the rank is a common choice. No memory cost.",
        )
        self.dropout = QDoubleSpinBox(objectName="loraDropoutSpin")
        self.dropout.setRange(0.0, 0.9)
        self.dropout.setSingleStep(0.05)
        self.dropout.setDecimals(2)
        self.dropout.setToolTip("Dropout on the adapter input; regularizes small datasets.")
        self.targets = QLineEdit(objectName="loraTargetsEdit")
        self.targets.setToolTip(
            "'all-linear' (every linear but lm_head), or module names "
            "separated by commas, e.g. q_proj, v_proj."
        )

        self.max_steps = _spin(
            "maxStepsSpin",
            -1,
            10_000_000,
            "Optimizer steps to run; -1 trains for the number of epochs instead.",
        )
        self.epochs = QDoubleSpinBox(objectName="epochsSpin")
        self.epochs.setRange(0.01, 1000)
        self.epochs.setToolTip("Passes over the training data (used when max steps is -1).")
        self.batch = _spin(
            "batchSizeSpin",
            1,
            4096,
            "Examples per step on the device. Activation memory grows linearly with it.",
        )
        self.accum = _spin(
            "gradAccumSpin",
            1,
            4096,
            "Gradient accumulation: the effective batch "
            "is batch size x this, with no extra memory.",
        )
        self.lr = QDoubleSpinBox(objectName="learningRateSpin")
        self.lr.setDecimals(6)
        self.lr.setRange(0.000001, 0.5)
        self.lr.setSingleStep(0.00005)
        self.lr.setToolTip("Peak learning rate; 1e-4 to 3e-4 is usual for QLoRA.")
        self.checkpointing = QCheckBox("Gradient checkpointing", objectName="gradCheckpointCheck")
        self.checkpointing.setToolTip(
            "Keep one tensor per layer and recompute the rest in backward: activation memory "
            "drops to a fraction, steps take ~30% longer."
        )
        self.optimizer = QComboBox(objectName="optimizerCombo")
        for name in OPTIMIZERS:
            self.optimizer.addItem(name, name)
            self.optimizer.setItemData(self.optimizer.count() - 1, OPTIMIZER_TIPS.get(name, ""), 3)
        self.optimizer.setToolTip("The optimizer; its state is a large share of training memory.")
        self.save_steps = _spin(
            "saveStepsSpin", 1, 1_000_000, "Write a resumable checkpoint every this many steps."
        )
        self.eval_steps = _spin(
            "evalStepsSpin", 1, 1_000_000, "Evaluate on the held-out split every this many steps."
        )
        self.seed = _spin("seedSpin", 0, 2**31 - 1, "Random seed: same seed, same run.")
        self.output = QLineEdit(objectName="outputDirEdit")
        self.output.setToolTip(
            "Where the adapter bundle is written; checkpoints go beside it in <folder>.checkpoints."
        )
        browse = QPushButton("…", objectName="outputDirButton")
        browse.setMaximumWidth(32)
        browse.clicked.connect(self._browse_output)

        lora_box = QGroupBox("LoRA")
        lora = QFormLayout(lora_box)
        lora.addRow("Rank r", self.rank)
        lora.addRow("Alpha", self.alpha)
        lora.addRow("Dropout", self.dropout)
        lora.addRow("Targets", self.targets)
        train_box = QGroupBox("Training")
        train = QFormLayout(train_box)
        train.addRow("Max steps", self.max_steps)
        train.addRow("Epochs", self.epochs)
        train.addRow("Batch size", self.batch)
        train.addRow("Grad accumulation", self.accum)
        train.addRow("Learning rate", self.lr)
        train.addRow("Optimizer", self.optimizer)
        train.addRow(self.checkpointing)
        train.addRow("Save every", self.save_steps)
        train.addRow("Evaluate every", self.eval_steps)
        train.addRow("Seed", self.seed)
        out_row = QHBoxLayout()
        out_row.addWidget(self.output, 1)
        out_row.addWidget(browse)
        train.addRow("Output folder", out_row)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(lora_box)
        layout.addWidget(train_box)

        self._lora = LoraSection()
        self._training = TrainingSection()
        self._output = OutputSection()
        self.set_sections(self._lora, self._training, self._output)
        for spin in (
            self.rank,
            self.alpha,
            self.max_steps,
            self.batch,
            self.accum,
            self.save_steps,
            self.eval_steps,
            self.seed,
        ):
            spin.valueChanged.connect(self._edited)
        for spin in (self.dropout, self.epochs, self.lr):
            spin.valueChanged.connect(self._edited)
        self.targets.editingFinished.connect(self._edited)
        self.output.editingFinished.connect(self._edited)
        self.checkpointing.toggled.connect(self._edited)
        self.optimizer.currentIndexChanged.connect(self._edited)

    def _browse_output(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Bundle folder", self.output.text())
        if path:
            self.output.setText(path)
            self._edited()

    def _edited(self, *_args) -> None:
        self.changed.emit()

    def lora_section(self) -> LoraSection:
        text = self.targets.text().strip() or "all-linear"
        targets: str | tuple[str, ...] = (
            text if text == "all-linear" else tuple(t.strip() for t in text.split(",") if t.strip())
        )
        return replace(
            self._lora,
            r=self.rank.value(),
            alpha=self.alpha.value(),
            dropout=round(self.dropout.value(), 4),
            target_modules=targets,
        )

    def training_section(self, device: str) -> TrainingSection:
        return replace(
            self._training,
            max_steps=self.max_steps.value() or -1,
            epochs=self.epochs.value(),
            batch_size=self.batch.value(),
            grad_accum=self.accum.value(),
            learning_rate=self.lr.value(),
            gradient_checkpointing=self.checkpointing.isChecked(),
            optimizer=self.optimizer.currentData(),
            save_steps=self.save_steps.value(),
            eval_steps=self.eval_steps.value(),
            seed=self.seed.value(),
            device=device,
        )

    def output_section(self) -> OutputSection:
        return replace(self._output, dir=self.output.text().strip() or self._output.dir)

    def set_sections(
        self, lora: LoraSection, training: TrainingSection, output: OutputSection
    ) -> None:
        self._lora, self._training, self._output = lora, training, output
        widgets = (
            self.rank,
            self.alpha,
            self.dropout,
            self.targets,
            self.max_steps,
            self.epochs,
            self.batch,
            self.accum,
            self.lr,
            self.checkpointing,
            self.optimizer,
            self.save_steps,
            self.eval_steps,
            self.seed,
            self.output,
        )
        was = [w.blockSignals(True) for w in widgets]
        try:
            self.rank.setValue(lora.r)
            self.alpha.setValue(lora.alpha)
            self.dropout.setValue(lora.dropout)
            targets = lora.target_modules
            self.targets.setText(targets if isinstance(targets, str) else ", ".join(targets))
            self.max_steps.setValue(training.max_steps)
            self.epochs.setValue(training.epochs)
            self.batch.setValue(training.batch_size)
            self.accum.setValue(training.grad_accum)
            self.lr.setValue(training.learning_rate)
            self.checkpointing.setChecked(training.gradient_checkpointing)
            self.optimizer.setCurrentIndex(max(0, self.optimizer.findData(training.optimizer)))
            self.save_steps.setValue(training.save_steps)
            self.eval_steps.setValue(training.eval_steps)
            self.seed.setValue(training.seed)
            self.output.setText(output.dir)
        finally:
            for w, b in zip(widgets, was, strict=True):
                w.blockSignals(b)
