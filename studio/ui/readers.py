"""Reading what the session needs in the background: the model's shape and the dataset preview.

`SessionReaders` watches the session: when the recipe's model source changes (or `read_model`
is called) it resolves the source and reads its shape in the helper process; when the model is
read or the dataset settings change it renders the dataset preview there. Results, progress
and errors go into the session (`Session.model_*`, `Session.dataset_*`); a newer request
replaces an older one, and a result for a source or dataset that is no longer current is
dropped by the session itself.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, QTimer

from studio.core.session import LoadState
from studio.ui.background import run_in_helper
from studio.ui.binding import connect_while_alive

# How long the dataset settings must rest before the preview is rendered again (typing in
# the max length box would otherwise start a render per key).
PREVIEW_DELAY_MS = 150


class SessionReaders(QObject):
    """See the module docstring. ``autoload`` False: the model is read only on `read_model`."""

    def __init__(self, session, *, autoload: bool = True, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        self.autoload = autoload
        self._model_task = None
        self._dataset_task = None
        self._preview_timer = QTimer(self, singleShot=True, interval=PREVIEW_DELAY_MS)
        self._preview_timer.timeout.connect(self.read_dataset)
        connect_while_alive(self, session.events.model, self._model_changed)
        connect_while_alive(self, session.events.recipe, self._recipe_changed)

    def _recipe_changed(self, recipe, old) -> None:
        # A new model source resets the session's model status, which `_model_changed` reads.
        if recipe.dataset != old.dataset:
            self._preview_timer.start()

    def _model_changed(self, model, old) -> None:
        if model.state is LoadState.EMPTY and self.autoload:
            # The source changed (the session reset its status): read the new one.
            QTimer.singleShot(0, self.read_model)
        elif model.state is LoadState.READY and old.state is not LoadState.READY:
            self.read_dataset()

    def read_model(self) -> None:
        """Resolve the current model source and read its shape (a newer call wins)."""
        session = self.session
        source = session.recipe.model.source
        if session.model.source == source and session.model.state in (
            LoadState.READING,
            LoadState.READY,
        ):
            return
        if self._model_task is not None:
            self._model_task.cancel()
        session.model_reading(source, f"Reading {source}…")
        from studio.core.helper import read_model

        self._model_task = run_in_helper(
            read_model,
            source,
            on_result=lambda result: session.model_ready(source, *result),
            on_error=lambda exc, details: session.model_failed(
                source, str(exc) or type(exc).__name__, details
            ),
            on_progress=lambda message, fraction: self._model_progress(source, message, fraction),
            owner=self,
        )

    def _model_progress(self, source: str, message: str, fraction) -> None:
        if self.session.model.source == source and self.session.model.state is LoadState.READING:
            self.session.model_reading(source, _model_step(message), fraction)

    def read_dataset(self) -> None:
        """Render the dataset preview for the current settings (a newer call wins)."""
        session = self.session
        key = session.dataset_key()
        if key is None or (
            session.dataset.key == key and session.dataset.state is not LoadState.EMPTY
        ):
            return
        if self._dataset_task is not None:
            self._dataset_task.cancel()
        session.dataset_reading(key)
        section, model_path = key
        from studio.core.helper import preview_dataset

        self._dataset_task = run_in_helper(
            preview_dataset,
            section,
            model_path,
            on_result=lambda preview: session.dataset_ready(key, preview),
            on_error=lambda exc, details: session.dataset_failed(
                key, str(exc) or type(exc).__name__, details
            ),
            owner=self,
        )

    def cancel(self) -> None:
        """Drop pending results (the window is closing)."""
        for task in (self._model_task, self._dataset_task):
            if task is not None:
                task.cancel()


STEP_MESSAGES = {
    "converting": "Converting the model to a cached safetensors folder (once; ~20 s for the "
    "built-in model)",
}


def _model_step(message: str) -> str:
    return STEP_MESSAGES.get(message, message)
