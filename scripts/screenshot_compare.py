"""Take docs/images/studio-compare.png: three real short runs compared in the Runs tab (run it
under Xvfb):

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot_compare.py

Trains the built-in model three times with the shipped recipe changed in a few keys (LoRA rank
8 or 16, NF4 or FP4, max length 96 or 64; 8 steps of 2 examples, so that it takes minutes
on two CPU cores) through ``qlora-studio train``, each recorded in a
run library of its own (a temporary runs root, or ``--runs-dir``, where runs already finished
are not trained again), then opens the window's Runs tab, selects the three runs and grabs the
window.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = {
    "rank8-nf4": {"lora": {"r": 8}},
    "rank16-nf4": {"lora": {"r": 16}},
    "rank16-fp4-len64": {
        "lora": {"r": 16},
        "quantization": {"quant_type": "fp4"},
        "dataset": {"max_length": 64},
    },
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", help="where the runs go (default: a temporary folder)")
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "docs/images/studio-compare.png"))
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args()
    runs_dir = Path(args.runs_dir or tempfile.mkdtemp(prefix="qs-compare-")).absolute()
    runs_dir.mkdir(parents=True, exist_ok=True)
    os.environ["QLORA_STUDIO_RUNS_ROOT"] = str(runs_dir / "library")
    os.environ.setdefault("QLORA_STUDIO_SETTINGS_DIR", tempfile.mkdtemp(prefix="qs-settings-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from studio.core.recipe import load_recipe, save_recipe

    shipped = load_recipe(ROOT / "recipes/smollm2-sample.toml")
    for name, changes in RUNS.items():
        if (runs_dir / name / "manifest.json").is_file():
            continue
        sections = {key: dict(value) for key, value in changes.items()}
        sections.setdefault("dataset", {}).setdefault("max_length", 96)
        sections.setdefault("training", {}).update(
            max_steps=args.max_steps, batch_size=2, save_steps=1000, eval_steps=4, device="cpu"
        )
        sections["output"] = {"dir": str(runs_dir / name)}
        recipe_file = save_recipe(shipped.with_changes(**sections), runs_dir / f"{name}.toml")
        print(f"training {name}…", flush=True)
        subprocess.run(
            [sys.executable, "-m", "studio", "train", str(recipe_file), "--overwrite"],
            check=True,
        )

    from PySide6.QtCore import Qt

    from studio.app import build_main_window, ensure_application

    app = ensure_application()
    window = build_main_window(restore=False, autoload=False)
    window.resize(args.width, args.height)
    window.show()

    def settle(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.02)

    window.load_model()  # the estimate panel as a person sees it
    deadline = time.monotonic() + args.timeout
    while window.session.estimate is None and time.monotonic() < deadline:
        settle(0.1)
    view = window.runs_view
    window.tabs.setCurrentWidget(view)
    settle(0.5)
    view.table.sortByColumn(0, Qt.SortOrder.AscendingOrder)
    view.table.selectAll()
    settle(1.0)
    if len(view.compare.runs) != len(RUNS):
        raise SystemExit(f"expected {len(RUNS)} runs compared, got {len(view.compare.runs)}")
    # Give the comparison most of the height.
    total = sum(view.splitter.sizes())
    view.splitter.setSizes([200, total - 200])  # three rows of the table, the rest compared
    settle(1.5)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not window.grab().save(str(out)):
        raise SystemExit(f"could not write {out}")
    print(f"saved {out}")
    window.controller.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
