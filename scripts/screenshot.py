"""Take docs/images/studio-training.png from the real, running app (run it under Xvfb):

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot.py

Opens the window with the built-in model and the sample dataset (or ``--model``), starts a
run, waits for some logged steps and grabs the window. Settings go to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=12, help="logged steps to wait for")
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--out", default=str(ROOT / "docs/images/studio-training.png"))
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--width", type=int, default=1600, help="window width")
    parser.add_argument("--height", type=int, default=1000, help="window height")
    parser.add_argument(
        "--dataset-out",
        default=str(ROOT / "docs/images/studio-dataset.png"),
        help="also grab the dataset preview tab here ('' to skip)",
    )
    args = parser.parse_args()
    os.environ.setdefault("QLORA_STUDIO_SETTINGS_DIR", tempfile.mkdtemp(prefix="qs-settings-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from studio.app import build_main_window, ensure_application

    app = ensure_application()
    window = build_main_window(restore=False, autoload=False)
    run_dir = Path(tempfile.mkdtemp(prefix="qs-run-")) / "smollm2-sample"
    window.session.edit_many(
        {
            "output": {"dir": str(run_dir)},
            "training": {"max_steps": args.max_steps, "save_steps": 1000},
            "model": {"source": args.model},
        }
    )
    window.resize(args.width, args.height)
    window.show()
    window.load_model()

    def wait(predicate, what: str) -> None:
        deadline = time.monotonic() + args.timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {what}")
            app.processEvents()
            time.sleep(0.02)

    wait(lambda: window.session.estimate is not None, "the model's shape")
    wait(lambda: window.session.dataset.preview is not None, "the dataset preview")
    if not window.jobs.start():
        raise SystemExit("the run did not start")
    wait(
        lambda: len(window.loss_plot.steps) >= args.steps or not window.controller.is_active,
        f"{args.steps} steps",
    )
    if not window.controller.is_active:
        raise SystemExit("the run ended early: " + window.run_bar.phase.text())
    end = time.monotonic() + 1.0
    while time.monotonic() < end:  # let the plots redraw
        app.processEvents()
        time.sleep(0.02)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not window.grab().save(str(out)):
        raise SystemExit(f"could not write {out}")
    print(f"saved {out}")
    if args.dataset_out:
        window.tabs.setCurrentWidget(window.dataset.preview_widget)
        for _ in range(20):
            app.processEvents()
            time.sleep(0.02)
        window.grab().save(args.dataset_out)
        print(f"saved {args.dataset_out}")
    window.controller.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
