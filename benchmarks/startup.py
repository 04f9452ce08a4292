"""Time from launch to a painted window: QLoRA Studio's main window against a bare PySide6 one.

Each sample starts a fresh Python process (the parent notes the time just before starting it);
the child builds its window, shows it, and reports when the window's first paint event has
been delivered, plus whether torch had been imported by then (it must not be). The parent
takes the elapsed wall time at that report. Ratios compare medians measured in the same run.

    python benchmarks/startup.py [--samples 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CHILD = r"""
import sys
from PySide6.QtCore import QEvent, QObject, QTimer
from PySide6.QtWidgets import QApplication, QMainWindow, QLabel

kind = sys.argv[1]
app = QApplication.instance() or QApplication([])
if kind == "studio":
    from studio.app import build_main_window
    window = build_main_window(defer_build=True)  # as run_app builds it
else:
    window = QMainWindow()
    window.setCentralWidget(QLabel("bare PySide6 window"))
    window.resize(1280, 800)

class FirstPaint(QObject):
    def eventFilter(self, obj, event):
        if event.type() == QEvent.Type.Paint:
            print("painted", "torch" in sys.modules, flush=True)
            QTimer.singleShot(0, app.quit)
            obj.removeEventFilter(self)
        return False

watcher = FirstPaint()
window.installEventFilter(watcher)
window.show()
app.exec()
"""


def one_sample(kind: str) -> tuple[float, bool]:
    env = dict(os.environ, QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "offscreen"))
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, kind], stdout=subprocess.PIPE, text=True, env=env
    )
    torch_loaded = None
    for line in proc.stdout:
        if line.startswith("painted"):
            elapsed = time.perf_counter() - start
            torch_loaded = line.split()[1] == "True"
            break
    else:
        raise RuntimeError(f"{kind}: the window never painted (exit code {proc.wait()})")
    proc.wait(timeout=60)
    return elapsed, torch_loaded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results = {}
    for kind in ("bare", "studio"):
        one_sample(kind)  # warm the file cache so both kinds start from the same state
        times, torch_flags = zip(*(one_sample(kind) for _ in range(args.samples)), strict=True)
        results[kind] = {
            "median_s": statistics.median(times),
            "min_s": min(times),
            "max_s": max(times),
            "torch_imported_before_paint": any(torch_flags),
        }
    results["ratio_studio_to_bare"] = results["studio"]["median_s"] / results["bare"]["median_s"]
    print(f"{'window':8} {'median s':>9} {'min s':>7} {'max s':>7}  torch before paint")
    for kind in ("bare", "studio"):
        r = results[kind]
        print(
            f"{kind:8} {r['median_s']:9.3f} {r['min_s']:7.3f} {r['max_s']:7.3f}  "
            f"{r['torch_imported_before_paint']}"
        )
    print(f"studio / bare: {results['ratio_studio_to_bare']:.2f}x")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
