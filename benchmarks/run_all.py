"""Run every CPU benchmark in turn (what ``make bench`` does) and keep their JSON results.

Each benchmark runs in its own process, one after another (two at once would share the CPU
and distort both). Results go to ``benchmarks/results/<date>/<name>.json`` and the printed
tables to the terminal; docs/benchmarks.md says what each measures.

    python benchmarks/run_all.py [--only NAME ...] [--out FOLDER]
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
QT_OFFSCREEN = {"QT_QPA_PLATFORM": "offscreen"}

# name -> (script, extra arguments, extra environment)
BENCHMARKS = {
    "estimator_accuracy": ("estimator_accuracy.py", [], {}),
    "activation_accuracy": ("activation_accuracy.py", [], {}),
    "whole_run_accuracy": ("whole_run_accuracy.py", [], {}),
    "startup": ("startup.py", ["--samples", "5"], QT_OFFSCREEN),
    "engine_overhead": ("engine_overhead.py", ["--steps", "16", "--rounds", "4"], {}),
    "gui_responsiveness": ("gui_responsiveness.py", ["--steps", "8"], QT_OFFSCREEN),
    "sample_dataset_learning": ("sample_dataset_learning.py", [], {}),
    "distributed": ("distributed.py", ["--steps", "10", "--rounds", "2"], {}),
    "export": ("export.py", [], {}),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these")
    parser.add_argument("--out", help="folder for the JSON results")
    args = parser.parse_args()
    out = Path(args.out or HERE / "results" / datetime.date.today().isoformat())
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in args.only or BENCHMARKS:
        script, extra, env = BENCHMARKS[name]
        command = [sys.executable, str(HERE / script), *extra, "--json", str(out / f"{name}.json")]
        print(f"\n== {name}: {' '.join(command[1:])}", flush=True)
        if subprocess.run(command, env={**os.environ, **env}).returncode != 0:
            failed.append(name)
    print(f"\nResults in {out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
