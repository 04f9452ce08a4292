"""The GUI event loop's longest stall while a job trains and the plots update.

Two runs of the same recipe (the built-in model on the sample dataset, a few steps), each
watched by a 10 ms QTimer that records how late every tick fires:
- baseline: a bare PySide6 window while an `EngineRunner` trains headless beside it (the
  same CPU contention, none of the studio's GUI work);
- studio: the studio's main window running the job through its JobController, with live
  plots, the estimate and the hardware strip, started once the window is idle; the window's
  start-up (show until the estimate and dataset preview are ready) is reported apart;
- launch (measured first, in a process that has not imported the window yet): the start-up
  `qlora-studio` does, the frame painted first and the panels and plots built after it.
The report gives the longest stall and the 99th percentile of tick lateness for each, and the
ratio studio / baseline. Runs offscreen unless QT_QPA_PLATFORM says otherwise.

    python benchmarks/gui_responsiveness.py [--steps 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

TICK_MS = 10


class StallMeter:
    """Counts how late a 10 ms repeating timer fires, in milliseconds."""

    def __init__(self) -> None:
        from PySide6.QtCore import QTimer

        self.lateness: list[float] = []
        self.at: list[float] = []  # seconds since start() of each tick
        self._last = self._start = time.perf_counter()
        self.timer = QTimer(interval=TICK_MS)
        self.timer.timeout.connect(self._tick)

    def start(self) -> None:
        self._last = self._start = time.perf_counter()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    def _tick(self) -> None:
        now = time.perf_counter()
        self.lateness.append(max(0.0, (now - self._last) * 1000 - TICK_MS))
        self.at.append(now - self._start)
        self._last = now

    def summary(self) -> dict:
        ordered = sorted(self.lateness)
        worst = max(range(len(self.lateness)), key=self.lateness.__getitem__)
        return {
            "ticks": len(ordered),
            "max_stall_ms": ordered[-1],
            "max_stall_ended_at_s": self.at[worst],
            "p99_ms": ordered[int(0.99 * (len(ordered) - 1))],
            "median_ms": statistics.median(ordered),
        }


def make_recipe(steps: int, out: Path):
    from studio.core.recipe import Recipe

    return Recipe().with_changes(
        training={"max_steps": steps, "save_steps": steps, "eval_steps": steps, "device": "cpu"},
        dataset={"max_length": 128},
        output={"dir": str(out)},
    )


def wait(app, predicate, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the run did not finish in time")
        app.processEvents()
        time.sleep(0.002)


def baseline(app, recipe) -> dict:
    from PySide6.QtWidgets import QLabel, QMainWindow

    from studio.core.engine.runner import EngineRunner
    from studio.core.events import TERMINAL_EVENTS, Failed, PhaseChanged, StepLogged

    window = QMainWindow()
    window.setCentralWidget(QLabel("bare window"))
    window.resize(1280, 800)
    window.show()
    meter = StallMeter()
    runner = EngineRunner(recipe, overwrite=True)
    ended = []
    runner.start()
    meter.start()

    def done() -> bool:
        for event in runner.poll(0):
            if isinstance(event, TERMINAL_EVENTS):
                ended.append(event)
            elif isinstance(event, (PhaseChanged, StepLogged, Failed)):
                print(f"  {event}", file=sys.stderr, flush=True)
        return bool(ended)

    wait(app, done, 1800)
    meter.stop()
    runner.join(60)
    window.close()
    return {**meter.summary(), "terminal": type(ended[0]).__name__}


def launch(app, recipe) -> dict:
    """The start-up `run_app` does (the frame painted first, the panels and plots built after
    it), measured first in this process so the window's modules and pyqtgraph are imported
    for the first time: from show() until the panels and plots are built and the model's
    shape and the dataset preview are read, plus one second."""
    from studio.ui.main_window import MainWindow

    window = MainWindow(recipe, restore=False, autoload=True, defer_build=True)
    meter = StallMeter()
    meter.start()
    window.show()

    def ready() -> bool:
        session = window.session
        return (
            session is not None
            and all(plot.built for plot in window.live.plots)
            and session.estimate is not None
            and session.dataset.preview is not None
        )

    wait(app, ready, 600)
    settle = time.monotonic() + 1.0
    wait(app, lambda: time.monotonic() > settle, 5)
    meter.stop()
    window.close()
    return {**meter.summary(), "terminal": "ready"}


def studio(app, recipe) -> dict:
    """Two measurements of one window: start-up, from show until the estimate and the dataset
    preview are ready (the background threads read the model's shape and load its tokenizer
    meanwhile), then training, from Start (on an idle window) until the job ends."""
    from studio.ui.main_window import MainWindow

    window = MainWindow(recipe, restore=False)
    startup = StallMeter()
    startup.start()
    window.show()
    window.load_model()
    wait(
        app,
        lambda: window.session.estimate is not None and window.session.dataset.preview is not None,
        600,
    )
    settle = time.monotonic() + 1.0
    wait(app, lambda: time.monotonic() > settle, 5)
    startup.stop()
    meter = StallMeter()
    ended = []
    window.controller.jobEnded.connect(ended.append)
    meter.start()
    if not window.jobs.start():
        raise RuntimeError("the window did not start the job")
    wait(app, lambda: bool(ended), 1800)
    meter.stop()
    window.controller.shutdown()
    window.close()
    return {
        **meter.summary(),
        "terminal": type(ended[0]).__name__,
        "startup": {**startup.summary(), "terminal": "ready"},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["QLORA_STUDIO_SETTINGS_DIR"] = scratch
        results = {}
        for kind, run in (("launch", launch), ("baseline", baseline), ("studio", studio)):
            print(f"running {kind}...", file=sys.stderr, flush=True)
            results[kind] = run(app, make_recipe(args.steps, Path(scratch) / kind))
            print(f"{kind}: {results[kind]}", file=sys.stderr, flush=True)
    results["ratio_max_stall"] = results["studio"]["max_stall_ms"] / max(
        results["baseline"]["max_stall_ms"], 1e-9
    )
    print(f"{'window':16} {'ticks':>6} {'max stall ms':>13} {'p99 ms':>8} {'median ms':>10}  end")
    rows = [
        ("baseline", results["baseline"]),
        ("studio training", results["studio"]),
        ("studio start-up", results["studio"]["startup"]),
        ("studio launch", results["launch"]),
    ]
    for kind, r in rows:
        print(
            f"{kind:16} {r['ticks']:6} {r['max_stall_ms']:13.1f} {r['p99_ms']:8.1f} "
            f"{r['median_ms']:10.2f}  {r['terminal']}"
        )
    print(f"studio / baseline longest stall: {results['ratio_max_stall']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
