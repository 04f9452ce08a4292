"""The Export dialog: a bundle as a merged model folder or a GGUF file.

`ExportDialog(bundle_path, parent)` offers the choices of ``qlora-studio export`` (format,
dtype, GGUF type, which weights to merge into, output folder, overwrite) and runs that very
command in a child process (``python -m studio export ... --events``), so the window never
imports torch and Cancel really stops the work: the child is sent SIGTERM, removes its
temporary folder and exits (killed outright if it does not within a few seconds). The child's
JSON progress lines drive the progress bar and show the same messages as the command line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PySide6.QtCore import QProcess, QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from studio.core.export import (
    DEFAULT_GGUF_TYPE,
    DTYPES,
    GGUF_TYPES,
    default_output,
)

_KILL_AFTER_MS = 15_000
FORMAT_LABELS = {
    "merged": "Merged model folder (transformers, vLLM)",
    "gguf": "GGUF file (llama.cpp, Ollama)",
}
MERGE_LABELS = {
    "auto": "Whichever is closer to the trained model (measured)",
    "original": "Original 16-bit weights",
    "dequantized": "Dequantized 4-bit weights (as trained)",
}


class ExportDialog(QDialog):
    """States: ``idle``, ``running``, ``done``, ``failed``, ``cancelling``, ``cancelled``.

    ``exported`` carries the command's result (a dict: path, files, figures, ...) when it
    succeeds; ``failed`` the exit code and message when it does not.
    """

    exported = Signal(dict)
    failed = Signal(int, str)

    def __init__(self, bundle_path: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("exportDialog")
        self.setWindowTitle("Export model")
        self.bundle_path = str(bundle_path)
        self.state = "idle"
        self.result: dict | None = None
        self.error: tuple[int, str] | None = None
        self._process: QProcess | None = None
        self._buffer = b""
        self._stderr_tail = ""
        self._message = ""
        self._out_edited = False

        self.bundle_label = QLabel(f"Bundle: {self.bundle_path}", objectName="exportBundleLabel")
        self.bundle_label.setWordWrap(True)
        self.format = QComboBox(objectName="exportFormatCombo")
        for key, label in FORMAT_LABELS.items():
            self.format.addItem(label, key)
        self.dtype = QComboBox(objectName="exportDtypeCombo")
        self.dtype.addItem("The bundle's compute dtype", None)
        for name in DTYPES:
            self.dtype.addItem(name, name)
        self.dtype.setToolTip("The dtype of the merged weights (and of the GGUF's source).")
        self.gguf_type = QComboBox(objectName="exportGgufTypeCombo")
        for name in GGUF_TYPES:
            self.gguf_type.addItem(name, name)
        self.gguf_type.setCurrentIndex(GGUF_TYPES.index(DEFAULT_GGUF_TYPE))
        self.gguf_type.setToolTip("q8_0: 8-bit, about half the size of f16 and close to it.")
        self.merge_into = QComboBox(objectName="exportMergeIntoCombo")
        for key, label in MERGE_LABELS.items():
            self.merge_into.addItem(label, key)
        self.merge_into.setToolTip(
            "The adapter was trained against the quantized base. Auto merges it into both the "
            "original and the dequantized weights, measures each against the trained model on "
            "held-out prompts and keeps the closer one."
        )
        self.out = QLineEdit(objectName="exportOutputEdit")
        self.browse = QPushButton("Browse…", objectName="exportBrowseButton")
        self.overwrite = QCheckBox("Replace it if it exists", objectName="exportOverwriteCheck")
        self.progress = QProgressBar(objectName="exportProgressBar")
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("%p%")
        self.message = QLabel("", objectName="exportMessageLabel")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(self.message.textInteractionFlags())
        self.export_button = QPushButton("Export", objectName="exportButton")
        self.export_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel", objectName="exportCancelButton")
        self.cancel_button.setToolTip("Stop the export (nothing is left behind), or close.")

        out_row = QHBoxLayout()
        out_row.addWidget(self.out, 1)
        out_row.addWidget(self.browse)
        form = QFormLayout()
        form.addRow("Format", self.format)
        form.addRow("Weights dtype", self.dtype)
        form.addRow("GGUF type", self.gguf_type)
        form.addRow("Merge into", self.merge_into)
        form.addRow("Output folder", out_row)
        form.addRow("", self.overwrite)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.export_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.bundle_label)
        layout.addLayout(form)
        layout.addWidget(self.progress)
        layout.addWidget(self.message)
        layout.addLayout(buttons)
        self.setMinimumWidth(560)

        self.format.currentIndexChanged.connect(self._choices_changed)
        self.gguf_type.currentIndexChanged.connect(self._choices_changed)
        self.out.textEdited.connect(self._out_typed)
        self.browse.clicked.connect(self._browse)
        self.export_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self._cancel_clicked)
        self._choices_changed()

    # ------------------------------------------------------------------------ choices
    def chosen_format(self) -> str:
        return self.format.currentData()

    def _choices_changed(self) -> None:
        gguf = self.chosen_format() == "gguf"
        self.gguf_type.setEnabled(gguf)
        if not self._out_edited:
            self.out.setText(
                str(
                    default_output(
                        self.bundle_path, self.chosen_format(), self.gguf_type.currentData()
                    )
                )
            )

    def _out_typed(self, _text: str) -> None:
        self._out_edited = True

    def _browse(self) -> None:
        start = self.out.text() or str(Path(self.bundle_path).parent)
        folder = QFileDialog.getExistingDirectory(
            self, "Export into which folder?", str(Path(start).parent)
        )
        if folder:
            self._out_edited = True
            name = Path(self.out.text()).name or Path(self.bundle_path).name + "-export"
            self.out.setText(str(Path(folder) / name))

    def command(self) -> list[str]:
        """The ``qlora-studio export`` arguments for the current choices."""
        args = [
            "export",
            self.bundle_path,
            "--to",
            self.chosen_format(),
            "--out",
            self.out.text().strip(),
            "--merge-into",
            self.merge_into.currentData(),
            "--events",
        ]
        if self.dtype.currentData():
            args += ["--dtype", self.dtype.currentData()]
        if self.chosen_format() == "gguf":
            args += ["--gguf-type", self.gguf_type.currentData()]
        if self.overwrite.isChecked():
            args.append("--overwrite")
        return args

    # ------------------------------------------------------------------------ running
    def start(self) -> None:
        """Start the export in a child process."""
        if self.state in ("running", "cancelling"):
            return
        if not self.out.text().strip():
            self._show_error("Choose an output folder.")
            return
        self.result = self.error = None
        self._buffer = b""
        self._stderr_tail = ""
        self._set_running(True)
        self.state = "running"
        self.progress.setValue(0)
        self._say("starting the export")
        process = QProcess(self)
        process.setProgram(sys.executable)
        # A PyInstaller build's executable is the program itself; else run the package.
        prefix = [] if getattr(sys, "frozen", False) else ["-m", "studio"]
        process.setArguments([*prefix, *self.command()])
        process.readyReadStandardOutput.connect(self._read_stdout)
        process.readyReadStandardError.connect(self._read_stderr)
        process.finished.connect(self._finished)
        process.errorOccurred.connect(self._process_error)
        self._process = process
        process.start()

    def cancel(self) -> None:
        """Stop a running export: SIGTERM (the child cleans up), SIGKILL if it lingers."""
        process = self._process
        if process is None or self.state not in ("running",):
            return
        self.state = "cancelling"
        self.cancel_button.setEnabled(False)
        self._say("cancelling…")
        process.terminate()
        QTimer.singleShot(_KILL_AFTER_MS, self._kill_if_running)

    def _kill_if_running(self) -> None:
        if self._process is not None and self._process.state() != QProcess.ProcessState.NotRunning:
            self._process.kill()

    def _cancel_clicked(self) -> None:
        if self.state == "running":
            self.cancel()
        elif self.state != "cancelling":
            self.reject()

    def _set_running(self, running: bool) -> None:
        for widget in (
            self.format,
            self.dtype,
            self.merge_into,
            self.out,
            self.browse,
            self.overwrite,
            self.export_button,
        ):
            widget.setEnabled(not running)
        self.gguf_type.setEnabled(not running and self.chosen_format() == "gguf")
        self.cancel_button.setEnabled(True)
        self.cancel_button.setText("Cancel" if running else "Close")

    def _say(self, text: str) -> None:
        self._message = text
        self.message.setStyleSheet("")
        self.message.setText(text)

    def _show_error(self, text: str) -> None:
        self.message.setStyleSheet("color: #b00020;")
        self.message.setText(text)

    def _read_stdout(self) -> None:
        self._buffer += bytes(self._process.readAllStandardOutput())
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            try:
                event = json.loads(line.decode("utf-8", "replace"))
            except ValueError:
                continue
            self._handle(event)

    def _read_stderr(self) -> None:
        text = bytes(self._process.readAllStandardError()).decode("utf-8", "replace")
        self._stderr_tail = (self._stderr_tail + text)[-4000:]

    def _handle(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "progress":
            if event.get("message") and self.state == "running":
                self._say(event["message"])
            if event.get("fraction") is not None:
                self.progress.setValue(int(1000 * float(event["fraction"])))
        elif kind == "done":
            self.result = event.get("result") or {}
        elif kind == "error":
            self.error = (int(event.get("code", 3)), str(event.get("message", "")))

    def _process_error(self, error) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self._finish_failed(3, f"the export could not start: {self._process.errorString()}")

    def _finished(self, code: int, status) -> None:
        self._read_stdout()
        was_cancelling = self.state == "cancelling"
        self._process = None
        if self.result is not None and code == 0:
            self.state = "done"
            self._set_running(False)
            self.progress.setValue(1000)
            self._say(_summary(self.result))
            self.exported.emit(self.result)
        elif was_cancelling or code == 130:
            self.state = "cancelled"
            self._set_running(False)
            self.progress.setValue(0)
            self._say("Cancelled; nothing was written.")
        else:
            if self.error is not None:
                exit_code, message = self.error
            else:
                last = self._stderr_tail.strip().splitlines()[-1:] or ["no message"]
                exit_code, message = (
                    3,
                    f"the export ended unexpectedly (exit code {code}): {last[0]}",
                )
            self._finish_failed(exit_code, message)

    def _finish_failed(self, code: int, message: str) -> None:
        self.state = "failed"
        self._process = None
        self._set_running(False)
        self._show_error(message)
        self.failed.emit(code, message)

    # ------------------------------------------------------------------------ closing
    def reject(self) -> None:
        if self.state in ("running", "cancelling"):
            self.cancel()
            return
        super().reject()

    def closeEvent(self, event) -> None:
        if self.state in ("running", "cancelling"):
            self.cancel()
            event.ignore()
            return
        super().closeEvent(event)

    def shutdown(self, timeout_ms: int = 30_000) -> None:
        """Stop a running export and wait for the child to end (the window quitting)."""
        process = self._process
        if process is None:
            return
        if self.state == "running":
            self.cancel()
        if not process.waitForFinished(timeout_ms):
            process.kill()
            process.waitForFinished(5000)


def _summary(result: dict) -> str:
    lines = [f"Exported to {result.get('path')}"]
    figures = result.get("figures") or {}
    for kind, fig in figures.items():
        kept = " (kept)" if kind == result.get("merge_into") else ""
        lines.append(
            f"merged into {kind}{kept}: mean KL {fig['mean_kl']:.2e}, top-1 agreement "
            f"{fig['top1_agreement']:.1%}"
        )
    return "\n".join(lines)
