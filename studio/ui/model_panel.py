"""The model panel: choose the base model and show its shape, read in the background."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
)

from studio.core.recipe import BUILTIN_MODEL
from studio.ui.background import run_in_helper

STEP_MESSAGES = {
    "converting": "Converting the model to a cached safetensors folder (once; ~20 s for the "
    "built-in model)",
}


class ModelPanel(QGroupBox):
    """``modelSourceEdit`` plus browse buttons; `load` reads the shape without blocking.

    Emits ``modelReady(resolved, shape)`` (a `ResolvedModel` and a `ModelShape`) or
    ``modelFailed(message)``; ``sourceChanged`` as soon as the text is committed.
    """

    sourceChanged = Signal(str)
    modelReady = Signal(object, object)
    modelFailed = Signal(str)

    def __init__(self, parent=None) -> None:
        super().__init__("Base model", parent)
        self.edit = QLineEdit(BUILTIN_MODEL, objectName="modelSourceEdit")
        self.edit.setToolTip(
            "A local Hugging Face folder, a hub id (read from the local cache), a .gguf file, "
            f"or {BUILTIN_MODEL} (SmolLM2-135M-Instruct, shipped with the app)."
        )
        self.edit.setPlaceholderText("folder, hub id, .gguf file or " + BUILTIN_MODEL)
        builtin = QPushButton("Built-in", objectName="modelBuiltinButton")
        builtin.setToolTip("SmolLM2-135M-Instruct, shipped with the app (converted once, ~20 s).")
        folder = QPushButton("Folder…", objectName="modelFolderButton")
        folder.setToolTip("A model folder in Hugging Face layout (config.json + safetensors).")
        gguf = QPushButton(".gguf…", objectName="modelGgufButton")
        gguf.setToolTip("A single GGUF file; converted once to a cached safetensors folder.")
        self.summary = QLabel("Not read yet.", objectName="modelSummaryLabel")
        self.summary.setWordWrap(True)
        self.progress = QProgressBar(objectName="modelProgress")
        self.progress.setMaximumHeight(14)
        self.progress.setTextVisible(False)
        self.progress.hide()

        row = QHBoxLayout()
        row.addWidget(self.edit, 1)
        row.addWidget(builtin)
        row.addWidget(folder)
        row.addWidget(gguf)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.progress)
        layout.addWidget(self.summary)

        builtin.clicked.connect(lambda: self._choose(BUILTIN_MODEL))
        folder.clicked.connect(self._browse_folder)
        gguf.clicked.connect(self._browse_gguf)
        self.edit.editingFinished.connect(self._committed)
        self._task = None
        self._loaded_source: str | None = None
        self.resolved = None
        self.shape = None

    def source(self) -> str:
        return self.edit.text().strip()

    def set_source(self, source: str, *, load: bool = True) -> None:
        """Put ``source`` in the edit; read its shape when ``load``."""
        self.edit.setText(source)
        self.edit.setCursorPosition(0)
        self._committed(load=load)

    def _choose(self, source: str) -> None:
        self.set_source(source)

    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a model folder")
        if path:
            self._choose(path)

    def _browse_gguf(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a GGUF file", "", "GGUF (*.gguf)")
        if path:
            self._choose(path)

    def _committed(self, load: bool = True) -> None:
        source = self.source()
        if source == self._loaded_source:
            return
        self.sourceChanged.emit(source)
        if load:
            self.load()

    def load(self) -> None:
        """Resolve the source and read its shape in the background (a newer call wins)."""
        source = self.source()
        if self._task is not None:
            self._task.cancel()
        self._loaded_source = source
        self.resolved = self.shape = None
        self.summary.setText(f"Reading {source}…")
        self.progress.setRange(0, 0)
        self.progress.show()
        from studio.core.helper import read_model

        self._task = run_in_helper(
            read_model,
            source,
            on_result=self._ready,
            on_error=self._failed,
            on_progress=self._progress,
            on_done=self.progress.hide,
            owner=self,
        )

    def _progress(self, message: str, fraction) -> None:
        if fraction is None:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(max(0.0, min(1.0, float(fraction))) * 1000))
        message = STEP_MESSAGES.get(message, message)
        if message:
            text = message if message.endswith("…") else f"{message}…"
            if fraction is not None:
                text += f" {float(fraction) * 100:.0f}%"
            self.summary.setText(text)

    def _ready(self, result) -> None:
        self.resolved, self.shape = result
        self.summary.setText(f"{self.resolved.display_name}\n{self.shape.summary()}")
        self.summary.setToolTip(f"Loaded from {self.resolved.path}")
        self.modelReady.emit(self.resolved, self.shape)

    def _failed(self, exc: BaseException, details: str) -> None:
        self._loaded_source = None
        message = str(exc) or type(exc).__name__
        self.summary.setText(f"⚠ {message}")
        self.summary.setToolTip(details)
        self.modelFailed.emit(message)
