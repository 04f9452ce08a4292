"""The chat panel: a prompt, answered by the base model with the adapter and, side by side,
by the bare base model. Generation runs in the helper process (`studio.core.helper`), and
its text streams back piece by piece; the window stays live."""

from __future__ import annotations

import html

from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from studio.ui.background import run_in_helper
from studio.ui.binding import connect_while_alive


class ChatPanel(QWidget):
    """``chatPromptEdit``, ``chatSendButton``, ``chatAdapterView`` and ``chatBaseView``, for the
    session's bundle (a finished run or an opened bundle); another bundle clears the answers."""

    def __init__(self, session, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        self.setObjectName("chatPanel")
        self.bundle_label = QLabel(
            "Finish a run or open a bundle (File ▸ Open bundle) to chat.",
            objectName="chatBundleLabel",
        )
        self.bundle_label.setWordWrap(True)
        self.prompt = QPlainTextEdit(objectName="chatPromptEdit")
        self.prompt.setPlaceholderText("Ask something…")
        self.prompt.setMaximumHeight(90)
        self.max_tokens = QSpinBox(objectName="chatMaxTokensSpin")
        self.max_tokens.setRange(1, 4096)
        self.max_tokens.setValue(128)
        self.max_tokens.setPrefix("max new tokens: ")
        self.send = QPushButton("Ask both", objectName="chatSendButton")
        self.send.setToolTip("Generate with the adapter and with the bare base model (Ctrl+Enter).")
        self.progress = QProgressBar(objectName="chatProgress")
        self.progress.setRange(0, 0)
        self.progress.setMaximumHeight(12)
        self.progress.setTextVisible(False)
        self.progress.hide()
        self.status = QLabel("", objectName="chatStatusLabel")
        self.adapter_view = QTextBrowser(objectName="chatAdapterView")
        self.base_view = QTextBrowser(objectName="chatBaseView")
        row = QHBoxLayout()
        row.addWidget(self.max_tokens)
        row.addStretch(1)
        row.addWidget(self.send)
        answers = QHBoxLayout()
        for title, view in (
            ("With the adapter", self.adapter_view),
            ("Base model only", self.base_view),
        ):
            col = QVBoxLayout()
            col.addWidget(QLabel(f"<b>{title}</b>"))
            col.addWidget(view, 1)
            answers.addLayout(col, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.bundle_label)
        layout.addWidget(self.prompt)
        layout.addLayout(row)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addLayout(answers, 1)
        self.bundle: str | None = None
        self._task = None
        self.answers: tuple[str, str] | None = None
        self.send.clicked.connect(self.ask)
        QShortcut(QKeySequence("Ctrl+Return"), self.prompt, activated=self.ask)
        self.send.setEnabled(False)
        connect_while_alive(self, session.events.bundle, self.set_bundle)
        self.set_bundle(session.bundle)

    def set_bundle(self, bundle: str | None, _old=None) -> None:
        if bundle == self.bundle:
            return
        if self._task is not None:
            self._task.cancel()  # an answer of the previous bundle must not land here
            self._done()
        self.bundle = bundle
        self.answers = None
        self.adapter_view.clear()
        self.base_view.clear()
        self.status.setText("")
        self.send.setEnabled(bundle is not None and self._task is None)
        self.bundle_label.setText(
            f"Bundle: {bundle}" if bundle else "Finish a run or open a bundle to chat."
        )

    def ask(self) -> None:
        prompt = self.prompt.toPlainText().strip()
        if not prompt or not self.bundle or self._task is not None:
            return
        self.send.setEnabled(False)
        self.progress.show()
        self.status.setText("Loading the model and generating (the first answer takes longest)…")
        self.answers = None
        self.adapter_view.clear()
        self.base_view.clear()
        bundle, n = self.bundle, self.max_tokens.value()
        device = self.session.recipe.training.device
        from studio.core.helper import chat_pair

        self._task = run_in_helper(
            chat_pair,
            bundle,
            prompt,
            n,
            device,
            on_result=self._answered,
            on_error=self._failed,
            on_progress=self._report,
            on_done=self._done,
            owner=self,
        )

    def _report(self, kind: str, payload) -> None:
        if kind == "status":
            self.status.setText(str(payload))
        else:
            view = self.adapter_view if kind == "adapter" else self.base_view
            cursor = view.textCursor()
            cursor.movePosition(cursor.MoveOperation.End)
            cursor.insertText(str(payload))
            view.setTextCursor(cursor)

    def _answered(self, result) -> None:
        with_adapter, base = result
        self.answers = (with_adapter, base)
        self.adapter_view.setPlainText(with_adapter)
        self.base_view.setPlainText(base)
        self.status.setText("")

    def _failed(self, exc: BaseException, details: str) -> None:
        self.status.setText(f"⚠ {html.escape(str(exc) or type(exc).__name__)}")
        self.status.setToolTip(details)

    def _done(self) -> None:
        self._task = None
        self.progress.hide()
        self.send.setEnabled(self.bundle is not None)

    def shutdown(self) -> None:
        """Drop a pending answer (the window is closing)."""
        if self._task is not None:
            self._task.cancel()
