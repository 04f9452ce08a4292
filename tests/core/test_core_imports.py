"""`studio.core` stays light and Qt-free: importing any of its modules pulls in neither the
ML stack (torch, transformers, peft, bitsandbytes, datasets) nor Qt (PySide6, pyqtgraph).
Checked in a fresh interpreter, module by module, so the culprit is named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "PySide6", "pyqtgraph")

_PROBE = r"""
import importlib, json, pkgutil, sys
forbidden = set(sys.argv[1].split(","))

def heavy():
    return sorted({name.partition(".")[0] for name in sys.modules} & forbidden)

import studio.core
names = ["studio.core"]
packages = [studio.core]
while packages:  # pkgutil does not descend into folders without __init__.py: do it by hand
    package = packages.pop()
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        names.append(info.name)
        if info.ispkg:
            packages.append(importlib.import_module(info.name))
engine = importlib.util.find_spec("studio.core.engine")
if engine is not None and "studio.core.engine" not in names:
    names.append("studio.core.engine")
    names += [i.name for i in pkgutil.iter_modules(engine.submodule_search_locations,
                                                  "studio.core.engine.")]
culprits = {}
for name in names:
    before = set(heavy())
    importlib.import_module(name)
    new = sorted(set(heavy()) - before)
    if new:
        culprits[name] = new
print(json.dumps({"modules": sorted(set(names)), "culprits": culprits}))
"""


def test_importing_studio_core_stays_light():
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, ",".join(FORBIDDEN)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"studio.core.gpu", "studio.core.quant", "studio.core.recipe"} <= set(report["modules"])
    if (REPO / "studio" / "core" / "engine").is_dir():
        assert any(m.startswith("studio.core.engine") for m in report["modules"])
    assert report["culprits"] == {}, (
        "these studio.core modules import heavy or Qt packages at module level "
        f"(import them inside functions instead): {report['culprits']}"
    )


def test_import_linter_contracts_hold():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(
        [str(lint_imports)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout
