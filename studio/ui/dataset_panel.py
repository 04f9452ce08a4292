"""The dataset panel: which data and how it is read (bound to the recipe's [dataset]), plus a
preview page of formatted examples exactly as the model sees them, trained parts highlighted,
with token-length statistics. Both show the session's dataset status; an unusable dataset is
named in the settings column too, not only on the preview page."""

from __future__ import annotations

import html

from PySide6.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from studio.core.recipe import BUILTIN_DATASET, field_spec
from studio.core.session import LoadState
from studio.ui.binding import connect_while_alive, field_editor

TRAINED_STYLE = "background:#c8e6c9;color:#1b5e20;"
PROMPT_STYLE = "color:#757575;"
ERROR_STYLE = "QLabel { color: #c62828; }"


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
    """Settings (``datasetPathEdit``, ``datasetFormatCombo``, ``maxLengthSpin``,
    ``datasetErrorLabel``) for the settings column; `preview_widget` for a tab."""

    def __init__(self, session, *, on_error=None, parent=None) -> None:
        super().__init__(parent)
        self.session = session

        def editor(key):
            return field_editor(session, f"dataset.{key}", on_error=on_error)

        self.path = editor("path")
        builtin = QPushButton("Sample", objectName="datasetBuiltinButton")
        builtin.setToolTip("The built-in sample dataset.")
        browse = QPushButton("File…", objectName="datasetBrowseButton")
        self.format = editor("format")
        self.max_length = editor("max_length")
        self.train_on_prompt = editor("train_on_prompt")
        self.error = QLabel(objectName="datasetErrorLabel")
        self.error.setWordWrap(True)
        self.error.setStyleSheet(ERROR_STYLE)
        self.error.hide()

        self.box = QGroupBox("Dataset")
        form = QFormLayout(self.box)
        row = QHBoxLayout()
        row.addWidget(self.path, 1)
        row.addWidget(builtin)
        row.addWidget(browse)
        form.addRow(field_spec("dataset.path").label, row)
        form.addRow(field_spec("dataset.format").label, self.format)
        form.addRow(field_spec("dataset.max_length").label, self.max_length)
        form.addRow(self.train_on_prompt)
        form.addRow(self.error)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.box)

        self.preview_widget = QWidget(objectName="datasetPreviewPage")
        self.info = QLabel(objectName="datasetInfoLabel")
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

        builtin.clicked.connect(lambda: session.edit("dataset.path", BUILTIN_DATASET))
        browse.clicked.connect(self._browse)
        connect_while_alive(self, session.events.dataset, self._show)
        self._show()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose a dataset", "", "Datasets (*.jsonl *.json *.csv *.tsv *.parquet);;All (*)"
        )
        if path:
            self.session.edit("dataset.path", path)

    def _show(self, *_args) -> None:
        status = self.session.dataset
        state = status.state
        self.progress.setVisible(state is LoadState.READING)
        failed = state is LoadState.FAILED
        self.error.setText(f"⚠ {status.message}" if failed else "")
        self.error.setToolTip(status.details if failed else "")
        self.error.setVisible(failed)
        if state is LoadState.READY:
            preview = status.preview
            st = preview.stats
            max_length = status.key[0].max_length
            self.info.setText(
                f"Detected format: <b>{preview.format}</b> — {html.escape(preview.explanation)}"
            )
            self.stats.setText(
                f"{st.examples} examples · tokens min {st.min_tokens}, mean {st.mean_tokens:.0f}, "
                f"p95 {st.p95_tokens}, max {st.max_tokens} · "
                + (
                    f"<b>{st.truncated} will be truncated</b> at {max_length} tokens"
                    if st.truncated
                    else f"none truncated at {max_length} tokens"
                )
            )
            self.browser.setHtml("<hr>".join(render_html(ex) for ex in preview.examples))
            return
        self.stats.setText("")
        self.browser.clear()
        if failed:
            self.info.setText(f"⚠ {html.escape(status.message)}")
        elif state is LoadState.READING:
            self.info.setText("Preparing the preview…")
        else:
            self.info.setText("The preview appears once the model's tokenizer is loaded.")
