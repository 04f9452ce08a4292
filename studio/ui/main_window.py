"""The main window: settings on the left, the live estimate, the run bar and the plots on the
right. It lays out the panels and wires the menus; the state they show is the session's
(`studio.core.session.Session`), the flows are `studio.ui.flows`, the live plots
`studio.ui.live`, the background reading `studio.ui.readers`.

Building the window imports neither torch nor transformers: the model's shape and the dataset
preview are read in the helper process once the window has painted.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from PySide6.QtCore import QByteArray, Qt, QTimer
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QLabel,
    QMainWindow,
    QPlainTextEdit,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from studio import APP_NAME
from studio.ui.binding import EvenSplitter
from studio.ui.menus import build_menus
from studio.ui.settings import (
    default_recipe,
    open_settings,
    remember_recipe,
    restored_recipe,
    with_runs_dir,
)

if TYPE_CHECKING:
    from studio.core.recipe import Recipe

DEFAULT_SIZE = (1400, 900)
SCREEN_MARGIN = 40  # keep the window this far inside the screen's available area


class MainWindow(QMainWindow):
    """QLoRA Studio's window over one `Session` (``window.session``)."""

    def __init__(
        self,
        recipe: Recipe | None = None,
        *,
        restore: bool = True,
        autoload: bool = True,
        defer_build: bool = False,
    ) -> None:
        super().__init__()
        self.setWindowTitle(APP_NAME)
        self.setObjectName("mainWindow")
        self.resize(*self._start_size())
        self._options = (recipe, restore)
        self._autoload = autoload
        self._painted = False
        self.session = None
        if restore:
            geometry = open_settings().value("window/geometry")
            if isinstance(geometry, QByteArray):
                self.restoreGeometry(geometry)
        if defer_build:
            # `qlora-studio` paints this frame at once and builds the panels (their imports
            # take longer than starting PySide6 itself) right after the first paint.
            self.setCentralWidget(
                QLabel("Starting QLoRA Studio…", alignment=Qt.AlignmentFlag.AlignCenter)
            )
        else:
            self.build()

    def build(self) -> None:
        """Make the session, the panels, the plots and the menus (once)."""
        if self.session is not None:
            return
        from studio.core.session import Session
        from studio.ui.chat_panel import ChatPanel
        from studio.ui.dataset_panel import DatasetPanel
        from studio.ui.estimate_widget import EstimatePanel
        from studio.ui.flows import BundleFlow, JobFlow, RecipeFlow
        from studio.ui.hardware_panel import HardwarePanel
        from studio.ui.job_controller import JobController
        from studio.ui.live import LiveView
        from studio.ui.model_panel import ModelPanel
        from studio.ui.plots import LossPlot, LrPlot, VramPlot
        from studio.ui.quant_panel import QuantPanel
        from studio.ui.readers import SessionReaders
        from studio.ui.runs_view import RunsView
        from studio.ui.status import FailurePanel, RunBar
        from studio.ui.training_panel import TrainingPanel

        recipe, restore = self._options
        if recipe is None and restore:
            recipe = restored_recipe()
        self.session = session = Session.create(with_runs_dir(recipe or default_recipe()))
        self.readers = SessionReaders(session, autoload=False, parent=self)
        report = self._report_edit_error
        self.hardware = HardwarePanel(session)
        self.model_panel = ModelPanel(session, on_error=report)
        self.quant = QuantPanel(session, on_error=report)
        self.training = TrainingPanel(session, on_error=report)
        self.dataset = DatasetPanel(session, on_error=report)
        self.estimate_panel = EstimatePanel(session)
        self.run_bar = RunBar(session)
        self.failure = FailurePanel(session)
        self.loss_plot, self.lr_plot, self.vram_plot = LossPlot(), LrPlot(), VramPlot()
        self.chat = ChatPanel(session)
        self.log = QPlainTextEdit(objectName="logView", readOnly=True)
        self.log.setMaximumBlockCount(5000)
        self.controller = JobController(session, self)
        self.live = LiveView(
            session,
            self.controller,
            loss_plot=self.loss_plot,
            lr_plot=self.lr_plot,
            vram_plot=self.vram_plot,
            log=self.log,
            hardware=self.hardware,
        )
        self.jobs = JobFlow(self, session, self.controller)
        self.recipes = RecipeFlow(self, session)
        self.bundles = BundleFlow(self, session, on_opened=self._bundle_opened)
        self.runs_view = RunsView(self)
        self._lay_out()
        build_menus(self)
        self.statusBar().showMessage("Ready.")
        self.run_bar.start.clicked.connect(lambda: self.jobs.start())
        self.run_bar.pause.clicked.connect(lambda: self.jobs.toggle_pause())
        self.run_bar.stop.clicked.connect(lambda: self.jobs.stop())
        self.run_bar.save.clicked.connect(lambda: self.bundles.save())
        self.controller.jobEnded.connect(self._job_ended)
        # The running job has its own copy of the recipe: edits would not reach it. (The
        # hardware panel's live readings stay lit; only its device choice is locked.)
        editors = (self.model_panel, self.quant, self.training, self.dataset, self.hardware.combo)

        def lock(state, old) -> None:
            for editor in editors:
                editor.setEnabled(not state.active)
            if state.active and not old.active:
                self.statusBar().clearMessage()  # the last job's outcome

        session.events.job.connect(lock)
        if restore:
            self._restore_layout()
        if self._painted:  # a deferred build: keep each event-loop turn short
            self.live.build_plots_soon()
        else:
            self.live.build_plots()

    # ----- layout ---------------------------------------------------------------------
    def _lay_out(self) -> None:
        column = QWidget(objectName="settingsColumn")
        layout = QVBoxLayout(column)
        for w in (self.hardware, self.model_panel, self.quant, self.training, self.dataset):
            layout.addWidget(w)
        layout.addStretch(1)
        scroll = QScrollArea(objectName="settingsScroll")
        scroll.setWidget(column)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(340)
        self.settings_column = column

        # Loss on top; learning rate and memory side by side below, so each plot keeps a
        # readable height on a 768-pixel screen.
        plots = QSplitter(Qt.Orientation.Vertical, objectName="plotSplitter")
        plots.addWidget(self.loss_plot.widget)
        # Half each: the memory plot's legend and lines need the room.
        lower = EvenSplitter(Qt.Orientation.Horizontal, objectName="lowerPlotSplitter")
        lower.addWidget(self.lr_plot.widget)
        lower.addWidget(self.vram_plot.widget)
        plots.addWidget(lower)
        self.tabs = QTabWidget(objectName="mainTabs")
        self.tabs.addTab(plots, "Training")
        self.tabs.addTab(self.dataset.preview_widget, "Dataset preview")
        self.tabs.addTab(self.chat, "Chat")
        self.tabs.addTab(self.runs_view, "Runs")
        self.tabs.addTab(self.log, "Log")
        right = QWidget()
        right_layout = QVBoxLayout(right)
        for widget in (self.estimate_panel, self.run_bar, self.failure):
            right_layout.addWidget(widget)
        right_layout.addWidget(self.tabs, 1)
        self.splitter = QSplitter(Qt.Orientation.Horizontal, objectName="mainSplitter")
        self.splitter.addWidget(scroll)
        self.splitter.addWidget(right)
        self.splitter.setStretchFactor(0, 0)
        self.splitter.setStretchFactor(1, 1)
        self.setCentralWidget(self.splitter)
        width = self.width()
        self.splitter.setSizes([min(460, width // 3), width - min(460, width // 3)])

    def _start_size(self) -> tuple[int, int]:
        """The default size, shrunk to fit the screen (a 1366×768 laptop included)."""
        screen = QGuiApplication.primaryScreen()
        if screen is None:
            return DEFAULT_SIZE
        area = screen.availableGeometry()
        return (
            min(DEFAULT_SIZE[0], area.width() - SCREEN_MARGIN),
            min(DEFAULT_SIZE[1], area.height() - SCREEN_MARGIN),
        )

    def _restore_layout(self) -> None:
        settings = open_settings()
        for key, restore in (
            ("window/state", self.restoreState),
            ("window/splitter", self.splitter.restoreState),
        ):
            value = settings.value(key)
            if isinstance(value, QByteArray):
                restore(value)

    def save_settings(self) -> None:
        """Remember the recipe and the window layout (QSettings)."""
        remember_recipe(self.session.recipe)
        settings = open_settings()
        settings.setValue("window/geometry", self.saveGeometry())
        settings.setValue("window/state", self.saveState())
        settings.setValue("window/splitter", self.splitter.saveState())
        settings.sync()

    # ----- start-up -------------------------------------------------------------------
    def paintEvent(self, event) -> None:
        super().paintEvent(event)
        if not self._painted:
            self._painted = True
            QTimer.singleShot(0, self._after_first_paint)

    def _after_first_paint(self) -> None:
        """What would delay the first paint: the panels and pyqtgraph (a deferred build: their
        modules are imported on a worker thread, then the panels are built and the plots one
        per event-loop turn), then reading the model's shape (transformers and torch, in the
        helper process)."""
        if self.session is not None:
            self._after_build()
            return
        from studio.ui.deferred import WINDOW_MODULES, import_then

        import_then(self, WINDOW_MODULES, self._after_build)

    def _after_build(self) -> None:
        self.build()
        if self._autoload:
            self.readers.autoload = True
            QTimer.singleShot(50, self.readers.read_model)

    def load_model(self) -> None:
        """Read the model source's shape now, and follow later changes of it."""
        self.readers.autoload = True
        self.readers.read_model()

    # ----- reactions ------------------------------------------------------------------
    def _report_edit_error(self, message: str) -> None:
        self.statusBar().showMessage(f"Not changed: {message}", 15000)

    def _job_ended(self, _terminal) -> None:
        from studio.ui.status import outcome_line

        line = outcome_line(self.session.run.outcome)
        self.statusBar().showMessage(line)
        self.log.appendPlainText(line)

    def _bundle_opened(self, events) -> None:
        self.live.show_history(events)
        self.tabs.setCurrentWidget(self.chat)

    # ----- closing --------------------------------------------------------------------
    def closeEvent(self, event) -> None:
        if self.session is None:  # closed before the deferred build
            super().closeEvent(event)
            return
        if not self.jobs.may_close():
            event.ignore()
            return
        self.save_settings()
        self.live.close()
        self.readers.cancel()
        self.chat.shutdown()
        self.bundles.shutdown()
        with contextlib.suppress(RuntimeError):
            self.controller.shutdown()
        super().closeEvent(event)
