"""LoRA, training and scale settings: every key of the recipe's [lora], [training], [output]
and [distributed] (one machine) that a person tunes, each bound to the session through its
field metadata (`studio.ui.binding`)."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from studio.core.recipe import field_spec
from studio.ui.binding import field_editor

LORA_KEYS = ("lora.r", "lora.alpha", "lora.dropout", "lora.target_modules")
DISTRIBUTED_KEYS = (
    "distributed.num_processes",
    "distributed.strategy",
    "distributed.gpus",
    "distributed.cpu_offload",
)
TRAINING_KEYS = (
    "training.max_steps",
    "training.epochs",
    "training.batch_size",
    "training.grad_accum",
    "training.learning_rate",
    "training.optimizer",
    "training.gradient_checkpointing",
    "training.save_steps",
    "training.eval_steps",
    "training.seed",
)


def _form(title: str, session, keys, on_error) -> tuple[QGroupBox, QFormLayout]:
    box = QGroupBox(title)
    form = QFormLayout(box)
    for dotted in keys:
        widget = field_editor(session, dotted, on_error=on_error)
        spec = field_spec(dotted)
        if spec.type is bool:
            form.addRow(widget)  # a check box carries its own label
        else:
            form.addRow(spec.label, widget)
    return box, form


class TrainingPanel(QWidget):
    """Three group boxes: LoRA, Training (with the output folder) and Scale."""

    def __init__(self, session, *, on_error=None, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        lora_box, _ = _form("LoRA", session, LORA_KEYS, on_error)
        train_box, train = _form("Training", session, TRAINING_KEYS, on_error)
        self.output = field_editor(session, "output.dir", on_error=on_error)
        browse = QPushButton("…", objectName="outputDirButton")
        browse.setMaximumWidth(32)
        browse.setToolTip("Choose the folder the bundle is written to.")
        browse.clicked.connect(self._browse_output)
        out_row = QHBoxLayout()
        out_row.addWidget(self.output, 1)
        out_row.addWidget(browse)
        train.addRow(field_spec("output.dir").label, out_row)
        scale_box, _ = _form("Scale (several GPUs)", session, DISTRIBUTED_KEYS, on_error)
        scale_box.setObjectName("scaleBox")
        scale_box.setToolTip(
            "Run the same recipe on several GPUs through accelerate: DDP copies the model to "
            "each, FSDP shards it. The estimate is then per GPU. Several machines: see "
            "docs/cluster.md."
        )
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(lora_box)
        layout.addWidget(train_box)
        layout.addWidget(scale_box)

    def _browse_output(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Bundle folder", self.session.recipe.output.dir)
        if path:
            self.session.edit("output.dir", path)
