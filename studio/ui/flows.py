"""The flows a person walks through the window's buttons and menus: start (resume or start
over, replace a bundle), pause, stop, close while a job runs, save and open a bundle.

The rules come from the core (`studio.core.engine.output` decides what a start may do with the
output folder, `studio.core.bundle` copies and reads bundles); this module asks the questions
and reports the outcome. Each question is a `QMessageBox` whose buttons carry object names, so
tests answer it by clicking, as a person does.
"""

from __future__ import annotations

import enum
import sys
from pathlib import Path

from PySide6.QtCore import QObject, Qt, QTimer
from PySide6.QtWidgets import QDialog, QFileDialog, QMessageBox

from studio import APP_NAME
from studio.core.phases import JobState


class FolderSaveDialog(QFileDialog):
    """Asks for a folder to save into, new or existing (an existing one is then replaced,
    after a question). Qt's save dialog opens a folder whose name is typed or selected instead
    of choosing it, so an existing folder could never be picked; this dialog picks it. Qt's
    own dialog, not the desktop's, so the choice behaves the same everywhere."""

    def __init__(self, parent, caption: str, suggested: str) -> None:
        super().__init__(parent, caption)
        self.setObjectName("folderSaveDialog")
        self.setOption(QFileDialog.Option.DontUseNativeDialog, True)
        self.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        self.setFileMode(QFileDialog.FileMode.AnyFile)
        self.setOption(QFileDialog.Option.DontConfirmOverwrite, True)  # asked after, by name
        suggested_path = Path(suggested)
        self.setDirectory(str(suggested_path.parent))
        self.selectFile(suggested_path.name)

    def accept(self) -> None:
        chosen = self.selectedFiles()
        here = Path(self.directory().absolutePath())
        if chosen and Path(chosen[0]).is_dir() and Path(chosen[0]) != here:
            QDialog.accept(self)  # choose the folder rather than open it
            return
        super().accept()


class CloseChoice(enum.Enum):
    STOP_WITH_CHECKPOINT = "stop"
    STOP_NOW = "kill"
    KEEP_RUNNING = "keep"


def _ask(parent, title: str, text: str, buttons, *, icon=QMessageBox.Icon.Question):
    """Show a question; ``buttons`` is [(label, role, object name, value)]; returns the value of
    the button clicked (the last one's when the box is closed otherwise)."""
    box = QMessageBox(icon, title, text, parent=parent)
    box.setObjectName("questionBox")
    made = []
    for label, role, name, value in buttons:
        button = box.addButton(label, role)
        button.setObjectName(name)
        made.append((button, value))
    box.setDefaultButton(made[0][0])
    box.setEscapeButton(made[-1][0])
    box.exec()
    clicked = box.clickedButton()
    return next((value for button, value in made if button is clicked), made[-1][1])


Role = QMessageBox.ButtonRole


