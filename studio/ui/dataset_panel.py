"""The dataset panel: which data, how it is read, and a preview of formatted examples exactly
as the model sees them, trained parts highlighted, with token-length statistics."""

from __future__ import annotations

import html
from dataclasses import replace

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from studio.core.recipe import BUILTIN_DATASET, DATASET_FORMATS, DatasetSection
from studio.ui.background import run_in_helper

TRAINED_STYLE = "background:#c8e6c9;color:#1b5e20;"
PROMPT_STYLE = "color:#757575;"


def render_html(example) -> str:
    """One `RenderedExample` as HTML: trained pieces highlighted, the prompt greyed."""
    parts = []
    for text, trained in example.segments:
        style = TRAINED_STYLE if trained else PROMPT_STYLE
        parts.append(f'<span style="{style}">{html.escape(text)}</span>')
    return (
        '<pre style="white-space:pre-wrap;font-family:monospace;margin:0">'
        + "".join(parts)
        + "</pre>"
    )


class DatasetPanel(QWidget):
    """Settings (``datasetPathEdit``, ``datasetFormatCombo``, ``maxLengthSpin``) in a group box
    for the settings column, and `preview_widget` (the formatted examples) for a tab."""

    changed = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.path = QLineEdit(BUILTIN_DATASET, objectName="datasetPathEdit")
        self.path.setToolTip(f"A JSONL, JSON, CSV or Parquet file, or {BUILTIN_DATASET}.")
        builtin = QPushButton("Sample", objectName="datasetBuiltinButton")
        builtin.setToolTip("The built-in sample dataset.")
        browse = QPushButton("File…", objectName="datasetBrowseButton")
        self.format = QComboBox(objectName="datasetFormatCombo")
        for fmt in DATASET_FORMATS:
            self.format.addItem(fmt, fmt)
        self.format.setToolTip(
            "auto: detect from the columns. alpaca: instruction/input/output. chat: a messages "
            "list rendered with the model's chat template. text: plain text, all trained."
        )
        self.max_length = QSpinBox(objectName="maxLengthSpin")
        self.max_length.setRange(8, 131072)
        self.max_length.setSingleStep(64)
        self.max_length.setKeyboardTracking(False)
        self.max_length.setToolTip(
            "Sequence length: longer examples are truncated. Activation and logits memory grow "
            "linearly with it."
        )
        self.train_on_prompt = QCheckBox("Train on the prompt too", objectName="trainOnPromptCheck")
        self.train_on_prompt.setToolTip(
            "Off: only the responses are trained (the prompt is masked out of the loss)."
        )

        self.box = QGroupBox("Dataset")
        form = QFormLayout(self.box)
        row = QHBoxLayout()
        row.addWidget(self.path, 1)
        row.addWidget(builtin)
        row.addWidget(browse)
        form.addRow("Data", row)
        form.addRow("Format", self.format)
        form.addRow("Max length", self.max_length)
        form.addRow(self.train_on_prompt)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.box)

        self.preview_widget = QWidget(objectName="datasetPreviewPage")
        self.info = QLabel(
            "The preview appears once the model's tokenizer is loaded.",
            objectName="datasetInfoLabel",
        )
        self.info.setWordWrap(True)
        self.stats = QLabel("", objectName="datasetStatsLabel")
        self.stats.setWordWrap(True)
        self.progress = QProgressBar(objectName="datasetProgress")
        self.progress.setRange(0, 0)
        self.progress.setMaximumHeight(12)
        self.progress.setTextVisible(False)
        self.progress.hide()
        self.browser = QTextBrowser(objectName="datasetPreview")
        legend = QLabel(
            f'<span style="{TRAINED_STYLE}">trained (in the loss)</span> &nbsp; '
            f'<span style="{PROMPT_STYLE}">prompt (masked)</span>'
        )
        page = QVBoxLayout(self.preview_widget)
        page.addWidget(self.info)
        page.addWidget(self.stats)
        page.addWidget(self.progress)
        page.addWidget(legend)
        page.addWidget(self.browser, 1)

        self._section = DatasetSection()
        self._model_path: str | None = None
        self._task = None
        self.preview = None
        builtin.clicked.connect(lambda: self._set_path(BUILTIN_DATASET))
        browse.clicked.connect(self._browse)
        self.path.editingFinished.connect(self._edited)
        self.format.currentIndexChanged.connect(self._edited)
        self.max_length.valueChanged.connect(self._edited)
        self.train_on_prompt.toggled.connect(self._edited)
        self.set_section(self._section)

    def section(self) -> DatasetSection:
        return replace(
            self._section,
            path=self.path.text().strip() or BUILTIN_DATASET,
            format=self.format.currentData(),
            max_length=self.max_length.value(),
            train_on_prompt=self.train_on_prompt.isChecked(),
        )

    def set_section(self, section: DatasetSection) -> None:
        self._section = section
        widgets = (self.path, self.format, self.max_length, self.train_on_prompt)
        was = [w.blockSignals(True) for w in widgets]
        try:
            self.path.setText(section.path)
            self.format.setCurrentIndex(max(0, self.format.findData(section.format)))
            self.max_length.setValue(section.max_length)
            self.train_on_prompt.setChecked(section.train_on_prompt)
        finally:
            for w, b in zip(widgets, was, strict=True):
                w.blockSignals(b)
        self._last_previewed = None
        self.refresh_preview()

    def _set_path(self, path: str) -> None:
        self.path.setText(path)
        self._edited()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose a dataset", "", "Datasets (*.jsonl *.json *.csv *.tsv *.parquet);;All (*)"
        )
        if path:
            self._set_path(path)

    def _edited(self, *_args) -> None:
        self.changed.emit()
        self.refresh_preview()

    def set_model_path(self, path: str | None) -> None:
        """The resolved model folder whose tokenizer renders the preview (None: none yet)."""
        self._model_path = path
        self.refresh_preview()

    def refresh_preview(self) -> None:
        """Render the preview in the background (a newer request replaces an older one)."""
        if self._model_path is None:
            return
        section = self.section()
        key = (section, self._model_path)
        if key == getattr(self, "_last_previewed", None):
            return
        self._last_previewed = key
        if self._task is not None:
            self._task.cancel()
        self.progress.show()
        self.info.setText("Preparing the preview…")
        model_path = self._model_path
        from studio.core.helper import preview_dataset

        self._task = run_in_helper(
            preview_dataset,
            section,
            model_path,
            on_result=self._show,
            on_error=self._failed,
            on_progress=lambda message, _f: self.info.setText(message),
            on_done=self.progress.hide,
            owner=self,
        )

    def _show(self, preview) -> None:
        self.preview = preview
        st = preview.stats
        self.info.setText(
            f"Detected format: <b>{preview.format}</b> — {html.escape(preview.explanation)}"
        )
        self.stats.setText(
            f"{st.examples} examples · tokens min {st.min_tokens}, mean {st.mean_tokens:.0f}, "
            f"p95 {st.p95_tokens}, max {st.max_tokens} · "
            + (
                f"<b>{st.truncated} will be truncated</b> at {self.max_length.value()} tokens"
                if st.truncated
                else f"none truncated at {self.max_length.value()} tokens"
            )
        )
        self.browser.setHtml("<hr>".join(render_html(ex) for ex in preview.examples))

    def _failed(self, exc: BaseException, details: str) -> None:
        self.preview = None
        self._last_previewed = None
        self.info.setText(f"⚠ {html.escape(str(exc) or type(exc).__name__)}")
        self.info.setToolTip(details)
        self.stats.setText("")
        self.browser.clear()
