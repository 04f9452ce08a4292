"""The main window: settings on the left, the live estimate, the run bar and the plots on
the right. It edits one `Recipe`; Start hands that recipe to the engine.

Building the window imports neither torch nor transformers: the model's shape and the dataset
preview are read in the helper process once the window has painted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import QByteArray, Qt, QTimer
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from studio import APP_NAME
from studio.core.engine.checkpoints import checkpoints_dir, list_checkpoints
from studio.core.events import (
    CheckpointSaved,
    EvalLogged,
    Failed,
    Finished,
    LogMessage,
    Paused,
    PhaseChanged,
    Resumed,
    StepLogged,
    Stopped,
)
from studio.core.recipe import Recipe, RecipeError, load_recipe, recipe_to_toml, save_recipe
from studio.core.units import format_bytes
from studio.ui.chat_panel import ChatPanel
from studio.ui.dataset_panel import DatasetPanel
from studio.ui.estimate_widget import EstimatePanel
from studio.ui.hardware_panel import HardwarePanel
from studio.ui.job_controller import JobController
from studio.ui.model_panel import ModelPanel
from studio.ui.plots import LossPlot, VramPlot
from studio.ui.quant_panel import QuantPanel
from studio.ui.settings import open_settings
from studio.ui.status import FailurePanel, RunBar
from studio.ui.training_panel import TrainingPanel

SAMPLE_INTERVAL_MS = 500
REDRAW_INTERVAL_MS = 250
DEFAULT_RUNS_DIR = Path.home() / "qlora-studio" / "runs"


def checkpoints_of(output_dir: str) -> list[Path]:
    """The checkpoints the engine would resume a run from, oldest first."""
    return [path for _step, path in list_checkpoints(checkpoints_dir(output_dir))]


class MainWindow(QMainWindow):
    """QLoRA Studio's window. `recipe()` is what the settings say; `set_recipe` shows one."""

    def __init__(
        self,
        recipe: Recipe | None = None,
        *,
        restore: bool = True,
        autoload: bool = True,
        defer_plots: bool = False,
    ) -> None:
        super().__init__()
        self.setWindowTitle(APP_NAME)
        self.setObjectName("mainWindow")
        from studio.core.gpu import FakeGpuError, GpuDiscovery, discover_gpus

        discovery_error = None
        try:
            self.discovery = discover_gpus()
        except FakeGpuError as exc:
            discovery_error = str(exc)
            self.discovery = GpuDiscovery(gpus=(), reason=str(exc), source="none")
        self.device = None
        self.shape = None
        self.resolved_model = None
        self.estimate = None
        self.last_bundle: str | None = None
        self._autoload = autoload
        self._loaded_once = False
        self._close_after_job = False
        self._job_start = 0.0
        self._job_recipe: Recipe | None = None
        self._sampler = None
        self._psutil_proc = None

        self.hardware = HardwarePanel(self.discovery, discovery_error)
        self.model_panel = ModelPanel()
        self.quant = QuantPanel()
        self.training = TrainingPanel()
        self.dataset = DatasetPanel()
        self.estimate_panel = EstimatePanel()
        self.run_bar = RunBar()
        self.failure = FailurePanel()
        self.loss_plot = LossPlot()
        self.vram_plot = VramPlot()
        if not defer_plots:
            self.build_plots()  # else right after the first paint (`paintEvent`)
        self._painted = False
        self.chat = ChatPanel()
        self.log = QPlainTextEdit(objectName="logView")
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(5000)
        self.controller = JobController(self)

        settings_column = QWidget(objectName="settingsColumn")
        column = QVBoxLayout(settings_column)
        for w in (self.hardware, self.model_panel, self.quant, self.training, self.dataset):
            column.addWidget(w)
        column.addStretch(1)
        # Long combo items (GPU names, "auto (bfloat16)") must not widen the column past
        # the scroll area; the full text is in the popup and the tooltips.
        for combo in settings_column.findChildren(QComboBox):
            combo.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
            )
            combo.setMinimumContentsLength(12)
        scroll = QScrollArea(objectName="settingsScroll")
        scroll.setWidget(settings_column)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(420)
        self.settings_column = settings_column

        plots = QSplitter(Qt.Orientation.Vertical, objectName="plotSplitter")
        plots.addWidget(self.loss_plot.widget)
        plots.addWidget(self.vram_plot.widget)
        self.tabs = QTabWidget(objectName="mainTabs")
        self.tabs.addTab(plots, "Training")
        self.tabs.addTab(self.dataset.preview_widget, "Dataset preview")
        self.tabs.addTab(self.chat, "Chat")
        self.tabs.addTab(self.log, "Log")
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.addWidget(self.estimate_panel)
        right_layout.addWidget(self.run_bar)
        right_layout.addWidget(self.failure)
        right_layout.addWidget(self.tabs, 1)
        self.splitter = QSplitter(Qt.Orientation.Horizontal, objectName="mainSplitter")
        self.splitter.addWidget(scroll)
        self.splitter.addWidget(right)
        self.splitter.setStretchFactor(0, 0)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([460, 900])
        self.setCentralWidget(self.splitter)
        self.resize(1400, 900)
        self._build_menu()
        self.statusBar().showMessage("Ready.")

        self.hardware.deviceChanged.connect(self._device_changed)
        self.model_panel.sourceChanged.connect(self._model_source_changed)
        self.model_panel.modelReady.connect(self._model_ready)
        self.model_panel.modelFailed.connect(self._model_failed)
        for panel in (self.quant, self.training, self.dataset):
            panel.changed.connect(self.recompute)
        self.run_bar.start.clicked.connect(self.start_job)
        self.run_bar.pause.clicked.connect(self.toggle_pause)
        self.run_bar.stop.clicked.connect(self.stop_job)
        self.run_bar.save.clicked.connect(self.save_bundle)
        self.controller.eventReceived.connect(self._on_event)
        self.controller.jobEnded.connect(self._on_job_ended)
        self.controller.stateChanged.connect(self._on_state)

        self.redraw_timer = QTimer(self, interval=REDRAW_INTERVAL_MS)
        self.redraw_timer.timeout.connect(self._redraw)
        self.redraw_timer.start()
        self.sample_timer = QTimer(self, interval=SAMPLE_INTERVAL_MS)
        self.sample_timer.timeout.connect(self._sample)
        self.sample_timer.start()

        if recipe is None and restore:
            recipe = self._restored_recipe()
        self.set_recipe(recipe or Recipe(), load=False)
        if restore:
            self._restore_layout()

    # ----- recipe <-> widgets -------------------------------------------------------------

    def recipe(self) -> Recipe:
        """The recipe the settings describe (validated; raises `RecipeError`)."""
        recipe = Recipe(
            model=replace(self._recipe.model, source=self.model_panel.source()),
            quantization=self.quant.section(),
            lora=self.training.lora_section(),
            dataset=self.dataset.section(),
            training=self.training.training_section(self.hardware.device_request()),
            output=self.training.output_section(),
        )
        return recipe.validate()

    def set_recipe(self, recipe: Recipe, *, load: bool = True) -> None:
        """Show ``recipe`` in every panel; read the model's shape when ``load``."""
        out = Path(recipe.output.dir).expanduser()
        if not out.is_absolute():
            recipe = replace(
                recipe, output=replace(recipe.output, dir=str(DEFAULT_RUNS_DIR / out.name))
            )
        self._recipe = recipe
        self.hardware.set_device_request(recipe.training.device)
        self.quant.set_section(recipe.quantization)
        self.training.set_sections(recipe.lora, recipe.training, recipe.output)
        self.dataset.set_section(recipe.dataset)
        self.model_panel.set_source(recipe.model.source, load=load)
        self._device_changed(self.hardware.device_request())

    def _restored_recipe(self) -> Recipe | None:
        text = open_settings().value("recipe")
        if not text:
            return None
        try:
            import tomllib
        except ImportError:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        try:
            return Recipe.from_dict(tomllib.loads(str(text)))
        except (ValueError, RecipeError):
            return None

    def _restore_layout(self) -> None:
        settings = open_settings()
        geometry = settings.value("window/geometry")
        if isinstance(geometry, QByteArray):
            self.restoreGeometry(geometry)
        state = settings.value("window/state")
        if isinstance(state, QByteArray):
            self.restoreState(state)
        splitter = settings.value("window/splitter")
        if isinstance(splitter, QByteArray):
            self.splitter.restoreState(splitter)

    def save_settings(self) -> None:
        """Remember the recipe and the window layout (QSettings)."""
        settings = open_settings()
        with contextlib.suppress(RecipeError, ValueError):
            settings.setValue("recipe", recipe_to_toml(self.recipe()))
        settings.setValue("window/geometry", self.saveGeometry())
        settings.setValue("window/state", self.saveState())
        settings.setValue("window/splitter", self.splitter.saveState())
        settings.sync()

    # ----- start-up -----------------------------------------------------------------------

    def paintEvent(self, event) -> None:
        super().paintEvent(event)
        if not self._painted:
            self._painted = True
            QTimer.singleShot(0, self._after_first_paint)

    def _after_first_paint(self) -> None:
        """What would delay the first paint: pyqtgraph's import (deferred plots), then reading
        the model's shape (transformers and torch, imported in the helper process)."""
        self.build_plots()
        if self._autoload and not self._loaded_once:
            self._loaded_once = True
            QTimer.singleShot(50, self.model_panel.load)

    def build_plots(self) -> None:
        """Make the live plots' pyqtgraph widgets (after the first paint; idempotent)."""
        self.loss_plot.build()
        self.vram_plot.build()

    def load_model(self) -> None:
        """Read the current model source's shape now (in the background)."""
        self._loaded_once = True
        self.model_panel.load()

    # ----- live estimate ------------------------------------------------------------------

    def _device_changed(self, request: str) -> None:
        from studio.core.quant import QuantError, resolve_device

        try:
            self.device = resolve_device(request, self.discovery)
        except QuantError as exc:
            self.estimate_panel.show_message(str(exc))
            return
        self.quant.set_device(self.device, emit=False)
        self.chat.device = request
        self._sampler_for_device()
        self.recompute()

    def _model_source_changed(self, _source: str) -> None:
        self.shape = None
        self.resolved_model = None
        self.estimate_panel.show_message("Reading the model's shape…")

    def _model_ready(self, resolved, shape) -> None:
        self.resolved_model, self.shape = resolved, shape
        self.dataset.set_model_path(str(resolved.path))
        self.recompute()

    def _model_failed(self, message: str) -> None:
        self.estimate_panel.show_message(f"No estimate: {message}")

    def recompute(self) -> None:
        """Estimate the memory of the current settings (cheap once the shape is read)."""
        if self.shape is None or self.device is None:
            if self.shape is None:
                self.estimate_panel.show_message("Reading the model's shape…")
            return
        try:
            recipe = self.recipe()
        except (RecipeError, ValueError) as exc:
            self.estimate_panel.show_message(f"No estimate: {exc}")
            return
        from studio.core.memory import estimate

        try:
            est = estimate(self.shape, recipe, self.device)
        except ValueError as exc:
            self.estimate_panel.show_message(f"No estimate: {exc}")
            return
        self.estimate = est
        self.estimate_panel.set_estimate(est)
        if not self.controller.is_active:
            self._plot_reference_lines()

    def _plot_reference_lines(self) -> None:
        """The estimate and (on a GPU) the capacity as lines on the memory plot. On the CPU
        the capacity is the whole RAM, which would flatten every other line."""
        est = self.estimate
        self.vram_plot.set_estimate(est.total_bytes if est else None)
        on_gpu = self.device is not None and self.device.gpu is not None
        self.vram_plot.set_capacity(est.capacity_bytes if (est and on_gpu) else None)

    # ----- sampling and redraw ------------------------------------------------------------

    def _sampler_for_device(self) -> None:
        gpu = self.device.gpu if self.device is not None else None
        if gpu is not None and self._sampler is None:
            from studio.core.gpu import GpuSampler

            try:
                self._sampler = GpuSampler()
            except Exception as exc:  # noqa: BLE001 - live readings are optional
                self.log.appendPlainText(f"GPU readings unavailable: {exc}")
                self._sampler = None
        cpu = self.device is None or self.device.torch_device == "cpu"
        self.vram_plot.set_cpu_mode(cpu)

    def _sample(self) -> None:
        pid = self.controller.pid if self.controller.is_active else None
        t = time.monotonic() - self._job_start
        gpu = self.device.gpu if self.device is not None else None
        sample = None
        if gpu is not None and self._sampler is not None:
            try:
                sample = self._sampler.sample(gpu.index, pid)
            except Exception:  # noqa: BLE001 - a missed reading is not an error
                sample = None
            self.hardware.show_sample(sample)
        cpu_run = self.device is None or self.device.torch_device == "cpu"
        rss = self._process_rss(pid) if (pid and cpu_run) else None
        if gpu is None:
            import psutil

            self.hardware.show_cpu_reading(rss, psutil.cpu_percent(None))
        if pid is None:
            return
        if cpu_run:
            self.vram_plot.add_device(t, None, rss)
        elif sample is not None:
            self.vram_plot.add_device(t, sample.memory_used_bytes, sample.process_memory_bytes)

    def _process_rss(self, pid: int) -> int | None:
        import psutil

        try:
            if self._psutil_proc is None or self._psutil_proc.pid != pid:
                self._psutil_proc = psutil.Process(pid)
            proc = self._psutil_proc
            total = proc.memory_info().rss
            for child in proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
            return total
        except psutil.Error:
            return None

    def _redraw(self) -> None:
        self.loss_plot.refresh()
        self.vram_plot.refresh()

    # ----- the job ------------------------------------------------------------------------

    def start_job(self) -> bool:
        """Start training the current recipe; False when nothing was started."""
        if self.controller.is_active:
            return False
        try:
            recipe = self.recipe()
        except (RecipeError, ValueError) as exc:
            QMessageBox.warning(self, "Cannot start", str(exc))
            return False
        resume = overwrite = False
        checkpoints = checkpoints_of(recipe.output.dir)
        if checkpoints:
            answer = self.ask_resume(checkpoints[-1])
            if answer is None:
                return False
            resume = answer
        if not resume and Path(recipe.output.dir).exists():
            if not self.ask_replace(recipe.output.dir):
                return False
            overwrite = True
        if not resume and checkpoints:
            overwrite = True
        self.failure.hide()
        self.build_plots()
        self.loss_plot.clear() if not resume else None
        self.vram_plot.clear()
        self.estimate_panel.set_measured_peak(None, None)
        self._plot_reference_lines()
        self.last_bundle = None
        self.run_bar.save.setEnabled(False)
        self._job_recipe = recipe
        self._job_start = time.monotonic()
        self.run_bar.show_phase("starting", "launching the training process", None)
        self.log.appendPlainText(
            f"Starting {'(resuming) ' if resume else ''}{recipe.model.source} -> {recipe.output.dir}"
        )
        self.tabs.setCurrentIndex(0)
        try:
            self.controller.start(recipe, resume=resume, overwrite=overwrite)
        except Exception as exc:  # noqa: BLE001 - shown, the window stays usable
            self.failure.show_failure("starting", type(exc).__name__, str(exc), "")
            return False
        return True

    def ask_resume(self, checkpoint: Path) -> bool | None:
        """True: resume from ``checkpoint``; False: start over; None: cancel."""
        box = QMessageBox(
            QMessageBox.Icon.Question,
            "Resume?",
            f"This run has a checkpoint at step {checkpoint.name.split('-')[-1]} "
            f"({checkpoint}).\nResume from it, or start over?",
            parent=self,
        )
        resume = box.addButton("Resume", QMessageBox.ButtonRole.AcceptRole)
        over = box.addButton("Start over", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        clicked = box.clickedButton()
        return True if clicked is resume else False if clicked is over else None

    def ask_replace(self, folder: str) -> bool:
        answer = QMessageBox.question(
            self,
            "Replace the bundle?",
            f"{folder} already exists. Replace it with this run's bundle when the run ends?",
        )
        return answer == QMessageBox.StandardButton.Yes

    def toggle_pause(self) -> None:
        if self.controller.state in ("paused", "pausing"):
            self.controller.resume()
        else:
            self.controller.pause()

    def stop_job(self) -> None:
        if self.controller.state == "stopping":
            self.controller.kill()
            self.log.appendPlainText("Killed the training process.")
        else:
            self.controller.stop()
            self.run_bar.phase.setText("Stopping after the current step…")

    def _on_state(self, state: str) -> None:
        self.run_bar.set_state(state)
        for panel in (self.model_panel, self.quant, self.training, self.dataset):
            panel.setEnabled(state == "idle")
        self.hardware.combo.setEnabled(state == "idle")
        if state == "paused":
            self.run_bar.phase.setText("<b>Paused</b> — Resume continues, Stop keeps a checkpoint.")

    def _on_event(self, ev) -> None:
        if isinstance(ev, StepLogged):
            self.loss_plot.add_step(ev.step, ev.loss)
            t = time.monotonic() - self._job_start
            self.vram_plot.add_torch(t, ev.cuda_allocated_bytes, ev.cuda_reserved_bytes)
            self.run_bar.show_step(ev)
            if self.controller.state == "running":
                self.run_bar.show_training()
            self.statusBar().showMessage(self.run_bar.status.text())
        elif isinstance(ev, PhaseChanged):
            self.run_bar.show_phase(ev.phase, ev.message, ev.progress)
            self.statusBar().showMessage(
                self.run_bar.phase.text().replace("<b>", "").replace("</b>", "")
            )
        elif isinstance(ev, EvalLogged):
            self.loss_plot.add_eval(ev.step, ev.eval_loss)
            self.log.appendPlainText(f"step {ev.step}: eval loss {ev.eval_loss:.4f}")
        elif isinstance(ev, CheckpointSaved):
            self.log.appendPlainText(f"step {ev.step}: checkpoint saved to {ev.path}")
        elif isinstance(ev, Paused):
            self.log.appendPlainText(f"Paused after step {ev.step}.")
        elif isinstance(ev, Resumed):
            self.log.appendPlainText(f"Resumed at step {ev.step}.")
        elif isinstance(ev, LogMessage):
            self.log.appendPlainText(f"[{ev.level}] {ev.message}")

    def _on_job_ended(self, ev) -> None:
        if isinstance(ev, Finished):
            self.last_bundle = ev.bundle_dir
            self.run_bar.save.setEnabled(True)
            self.estimate_panel.set_measured_peak(ev.peak_bytes, ev.estimate_bytes)
            loss = f", final loss {ev.final_loss:.4f}" if ev.final_loss is not None else ""
            self.run_bar.show_done(
                f"<b>Finished</b> at step {ev.step}{loss}. Bundle: {ev.bundle_dir} · measured "
                f"peak {format_bytes(ev.peak_bytes)} vs estimate {format_bytes(ev.estimate_bytes)}"
            )
            self.log.appendPlainText(f"Finished: bundle at {ev.bundle_dir}")
            self.chat.set_bundle(ev.bundle_dir)
        elif isinstance(ev, Stopped):
            where = f"; checkpoint {ev.checkpoint}" if ev.checkpoint else "; no checkpoint yet"
            self.run_bar.show_done(f"<b>Stopped</b> at step {ev.step}{where}. Start resumes.", None)
            self.log.appendPlainText(f"Stopped at step {ev.step}{where}")
        elif isinstance(ev, Failed):
            self.run_bar.show_done(f"<b>Failed</b> while {ev.phase}.", 0)
            self.failure.show_failure(ev.phase, ev.error_type, ev.message, ev.details)
            self.log.appendPlainText(f"Failed ({ev.phase}, {ev.error_type}): {ev.message}")
        self._redraw()
        if self._close_after_job:
            self._close_after_job = False
            QTimer.singleShot(0, self.close)

    # ----- bundles and recipes ------------------------------------------------------------

    def save_bundle(self, target: str | None = None) -> Path | None:
        """Copy the finished bundle to ``target`` (asked for when None), atomically."""
        if not self.last_bundle:
            return None
        source = Path(self.last_bundle)
        if target is None:
            target, _ = QFileDialog.getSaveFileName(
                self,
                "Save the adapter bundle as (a folder)",
                str(source.parent / f"{source.name}-copy"),
            )
            if not target:
                return None
        dest = Path(target).expanduser().absolute()
        if dest.resolve() == source.resolve():
            return dest
        if dest.exists():
            answer = QMessageBox.question(
                self, "Replace?", f"{dest} already exists. Replace it with this bundle?"
            )
            if answer != QMessageBox.StandardButton.Yes:
                return None
        from studio.core.atomic import replace_dir, temporary_sibling_dir

        tmp = temporary_sibling_dir(dest)
        try:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
            replace_dir(tmp, dest, overwrite=True)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            QMessageBox.warning(self, "Could not save the bundle", str(exc))
            return None
        self.statusBar().showMessage(f"Bundle saved to {dest}", 10000)
        self.log.appendPlainText(f"Bundle saved to {dest}")
        return dest

    def open_bundle(self, path: str | None = None) -> bool:
        """Open a finished bundle: show its recipe, its loss curve, and chat with it."""
        if path is None:
            path = QFileDialog.getExistingDirectory(self, "Open an adapter bundle")
            if not path:
                return False
        from studio.core.bundle import BundleError, read_bundle

        try:
            info = read_bundle(path)
        except (BundleError, OSError, ValueError) as exc:
            QMessageBox.warning(self, "Not a bundle", str(exc))
            return False
        self.last_bundle = str(path)
        self.run_bar.save.setEnabled(True)
        self.chat.set_bundle(str(path))
        self.loss_plot.clear()
        for row in getattr(info, "metrics", None) or ():
            row = row if isinstance(row, dict) else getattr(row, "__dict__", {})
            if row.get("type", "StepLogged") == "StepLogged" and "loss" in row:
                self.loss_plot.add_step(int(row["step"]), float(row["loss"]))
            elif row.get("type") == "EvalLogged":
                self.loss_plot.add_eval(int(row["step"]), float(row["eval_loss"]))
        self._redraw()
        measured = info.manifest.get("measured_peak") or {}
        estimated = info.manifest.get("estimate") or {}
        self.estimate_panel.set_measured_peak(measured.get("bytes"), estimated.get("total_bytes"))
        self.run_bar.show_done(f"Opened bundle {path}")
        self.tabs.setCurrentWidget(self.chat)
        return True

    def open_recipe(self, path: str | None = None) -> bool:
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Open a recipe", "", "Recipes (*.toml)")
            if not path:
                return False
        try:
            recipe = load_recipe(path)
        except RecipeError as exc:
            QMessageBox.warning(self, "Cannot open the recipe", str(exc))
            return False
        self.set_recipe(recipe, load=True)
        self.statusBar().showMessage(f"Opened {path}", 5000)
        return True

    def save_recipe_as(self, path: str | None = None) -> Path | None:
        try:
            recipe = self.recipe()
        except (RecipeError, ValueError) as exc:
            QMessageBox.warning(self, "Cannot save the recipe", str(exc))
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(
                self, "Save the recipe", "recipe.toml", "Recipes (*.toml)"
            )
            if not path:
                return None
        saved = save_recipe(recipe, path)
        self.statusBar().showMessage(f"Saved {saved}", 5000)
        return saved

    def _build_menu(self) -> None:
        file = self.menuBar().addMenu("&File")

        def add(menu, text, slot, shortcut=None, name=None):
            action = QAction(text, self)
            if shortcut:
                action.setShortcut(shortcut)
            if name:
                action.setObjectName(name)
            action.triggered.connect(lambda _checked=False: slot())
            menu.addAction(action)
            return action

        add(
            file,
            "&Open recipe…",
            self.open_recipe,
            QKeySequence.StandardKey.Open,
            "openRecipeAction",
        )
        add(
            file,
            "&Save recipe as…",
            self.save_recipe_as,
            QKeySequence.StandardKey.Save,
            "saveRecipeAction",
        )
        file.addSeparator()
        add(file, "Open &bundle…", self.open_bundle, None, "openBundleAction")
        add(file, "Save b&undle as…", self.save_bundle, None, "saveBundleAction")
        file.addSeparator()
        add(file, "&Quit", self.close, QKeySequence.StandardKey.Quit, "quitAction")
        help_menu = self.menuBar().addMenu("&Help")
        add(help_menu, "&About", self._about)

    def _about(self) -> None:
        from studio import __version__

        QMessageBox.about(
            self,
            f"About {APP_NAME}",
            f"<b>{APP_NAME}</b> {__version__}<br>Point-and-click QLoRA fine-tuning with a memory "
            f"estimate you can check against the measured peak.<br>Python {sys.version.split()[0]}",
        )

    # ----- closing ------------------------------------------------------------------------

    def ask_close_while_running(self) -> bool:
        """True: stop the job with a checkpoint, then close; False: keep the window open."""
        box = QMessageBox(
            QMessageBox.Icon.Question,
            "A job is running",
            "Training is still running. Stop it after the current step (a checkpoint is kept "
            "and Start resumes it later), then close? Or keep the window open and the job "
            "running.",
            parent=self,
        )
        stop = box.addButton("Stop with checkpoint and close", QMessageBox.ButtonRole.AcceptRole)
        box.addButton("Keep running", QMessageBox.ButtonRole.RejectRole)
        box.exec()
        return box.clickedButton() is stop

    def closeEvent(self, event) -> None:
        if self.controller.is_active:
            event.ignore()
            if self._close_after_job:
                return
            if self.ask_close_while_running():
                self._close_after_job = True
                self.controller.stop()
                self.run_bar.phase.setText("Stopping after the current step, then closing…")
            return
        self.save_settings()
        self.sample_timer.stop()
        self.redraw_timer.stop()
        self.chat.shutdown()
        if self._sampler is not None:
            with contextlib.suppress(Exception):  # closing NVML is best effort
                self._sampler.close()
            self._sampler = None
        super().closeEvent(event)


def default_output_dir() -> str:
    return os.fspath(DEFAULT_RUNS_DIR / "smollm2-sample")