class JobFlow(QObject):
    """Start, pause/resume, stop/kill and close-while-running for one window."""

    def __init__(self, window, session, controller) -> None:
        super().__init__(window)
        self.window = window
        self.session = session
        self.controller = controller
        self.close_after_job = False
        controller.jobEnded.connect(self._job_ended)

    def start(self) -> bool:
        """Start training the session's recipe, asking what to do with an earlier run's
        checkpoints or bundle; False when nothing was started."""
        from studio.core.engine import OutputLockedError, check_unlocked, inspect_output, preflight

        session = self.session
        if self.controller.is_active or session.start_blockers():
            return False
        recipe = session.recipe
        try:
            check_unlocked(recipe.output.dir)
        except OutputLockedError as exc:
            QMessageBox.warning(self.window, "The output folder is in use", str(exc))
            return False
        state = inspect_output(recipe.output.dir, hashes=False)  # never hash on the GUI thread
        resume = overwrite = False
        if state.resumable:
            step, path = state.latest_checkpoint
            answer = _ask(
                self.window,
                "Resume?",
                f"This run has a checkpoint at step {step} ({path}).\n"
                "Resume from it, or start over from step 0?",
                [
                    ("Resume", Role.AcceptRole, "resumeButton", True),
                    ("Start over", Role.DestructiveRole, "startOverButton", False),
                    ("Cancel", Role.RejectRole, "cancelButton", None),
                ],
            )
            if answer is None:
                return False
            resume, overwrite = answer, not answer
        if state.bundle_exists:
            what = "Resuming writes" if resume else "This run writes"
            if not _ask(
                self.window,
                "Replace the bundle?",
                f"{recipe.output.dir} already holds a bundle. {what} its bundle there when it "
                "ends. Replace the old one then?",
                [
                    ("Replace", Role.AcceptRole, "replaceButton", True),
                    ("Cancel", Role.RejectRole, "cancelButton", False),
                ],
            ):
                return False
            overwrite = True
        try:
            # The answers satisfy the start rule; the lock may have been taken meanwhile.
            preflight(recipe, resume=resume, overwrite=overwrite, check_model=False)
            self.controller.start(recipe, resume=resume, overwrite=overwrite)
        except Exception as exc:  # noqa: BLE001 - shown; the window stays usable
            QMessageBox.warning(self.window, "Could not start", f"{type(exc).__name__}: {exc}")
            return False
        return True

    def toggle_pause(self) -> None:
        if self.session.job.paused:
            self.controller.resume()
        else:
            self.controller.pause()

    def stop(self) -> None:
        """Stop after the current step; a second press (Kill) ends the process at once."""
        if self.session.job is JobState.STOPPING:
            self.controller.kill()
        else:
            self.controller.stop()

    def may_close(self) -> bool:
        """True when the window may close now; otherwise asks what to do with the running job
        and closes the window once it ended (if the person chose to stop it)."""
        if not self.controller.is_active:
            return True
        if self.close_after_job:
            return False
        choice = _ask(
            self.window,
            "A job is running",
            "Training is still running. Stop it after the current step (a checkpoint is kept "
            "and Start resumes it next time), stop it now (work since the last checkpoint is "
            "lost), or keep the window open and the job running?",
            [
                ("Stop with checkpoint and close", Role.AcceptRole, "stopAndCloseButton", 1),
                ("Stop now and close", Role.DestructiveRole, "killAndCloseButton", 2),
                ("Keep running", Role.RejectRole, "keepRunningButton", 3),
            ],
        )
        choice = {1: CloseChoice.STOP_WITH_CHECKPOINT, 2: CloseChoice.STOP_NOW}.get(
            choice, CloseChoice.KEEP_RUNNING
        )
        if choice is CloseChoice.KEEP_RUNNING:
            return False
        self.close_after_job = True
        if choice is CloseChoice.STOP_NOW:
            self.controller.kill()
        else:
            self.controller.stop()
        return False

    def _job_ended(self, _terminal) -> None:
        if self.close_after_job:
            self.close_after_job = False
            QTimer.singleShot(0, self.window.close)


