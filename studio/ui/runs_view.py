"""The Runs tab: every past run at hand (`studio.core.runs`), and two or more compared.

The table lists the run library (name, date, model, quantization, rank, steps, final training
and evaluation loss, estimate, measured peak, duration, status); a filter field and the column
headers filter and sort it (`QSortFilterProxyModel`). The buttons and the table's context menu
act on the selected runs: open the bundle (its curves in the Training tab), resume a stopped
run, chat with a bundle, export it, use a run's recipe as the starting point, delete runs (to
the trash, after a question). Selecting two or more runs compares them below the table: their
loss and evaluation curves overlaid (x by step, tokens seen or training time), their memory
curves with each run's estimate as a dashed line, and the recipe keys that differ.

The window is reached through its public parts only: ``session`` (`Session.set_recipe`),
``bundles`` (`flows.BundleFlow.open`), ``jobs`` (`flows.JobFlow.start`, which asks Resume or
Start over itself), ``controller`` (refresh when a job ends) and ``tabs``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
from pathlib import Path

from PySide6.QtCore import QSortFilterProxyModel, Qt, QTimer
from PySide6.QtGui import QAction, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QMessageBox,
    QPushButton,
    QSplitter,
    QTableView,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from studio.core.phases import RunState
from studio.core.units import format_bytes, format_duration

SORT_ROLE = Qt.ItemDataRole.UserRole + 1
PATH_ROLE = Qt.ItemDataRole.UserRole + 2
COLUMNS = (
    "Name",
    "Date",
    "Model",
    "Quantization",
    "Rank",
    "Steps",
    "Train loss",
    "Eval loss",
    "Estimate",
    "Peak",
    "Duration",
    "Status",
)
# Run colours in the comparison (the bundle PNGs' palette: apart for common colour-vision
# deficiencies).
COLOURS = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#56b4e9", "#e69f00", "#000000")
EXPORT_MODULE = "studio.ui.export_dialog"


def _export_available() -> bool:
    with contextlib.suppress(ImportError, ValueError):
        return importlib.util.find_spec(EXPORT_MODULE) is not None
    return False


def _cells(run) -> list[tuple[str, object]]:
    """(text, sort key) per column for ``run`` (a `RunSummary`)."""
    from studio.core.runs import finite

    def loss(value):
        return (f"{float(value):.4f}", float(value)) if finite(value) else ("—", float("inf"))

    def size(value):
        return (format_bytes(value), int(value)) if value else ("—", -1)

    started = run.started
    date = dt.datetime.fromtimestamp(started).strftime("%Y-%m-%d %H:%M") if started else "—"
    model = str(run.model or "—")
    if "/" in model and Path(model).is_absolute():
        model = Path(model).name
    steps = run.steps
    steps_text = f"{steps}/{run.max_steps}" if steps and run.max_steps else str(steps or "—")
    duration = run.duration_s
    return [
        (run.name, run.name.lower()),
        (date, started or 0.0),
        (model, model.lower()),
        (run.quantization or "—", run.quantization or ""),
        (str(run.rank) if run.rank is not None else "—", run.rank or 0),
        (steps_text, steps or 0),
        loss(run.final_loss),
        loss(run.final_eval_loss),
        size(run.estimate_bytes),
        size(run.peak_bytes),
        (format_duration(duration) if duration is not None else "—", duration or 0.0),
        (run.status_text, run.status_text),
    ]


class RunsView(QWidget):
    """The Runs tab of ``window`` (a `MainWindow`)."""

    def __init__(self, window, parent=None) -> None:
        super().__init__(parent)
        self.setObjectName("runsView")
        self.window = window
        self.runs: dict[str, object] = {}  # path -> RunSummary
        self._waiting = False  # a resume waits for the model to be read
        self.filter_edit = QLineEdit(objectName="runsFilterEdit")
        self.filter_edit.setPlaceholderText("Filter runs (name, model, status…)")
        self.filter_edit.setClearButtonEnabled(True)
        self.refresh_button = QPushButton("Refresh", objectName="runsRefreshButton")
        self.add_button = QPushButton("Add bundle…", objectName="runsAddButton")
        self.add_button.setToolTip("Add a bundle or run folder made elsewhere to the list")

        self.model = QStandardItemModel(0, len(COLUMNS), self)
        self.model.setHorizontalHeaderLabels(COLUMNS)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setFilterKeyColumn(-1)
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.proxy.setSortRole(SORT_ROLE)
        self.table = QTableView(objectName="runsTable")
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(1, Qt.SortOrder.DescendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        # Model sources can be long paths or hub ids: a fixed width, the rest in the tooltip.
        model_column = COLUMNS.index("Model")
        header.setSectionResizeMode(model_column, QHeaderView.ResizeMode.Interactive)
        self.table.setColumnWidth(model_column, 180)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.table.setWordWrap(False)

        self.actions: dict[str, QAction] = {}
        self.buttons: dict[str, QPushButton] = {}
        buttons = QHBoxLayout()
        for key, text, slot in (
            ("open", "Open", self.open_selected),
            ("resume", "Resume", self.resume_selected),
            ("chat", "Chat", self.chat_selected),
            ("export", "Export…", self.export_selected),
            ("recipe", "Use recipe", self.use_recipe_selected),
            ("delete", "Delete…", self.delete_selected),
        ):
            action = QAction(text, self, objectName=f"runs{key.capitalize()}Action")
            action.triggered.connect(lambda _checked=False, slot=slot: slot())
            button = QPushButton(text, objectName=f"runs{key.capitalize()}Button")
            button.clicked.connect(lambda _checked=False, slot=slot: slot())
            self.actions[key], self.buttons[key] = action, button
            buttons.addWidget(button)
        buttons.addStretch(1)
        self.hint = QLabel(objectName="runsHintLabel")
        self.hint.setWordWrap(True)

        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(self.filter_edit, 1)
        row.addWidget(self.refresh_button)
        row.addWidget(self.add_button)
        top_layout.addLayout(row)
        top_layout.addWidget(self.table, 1)
        top_layout.addLayout(buttons)
        top_layout.addWidget(self.hint)
        self.compare = CompareView()
        self.splitter = QSplitter(Qt.Orientation.Vertical, objectName="runsSplitter")
        self.splitter.addWidget(top)
        self.splitter.addWidget(self.compare)
        self.splitter.setStretchFactor(0, 2)
        self.splitter.setStretchFactor(1, 3)
        layout = QVBoxLayout(self)
        layout.addWidget(self.splitter)

        self.filter_edit.textChanged.connect(self.proxy.setFilterFixedString)
        self.refresh_button.clicked.connect(lambda: self.refresh())
        self.add_button.clicked.connect(lambda: self.add_folder())
        self.table.selectionModel().selectionChanged.connect(lambda *_: self._selection_changed())
        self.table.customContextMenuRequested.connect(self._context_menu)
        self.table.doubleClicked.connect(lambda _index: self.open_selected())
        controller = getattr(window, "controller", None)
        if controller is not None:
            # The engine writes the run's status at the end; show it when the job is over.
            controller.jobEnded.connect(lambda _event: QTimer.singleShot(0, self.refresh))
            window.session.events.job.connect(lambda _state: self._update_actions())
        self._selection_changed()

    # ------------------------------------------------------------------------- reading
    def refresh(self) -> None:
        """Read the library again, keeping the selection."""
        from studio.core.runs import list_runs

        chosen = {str(r.path) for r in self.selected_runs()}
        runs = list_runs()
        self.runs = {str(r.path): r for r in runs}
        self.model.removeRows(0, self.model.rowCount())
        for run in runs:
            items = []
            for text, key in _cells(run):
                item = QStandardItem(text)
                item.setData(key, SORT_ROLE)
                item.setData(str(run.path), PATH_ROLE)
                tip = str(run.path)
                if run.message:
                    tip += f"\n{run.message}"
                if run.problems:
                    tip += "\n" + "\n".join(run.problems)
                item.setToolTip(tip)
                items.append(item)
            if run.state is RunState.MISSING:
                for item in items:
                    item.setForeground(Qt.GlobalColor.gray)
            self.model.appendRow(items)
        selection = self.table.selectionModel()
        for row in range(self.proxy.rowCount()):
            index = self.proxy.index(row, 0)
            if index.data(PATH_ROLE) in chosen:
                selection.select(
                    index,
                    selection.SelectionFlag.Select | selection.SelectionFlag.Rows,
                )
        self._selection_changed()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self.refresh()

    def selected_runs(self) -> list:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        found = []
        for index in sorted(rows, key=lambda i: i.row()):
            run = self.runs.get(index.data(PATH_ROLE))
            if run is not None:
                found.append(run)
        return found

    def _single(self):
        runs = self.selected_runs()
        return runs[0] if len(runs) == 1 else None

    # ----------------------------------------------------------------------- selection
    def _selection_changed(self) -> None:
        self._update_actions()
        runs = self.selected_runs()
        self.compare.set_runs(runs if len(runs) >= 2 else [])
        self.compare.setVisible(len(runs) >= 2)
        if len(runs) >= 2:
            self.hint.setText(f"Comparing {len(runs)} runs.")
        elif runs and runs[0].problems:
            self.hint.setText("\n".join(runs[0].problems))
        elif runs and runs[0].message:
            self.hint.setText(f"{runs[0].name}: {runs[0].message}")
        else:
            self.hint.setText("Select two or more runs (Ctrl+click) to compare them.")

    def _update_actions(self) -> None:
        runs = self.selected_runs()
        run = runs[0] if len(runs) == 1 else None
        busy = self.window.session.job.active
        one = "Select one run" if len(runs) != 1 else ""
        bundle = "" if run is not None and run.has_bundle else one or "This run has no bundle"
        states = {
            "open": bundle,
            "chat": bundle,
            "resume": one
            or ("A job is running" if busy else "")
            or ("" if run.resumable else "Only a stopped run with a checkpoint resumes"),
            "recipe": one
            or ("A job is running" if busy else "")
            or ("" if run.recipe else "This run has no readable recipe"),
            "export": (
                ""
                if _export_available()
                else "Export is not available in this version (studio.ui.export_dialog)"
            )
            or bundle,
            "delete": ("Select runs to delete" if not runs else "")
            or ("A job is running" if busy else ""),
        }
        tips = {
            "open": "Open the run's bundle: its curves in the Training tab",
            "chat": "Open the bundle and talk to it in the Chat tab",
            "resume": "Put the run's recipe in the settings and resume it from its checkpoint",
            "recipe": "Use this run's recipe as the starting point of the next run",
            "export": "Export the bundle",
            "delete": "Move the selected runs' folders to the trash",
        }
        for key, reason in states.items():
            enabled = not reason
            self.actions[key].setEnabled(enabled)
            self.buttons[key].setEnabled(enabled)
            tip = tips[key] if enabled else reason
            self.buttons[key].setToolTip(tip)
            self.actions[key].setToolTip(tip)

    def _context_menu(self, pos) -> None:
        index = self.table.indexAt(pos)
        if index.isValid() and not self.table.selectionModel().isRowSelected(index.row()):
            self.table.selectRow(index.row())
        menu = QMenu(self)
        menu.setObjectName("runsContextMenu")
        menu.setToolTipsVisible(True)
        for key in ("open", "chat", "resume", "recipe", "export"):
            menu.addAction(self.actions[key])
        menu.addSeparator()
        menu.addAction(self.actions["delete"])
        self.context_menu = menu
        menu.popup(self.table.viewport().mapToGlobal(pos))

    # ------------------------------------------------------------------------- actions
    def open_selected(self) -> bool:
        run = self._single()
        if run is None or not run.has_bundle:
            return False
        if self.window.bundles.open(str(run.path)):
            self.window.tabs.setCurrentIndex(0)  # the Training tab shows its curves
            return True
        return False

    def chat_selected(self) -> bool:
        run = self._single()
        if run is None or not run.has_bundle:
            return False
        if self.window.bundles.open(str(run.path)):
            self.window.tabs.setCurrentWidget(self.window.chat)
            return True
        return False

    def _recipe_of(self, run):
        from studio.core.recipe import RecipeError

        try:
            return run.recipe_object()
        except RecipeError as exc:
            QMessageBox.warning(self.window, "Cannot use this recipe", str(exc))
            return None

    def use_recipe_selected(self) -> bool:
        run = self._single()
        recipe = self._recipe_of(run) if run is not None else None
        if recipe is None:
            return False
        self.window.session.set_recipe(recipe)
        self.window.statusBar().showMessage(
            f"The recipe of {run.name} is in the settings: change what you want to try and "
            "choose another output folder before you start.",
            15000,
        )
        return True

    def resume_selected(self) -> bool:
        run = self._single()
        if run is None or not run.resumable:
            return False
        recipe = self._recipe_of(run)
        if recipe is None:
            return False
        self.window.session.set_recipe(recipe)
        self.window.tabs.setCurrentIndex(0)
        return self._start_when_ready()

    def _start_when_ready(self) -> bool:
        """Start (the window asks Resume or Start over). The recipe was just set: while its
        model is still to be read or its dataset checked, read them and start once done."""
        session = self.window.session
        if self._still_reading():
            if not self._waiting:
                self._waiting = True
                session.events.model.connect(self._inputs_changed)
                session.events.dataset.connect(self._inputs_changed)
                self.window.statusBar().showMessage(
                    "Reading the model and checking the dataset; the run resumes then…"
                )
                from studio.core.session import LoadState

                if session.model.state is LoadState.EMPTY:
                    self.window.load_model()
            return True
        blockers = session.start_blockers()
        if blockers:  # said where the person looks, without a box to dismiss
            text = "Cannot resume now: " + " ".join(blockers)
            self.window.statusBar().showMessage(text, 20000)
            self.hint.setText(text)
            return False
        return self.window.jobs.start()

    def _still_reading(self) -> bool:
        from studio.core.session import LoadState

        session = self.window.session
        if session.model.state in (LoadState.EMPTY, LoadState.READING):
            return True
        dataset_key = getattr(session, "dataset_key", lambda: None)()
        return dataset_key is not None and session.dataset.state not in (
            LoadState.READY,
            LoadState.FAILED,
        )

    def _inputs_changed(self, _value) -> None:
        if not self._waiting or self._still_reading():
            return
        self._waiting = False
        session = self.window.session
        session.events.model.disconnect(self._inputs_changed)
        session.events.dataset.disconnect(self._inputs_changed)
        # Out of the session's signal, so the question the start asks does not nest in it.
        QTimer.singleShot(0, self._start_when_ready)

    def export_selected(self) -> bool:
        run = self._single()
        if run is None or not run.has_bundle or not _export_available():
            return False
        from importlib import import_module

        dialog = import_module(EXPORT_MODULE).ExportDialog(str(run.path), self.window)
        self._export_dialog = dialog
        dialog.show()
        return True

    def delete_selected(self) -> bool:
        runs = self.selected_runs()
        if not runs or self.window.session.job.active:
            return False
        from studio.core import runs as library
        from studio.ui.flows import Role, _ask

        names = "\n".join(f"  {r.name} ({r.path})" for r in runs)
        if not _ask(
            self.window,
            "Delete runs?",
            f"Move {'this run' if len(runs) == 1 else f'these {len(runs)} runs'} to the trash "
            f"(bundle, checkpoints, status and log)?\n{names}",
            [
                ("Move to trash", Role.DestructiveRole, "deleteButton", True),
                ("Cancel", Role.RejectRole, "cancelButton", False),
            ],
            icon=QMessageBox.Icon.Warning,
        ):
            return False
        from send2trash import send2trash

        failed = []
        for run in runs:
            for path in library.run_paths(run.path):
                try:
                    send2trash(str(path))
                except OSError as exc:
                    failed.append(f"{path}: {exc}")
            library.forget(run.path)
        if failed:
            QMessageBox.warning(self.window, "Not all moved to the trash", "\n".join(failed))
        self.table.clearSelection()
        self.refresh()
        return not failed

    def add_folder(self, path: str | None = None) -> bool:
        from studio.core.runs import read_run, register

        if not path:
            path = QFileDialog.getExistingDirectory(self.window, "Add a bundle or run folder")
            if not path:
                return False
        if read_run(path).state is RunState.MISSING:
            QMessageBox.warning(
                self.window, "Not a run", f"{path} is neither a bundle nor a run folder."
            )
            return False
        register(path, how="added")
        self.refresh()
        return True


class CompareView(QWidget):
    """Two or more runs side by side: loss and memory curves overlaid, and the recipe keys
    that differ. pyqtgraph is built when the first comparison is shown."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setObjectName("compareView")
        self.runs: list = []
        self.x_combo = QComboBox(objectName="compareXCombo")
        for label, data in (("by step", "step"), ("by tokens seen", "tokens"), ("by time", "time")):
            self.x_combo.addItem(label, data)
        self.x_combo.setToolTip("The loss curves' x axis")
        self.summary = QLabel(objectName="compareSummaryLabel")
        self.summary.setWordWrap(True)
        self.diff_table = QTableWidget(objectName="recipeDiffTable")
        self.diff_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.diff_table.verticalHeader().setVisible(False)
        self.diff_table.horizontalHeader().setStretchLastSection(True)
        self.loss_plot = self.memory_plot = None
        self._plots = QSplitter(Qt.Orientation.Horizontal, objectName="comparePlots")
        row = QHBoxLayout()
        row.addWidget(QLabel("Loss x axis:"))
        row.addWidget(self.x_combo)
        row.addWidget(self.summary, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        self._plots.setMinimumHeight(240)
        layout.addWidget(self._plots, 3)
        layout.addWidget(self.diff_table)
        self.x_combo.currentIndexChanged.connect(lambda _i: self._draw())

    @property
    def x_kind(self) -> str:
        return self.x_combo.currentData()

    def _build(self) -> None:
        if self.loss_plot is not None:
            return
        from studio.ui.plots import _axis_classes, _pyqtgraph

        pg = _pyqtgraph()
        axes = _axis_classes()
        for attr, name, title, ylabel in (
            ("loss_plot", "compareLossPlot", "Loss (solid: training, dashed: evaluation)", "loss"),
            ("memory_plot", "compareMemoryPlot", "Memory (dashed: each run's estimate)", "GiB"),
        ):
            plot = pg.PlotWidget(
                title=title,
                axisItems={"bottom": axes.NumberAxis("bottom"), "left": axes.NumberAxis("left")},
            )
            plot.setObjectName(name)
            plot.showGrid(x=True, y=True, alpha=0.25)
            plot.setLabel("left", ylabel)
            # Memory rises over a run: its legend goes bottom right, out of the curves' way.
            plot.addLegend(
                offset=(-10, -10) if attr == "memory_plot" else (-10, 10),
                brush=(255, 255, 255, 200),  # the curves show through
            )
            setattr(self, attr, plot)
            self._plots.addWidget(plot)
        self.memory_plot.setLabel("bottom", "time (seconds)")

    def set_runs(self, runs) -> None:
        self.runs = list(runs)
        if self.runs:
            self._draw()

    def _draw(self) -> None:
        from studio.core.plots import CLOCK_FROM_S, GIB
        from studio.core.runs import X_KINDS, recipe_diff, run_curves

        if not self.runs:
            return
        self._build()
        from studio.ui.plots import _pyqtgraph

        pg = _pyqtgraph()
        x = self.x_kind
        self.loss_plot.clear()
        self.memory_plot.clear()
        self._set_bottom_axis(self.loss_plot, x)
        self.loss_plot.setLabel("bottom", X_KINDS[x])
        problems = []
        self.drawn: dict[str, dict] = {}
        for index, run in enumerate(self.runs):
            colour = COLOURS[index % len(COLOURS)]
            curves = run_curves(run)
            problems += [f"{run.name}: {p}" for p in curves.problems]
            if run.state is RunState.MISSING:
                problems.append(f"{run.name}: {run.message}")
            drawn = self.drawn.setdefault(run.name, {})
            symbol = "o" if len(curves.steps) <= 40 else None
            if curves.steps:
                xs = curves.loss_x(x)
                ys = [float(r["loss"]) for r in curves.steps]
                self.loss_plot.plot(
                    xs,
                    ys,
                    pen=pg.mkPen(colour, width=2),
                    name=f"{run.name}",
                    symbol=symbol,
                    symbolSize=5,
                    symbolBrush=colour,
                    symbolPen=None,
                )
                drawn["loss"] = (xs, ys)
            if curves.evals:
                xs = curves.eval_x(x)
                ys = [float(r["eval_loss"]) for r in curves.evals]
                self.loss_plot.plot(
                    xs,
                    ys,
                    pen=pg.mkPen(colour, width=2, style=Qt.PenStyle.DashLine),
                    name=f"{run.name} eval",
                    symbol="s",
                    symbolSize=6,
                    symbolBrush=colour,
                    symbolPen=None,
                )
                drawn["eval"] = (xs, ys)
            mx, my, what = curves.memory_series()
            if mx:
                ys = [v / GIB for v in my]
                self.memory_plot.plot(
                    mx, ys, pen=pg.mkPen(colour, width=2), name=f"{run.name} ({what})"
                )
                drawn["memory"] = (mx, ys)
            if run.estimate_bytes:
                estimate = run.estimate_bytes / GIB
                span = [mx[0], mx[-1]] if mx else [0.0, 1.0]
                self.memory_plot.plot(
                    span,
                    [estimate, estimate],
                    pen=pg.mkPen(colour, width=1.5, style=Qt.PenStyle.DashLine),
                    name=f"{run.name} estimate {format_bytes(run.estimate_bytes)}",
                )
                drawn["estimate"] = estimate
        top = max(
            [max(d["memory"][1]) for d in self.drawn.values() if d.get("memory")]
            + [d["estimate"] for d in self.drawn.values() if "estimate" in d]
            + [0.0]
        )
        if top > 0:  # memory from zero, as in the bundle's vram.png
            self.memory_plot.setYRange(0, top * 1.08, padding=0)
        longest = max((d["memory"][0][-1] for d in self.drawn.values() if "memory" in d), default=0)
        self._set_bottom_axis(self.memory_plot, "time", clock=longest >= CLOCK_FROM_S)
        self.memory_plot.setLabel(
            "bottom", "time (m:ss)" if longest >= CLOCK_FROM_S else "time (s)"
        )
        if x == "time":
            longest = max((d["loss"][0][-1] for d in self.drawn.values() if "loss" in d), default=0)
            self._set_bottom_axis(self.loss_plot, "time", clock=longest >= CLOCK_FROM_S)
        self._fill_diff(recipe_diff([r.recipe for r in self.runs]))
        count = self.diff_table.rowCount()
        text = f"{len(self.runs)} runs; " + (
            f"{count} recipe key{'s differ' if count != 1 else ' differs'}."
            if count
            else "their recipes are the same (apart from the output folder)."
        )
        if problems:
            text += " " + " ".join(problems)
        self.summary.setText(text)

    @staticmethod
    def _set_bottom_axis(plot, kind: str, *, clock: bool = False) -> None:
        """Whole-number ticks for steps, seconds (or m:ss) for time, plain numbers else."""
        from studio.ui.plots import _axis_classes

        axes = _axis_classes()
        cls = {"step": axes.StepAxis, "time": axes.TimeAxis}.get(kind, axes.NumberAxis)
        current = plot.getPlotItem().getAxis("bottom")
        if type(current) is not cls or getattr(current, "clock", False) != clock:
            axis = cls("bottom")
            if kind == "time":
                axis.clock = clock
            plot.getPlotItem().setAxisItems({"bottom": axis})

    def _fill_diff(self, diff) -> None:
        table = self.diff_table
        table.clear()
        table.setColumnCount(1 + len(self.runs))
        table.setHorizontalHeaderLabels(["Recipe key", *(r.name for r in self.runs)])
        table.setRowCount(len(diff))
        for row, (key, values) in enumerate(diff):
            table.setItem(row, 0, QTableWidgetItem(key))
            for column, value in enumerate(values, start=1):
                text = "(not set)" if value is None else str(value)
                table.setItem(row, column, QTableWidgetItem(text))
        table.resizeColumnsToContents()
        # As tall as its rows (up to six), so every differing key shows without scrolling.
        rows = sum(table.rowHeight(r) for r in range(min(len(diff), 6)))
        table.setFixedHeight(table.horizontalHeader().height() + rows + 2 * table.frameWidth() + 2)

    def differing_keys(self) -> list[str]:
        return [self.diff_table.item(r, 0).text() for r in range(self.diff_table.rowCount())]
