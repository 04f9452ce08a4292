"""The model panel: the base model's source (``model.source``) and its shape as the session
reads it (progress while reading, the summary once read, the reason when it cannot be)."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
)

from studio.core.recipe import BUILTIN_MODEL
from studio.core.session import LoadState
from studio.ui.binding import connect_while_alive, field_editor


class ModelPanel(QGroupBox):
    """``modelSourceEdit`` plus Built-in / Folder… / .gguf… and ``modelSummaryLabel``."""

    def __init__(self, session, *, on_error=None, parent=None) -> None:
        super().__init__("Base model", parent)
        self.session = session
        self.edit = field_editor(session, "model.source", on_error=on_error)
        self.edit.setPlaceholderText("folder, hub id, .gguf file or " + BUILTIN_MODEL)
        builtin = QPushButton("Built-in", objectName="modelBuiltinButton")
        builtin.setToolTip("SmolLM2-135M-Instruct, shipped with the app (converted once, ~20 s).")
        folder = QPushButton("Folder…", objectName="modelFolderButton")
        folder.setToolTip("A model folder in Hugging Face layout (config.json + safetensors).")
        gguf = QPushButton(".gguf…", objectName="modelGgufButton")
        gguf.setToolTip("A single GGUF file; converted once to a cached safetensors folder.")
        plan = QPushButton("What fits…", objectName="whatFitsButton")
        plan.setToolTip(
            "The models people fine-tune (Llama, Mistral, Qwen, Gemma, Phi, SmolLM2), each "
            "estimated on this device with these settings; pick one to plan with it offline."
        )
        self.summary = QLabel("Not read yet.", objectName="modelSummaryLabel")
        self.summary.setWordWrap(True)
        self.progress = QProgressBar(objectName="modelProgress")
        self.progress.setMaximumHeight(14)
        self.progress.setTextVisible(False)
        self.progress.hide()

        row = QHBoxLayout()
        row.addWidget(builtin)
        row.addWidget(folder)
        row.addWidget(gguf)
        row.addWidget(plan)
        row.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.edit)
        layout.addLayout(row)
        layout.addWidget(self.progress)
        layout.addWidget(self.summary)

        builtin.clicked.connect(lambda: self.choose(BUILTIN_MODEL))
        folder.clicked.connect(self._browse_folder)
        gguf.clicked.connect(self._browse_gguf)
        plan.clicked.connect(self._what_fits)
        connect_while_alive(self, session.events.model, self._show)
        self._show(session.model)

    def choose(self, source: str) -> None:
        """Use ``source`` as the base model (the session reads it)."""
        self.session.edit("model.source", source)

    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a model folder")
        if path:
            self.choose(path)

    def _browse_gguf(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a GGUF file", "", "GGUF (*.gguf)")
        if path:
            self.choose(path)

    def _what_fits(self) -> None:
        from studio.ui.plan_dialog import PlanDialog

        dialog = PlanDialog(self.session, self)
        dialog.open()

    def _show(self, model, _old=None) -> None:
        state = model.state
        self.progress.setVisible(state is LoadState.READING)
        if state is LoadState.READING:
            if model.progress is None:
                self.progress.setRange(0, 0)
            else:
                self.progress.setRange(0, 1000)
                self.progress.setValue(int(max(0.0, min(1.0, float(model.progress))) * 1000))
            text = model.message if model.message.endswith("…") else f"{model.message}…"
            if model.progress is not None:
                text += f" {float(model.progress) * 100:.0f}%"
            self.summary.setText(text)
            self.summary.setToolTip("")
        elif state is LoadState.READY:
            self.summary.setText(f"{model.resolved.display_name}\n{model.shape.summary()}")
            self.summary.setToolTip(f"Loaded from {model.resolved.path}")
        elif state is LoadState.FAILED:
            self.summary.setText(f"⚠ {model.message}")
            self.summary.setToolTip(model.details)
        else:
            self.summary.setText("Not read yet.")
            self.summary.setToolTip("")