class BundleFlow(QObject):
    """Save the session's bundle elsewhere; open a bundle from disk."""

    def __init__(self, window, session, *, on_opened=None) -> None:
        super().__init__(window)
        self.window = window
        self.session = session
        self.on_opened = on_opened
        self._exports: list = []

    def save(self, target: str | None = None) -> Path | None:
        """Copy the session's bundle to ``target`` (asked for when None), atomically."""
        source = self.session.bundle
        if not source:
            return None
        source = Path(source)
        if not target:
            dialog = FolderSaveDialog(
                self.window,
                "Save the adapter bundle as (a folder)",
                str(source.parent / f"{source.name}-copy"),
            )
            if not dialog.exec() or not dialog.selectedFiles():
                return None
            target = dialog.selectedFiles()[0]
        from studio.core.bundle import copy_bundle

        dest = Path(target).expanduser().absolute()
        overwrite = False
        if dest.exists() and dest.resolve() != source.resolve():
            overwrite = _ask(
                self.window,
                "Replace?",
                f"{dest} already exists. Replace it with this bundle?",
                [
                    ("Replace", Role.AcceptRole, "replaceButton", True),
                    ("Cancel", Role.RejectRole, "cancelButton", False),
                ],
            )
            if not overwrite:
                return None
        try:
            saved = copy_bundle(source, dest, overwrite=overwrite)
        except OSError as exc:
            QMessageBox.warning(
                self.window, "Could not save the bundle", f"{dest}: {exc.strerror or exc}"
            )
            return None
        self.window.statusBar().showMessage(f"Bundle saved to {saved}", 10000)
        return saved

    def export(self) -> None:
        """File ▸ Export bundle…: a merged model or a GGUF of the session's bundle."""
        if not self.session.bundle:
            return
        from studio.ui.export_dialog import ExportDialog

        dialog = ExportDialog(self.session.bundle, self.window)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self._exports.append(dialog)
        dialog.destroyed.connect(lambda: self._exports.remove(dialog))
        dialog.open()

    def shutdown(self) -> None:
        """Stop exports still running (the window is closing): no converter outlives it."""
        for dialog in list(self._exports):
            dialog.shutdown()

    def open(self, path: str | None = None) -> bool:
        """Open a finished bundle: its recipe's figures, its loss curve, and chat with it."""
        if not path:
            path = QFileDialog.getExistingDirectory(self.window, "Open an adapter bundle")
            if not path:
                return False
        from studio.core.bundle import BundleError, bundle_events, read_bundle

        try:
            info = read_bundle(path)
        except (BundleError, OSError, ValueError) as exc:
            QMessageBox.warning(self.window, "Not a bundle", str(exc))
            return False
        measured = (info.manifest.get("measured_peak") or {}).get("bytes")
        self.session.open_bundle(str(path), measured_peak=measured)
        if self.on_opened is not None:
            self.on_opened(bundle_events(info))
        self.window.statusBar().showMessage(f"Opened bundle {path}", 10000)
        return True


class RecipeFlow(QObject):
    """Open a recipe file into the session; save the session's recipe as a file."""

    def __init__(self, window, session) -> None:
        super().__init__(window)
        self.window = window
        self.session = session

    def open(self, path: str | None = None) -> bool:
        from studio.core.recipe import RecipeError, load_recipe

        if not path:
            path, _ = QFileDialog.getOpenFileName(
                self.window, "Open a recipe", "", "Recipes (*.toml)"
            )
            if not path:
                return False
        try:
            self.session.set_recipe(load_recipe(path))
        except RecipeError as exc:
            QMessageBox.warning(self.window, "Cannot open the recipe", str(exc))
            return False
        self.window.statusBar().showMessage(f"Opened {path}", 5000)
        return True

    def save_as(self, path: str | None = None) -> Path | None:
        from studio.core.recipe import save_recipe

        if not path:
            path, _ = QFileDialog.getSaveFileName(
                self.window, "Save the recipe", "recipe.toml", "Recipes (*.toml)"
            )
            if not path:
                return None
        try:
            saved = save_recipe(self.session.recipe, path)
        except OSError as exc:
            QMessageBox.warning(self.window, "Could not save the recipe", f"{path}: {exc}")
            return None
        self.window.statusBar().showMessage(f"Saved {saved}", 5000)
        return saved


def about(parent) -> None:
    """Help ▸ About."""
    from studio import __version__

    QMessageBox.about(
        parent,
        f"About {APP_NAME}",
        f"<b>{APP_NAME}</b> {__version__}<br>Point-and-click QLoRA fine-tuning with a memory "
        f"estimate you can check against the measured peak.<br>Python {sys.version.split()[0]}",
    )
