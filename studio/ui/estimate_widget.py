"""The live memory estimate: a stacked bar of the estimator's terms against the capacity,
the total, and a verdict with the one change that would make the run fit."""

from __future__ import annotations

import html

from PySide6.QtCore import QEvent, QRectF, Qt
from PySide6.QtGui import QColor, QFont, QPainter, QPen
from PySide6.QtWidgets import (
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from studio.core.units import format_bytes
from studio.ui.binding import connect_while_alive

# One hue per group, shades within a group (terms sorted largest first).
GROUP_COLORS = {
    "weights": ("#1565c0", "#42a5f5", "#90caf9", "#0d47a1"),
    "training": ("#2e7d32", "#66bb6a", "#a5d6a7", "#1b5e20"),
    "activations": ("#ef6c00", "#ffa726", "#ffcc80", "#e65100"),
    "fixed": ("#6a1b9a", "#ab47bc", "#ce93d8", "#4a148c"),
}
VERDICTS = {
    "fits": ("Fits", "#2e7d32"),
    "tight": ("Tight", "#b26a00"),
    "does_not_fit": ("Does not fit", "#c62828"),
}


def term_colors(terms) -> dict[str, QColor]:
    """A stable color per term key: the group's hue, a shade per term in the estimator's own
    (fixed) order, so a term keeps its color when the sizes change."""
    used: dict[str, int] = {}
    colors = {}
    for term in terms:
        palette = GROUP_COLORS.get(term.group, ("#757575", "#9e9e9e", "#bdbdbd", "#616161"))
        n = used.get(term.group, 0)
        used[term.group] = n + 1
        colors[term.key] = QColor(palette[n % len(palette)])
    return colors


class EstimateBar(QWidget):
    """Paints a `MemoryEstimate`'s terms as one stacked horizontal bar; hover a part for its
    name, size and note. The capacity (when known) is a vertical line."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setObjectName("estimateBar")
        self.setMinimumHeight(44)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setMouseTracking(True)
        self.estimate = None
        self.measured_peak: int | None = None
        self.message = ""
        self._segments: list[tuple[QRectF, object]] = []

    def set_estimate(
        self, estimate, measured_peak: int | None = None, *, message: str = ""
    ) -> None:
        """Paint ``estimate`` (None: ``message`` in the empty bar) and the measured peak."""
        self.estimate = estimate
        self.measured_peak = measured_peak
        self.message = message
        self.update()

    def _scale(self) -> float:
        est = self.estimate
        top = max(est.total_bytes, est.capacity_bytes or 0, self.measured_peak or 0)
        return top * 1.04 if top else 1.0

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        bar = QRectF(1, 4, self.width() - 2, self.height() - 20)
        p.fillRect(bar, self.palette().alternateBase())
        p.setPen(QPen(self.palette().mid().color()))
        p.drawRect(bar)
        self._segments = []
        if self.estimate is None:
            p.setPen(self.palette().text().color())
            text = p.fontMetrics().elidedText(
                self.message or "no estimate", Qt.TextElideMode.ElideRight, int(bar.width()) - 8
            )
            p.drawText(bar, Qt.AlignmentFlag.AlignCenter, text)
            p.end()
            return
        scale = bar.width() / self._scale()
        colors = term_colors(self.estimate.terms)
        x = bar.left()
        for term in self.estimate.largest_first():
            if term.bytes <= 0:
                continue
            w = term.bytes * scale
            rect = QRectF(x, bar.top(), w, bar.height())
            p.fillRect(rect, colors[term.key])
            self._segments.append((rect, term))
            x += w
        font = QFont(self.font())
        font.setPointSizeF(max(6.0, font.pointSizeF() * 0.85))
        p.setFont(font)
        cap = self.estimate.capacity_bytes
        if cap:
            cx = bar.left() + cap * scale
            p.setPen(QPen(QColor("#c62828"), 2))
            p.drawLine(int(cx), 0, int(cx), int(bar.bottom()) + 2)
            p.setPen(self.palette().text().color())
            label = f"capacity {format_bytes(cap)}"
            room = p.fontMetrics().horizontalAdvance(label) + 4
            left = cx - room >= bar.left()
            p.drawText(
                QRectF(cx - room if left else cx + 3, bar.bottom() + 1, room, 15),
                (Qt.AlignmentFlag.AlignRight if left else Qt.AlignmentFlag.AlignLeft)
                | Qt.AlignmentFlag.AlignVCenter,
                label,
            )
        if self.measured_peak:
            mx = bar.left() + self.measured_peak * scale
            p.setPen(QPen(QColor("#212121"), 2, Qt.PenStyle.DashLine))
            p.drawLine(int(mx), 0, int(mx), int(bar.bottom()) + 2)
            p.setPen(self.palette().text().color())
            p.drawText(
                QRectF(mx + 3, bar.bottom() + 1, 200, 15),
                Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                f"measured {format_bytes(self.measured_peak)}",
            )
        p.end()

    def term_at(self, x: float, y: float):
        for rect, term in self._segments:
            if rect.contains(x, y):
                return term
        return None

    def event(self, event) -> bool:
        if event.type() == QEvent.Type.ToolTip:
            pos = event.position() if hasattr(event, "position") else event.pos()
            term = self.term_at(pos.x(), pos.y())
            if term is not None:
                share = term.bytes / max(1, self.estimate.total_bytes) * 100
                text = f"<b>{term.label}</b>: {format_bytes(term.bytes)} ({share:.0f}%)"
                if term.note:
                    text += f"<br>{term.note}"
                QToolTip.showText(event.globalPos(), text, self)
            else:
                QToolTip.hideText()
                event.ignore()
            return True
        return super().event(event)


class EstimatePanel(QGroupBox):
    """Bar, legend, ``estimateTotalLabel``, ``estimateVerdictLabel`` with the advice and its
    ``applyAdviceButton``, and ``measuredPeakLabel``: the session's estimate, or the message
    saying why there is none."""

    def __init__(self, session, parent=None) -> None:
        super().__init__("Memory estimate", parent)
        self.session = session
        self.total = QLabel("—", objectName="estimateTotalLabel")
        bold = QFont(self.total.font())
        bold.setPointSizeF(bold.pointSizeF() * 1.25)
        bold.setBold(True)
        self.total.setFont(bold)
        self.verdict = QLabel("", objectName="estimateVerdictLabel")
        self.verdict.setWordWrap(True)
        self.verdict.setTextFormat(Qt.TextFormat.RichText)
        self.apply = QPushButton("Apply", objectName="applyAdviceButton")
        self.apply.setToolTip("Change the settings as the advice says.")
        self.apply.clicked.connect(session.apply_advice)
        self.bar = EstimateBar()
        self.legend = QWidget(objectName="estimateLegend")
        self.legend_layout = QGridLayout(self.legend)
        self.legend_layout.setContentsMargins(0, 0, 0, 0)
        self.legend_layout.setHorizontalSpacing(12)
        self.legend_layout.setVerticalSpacing(1)
        self.measured = QLabel("", objectName="measuredPeakLabel")
        self.measured.hide()
        verdict_row = QHBoxLayout()
        verdict_row.addWidget(self.verdict, 1)
        verdict_row.addWidget(self.apply, 0, Qt.AlignmentFlag.AlignTop)
        layout = QVBoxLayout(self)
        layout.addWidget(self.total)
        layout.addWidget(self.bar)
        layout.addWidget(self.legend)
        layout.addLayout(verdict_row)
        layout.addWidget(self.measured)
        for signal in (
            session.events.estimate,
            session.events.estimate_message,
            session.events.measured_peak,
        ):
            connect_while_alive(self, signal, self._show)
        self._show()

    @property
    def estimate(self):
        return self.session.estimate

    def _show(self, *_args) -> None:
        est = self.session.estimate
        peak = self.session.measured_peak
        self.apply.setVisible(bool(est is not None and est.advice_changes))
        if est is None:
            self.total.setText("—")
            self.total.setToolTip("")
            self.verdict.setText(html.escape(self.session.estimate_message))
            self.bar.set_estimate(None, message=self.session.estimate_message)
            self._fill_legend(None)
        else:
            cap = f" of {format_bytes(est.capacity_bytes)}" if est.capacity_bytes else ""
            share = (
                f" per GPU ({est.processes} processes, {est.strategy.upper()})"
                if est.processes > 1
                else ""
            )
            length = (
                f" · examples up to {est.sequence_tokens} tokens (the dataset's longest)"
                if est.sequence_from_data
                else ""
            )
            self.total.setText(
                f"{format_bytes(est.total_bytes)}{cap}{share} on {est.device}{length}"
            )
            self.total.setToolTip(
                f"Estimated peak: {est.total_bytes:,} bytes; weights {est.weights_bytes:,} bytes."
                + (
                    f" Batches are padded to their longest example, and this dataset's longest "
                    f"is {est.sequence_tokens} tokens, under max_length "
                    f"{self.session.recipe.dataset.max_length}."
                    if est.sequence_from_data
                    else f" Every example counted at max_length ({est.sequence_tokens} tokens)"
                    " until the dataset has been read."
                )
            )
            name, color = VERDICTS.get(est.verdict, (est.verdict, "#555"))
            advice = f" — {html.escape(est.advice)}" if est.advice else ""
            self.verdict.setText(f'<b style="color:{color}">{name}</b>{advice}')
            self.bar.set_estimate(est, peak)
            self._fill_legend(est)
        if peak is None:
            self.measured.hide()
        else:
            reference = est.total_bytes if est is not None else None
            ratio = (
                f" ({peak / reference * 100:.0f}% of the estimate {format_bytes(reference)})"
                if reference
                else ""
            )
            self.measured.setText(f"Measured peak: <b>{format_bytes(peak)}</b>{ratio}")
            self.measured.show()

    def _fill_legend(self, est) -> None:
        while self.legend_layout.count():
            item = self.legend_layout.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        if est is None:
            return
        terms = [t for t in est.largest_first() if t.bytes > 0]
        colors = term_colors(est.terms)
        for i, term in enumerate(terms):
            label = QLabel(
                f'<span style="color:{colors[term.key].name()}">■</span> '
                f"{term.label}: {format_bytes(term.bytes)}"
            )
            label.setToolTip(term.note or term.label)
            self.legend_layout.addWidget(label, i // 2, i % 2)
        off_peak = est.off_peak_terms()
        if off_peak:
            label = QLabel(
                "Not at the peak (counted 0): "
                + ", ".join(f"{t.label} {format_bytes(t.off_peak_bytes)}" for t in off_peak),
                objectName="estimateOffPeak",
            )
            label.setEnabled(False)  # drawn muted: in use during a step, but not at its peak
            label.setWordWrap(True)
            label.setToolTip(
                "A training step peaks either while the loss is computed (logits) or later in "
                "backward (LoRA gradients, the recomputed layer, a dequantized weight), never "
                "both at once; the total counts the larger."
            )
            self.legend_layout.addWidget(label, (len(terms) + 1) // 2, 0, 1, 2)
