"""The PyInstaller build: cheap checks of the spec on every run, and (opt-in) a real build.

The cheap tests read packaging/qlora-studio.spec and packaging/launcher.py as Python source:
the spec compiles, every repository path it names exists, the launcher routes spawn children
through ``multiprocessing.freeze_support()`` before anything else, and every subcommand module
(imported by name at run time, so invisible to PyInstaller's analysis) is among the studio
submodules the spec collects.

The slow test builds the one-folder program into a temporary folder and runs it: ``--version``,
``gpus``, ``gpus --json``, ``estimate`` on the built-in model, and a two-step ``train`` of a tiny
model (which exercises the spawn child inside the frozen program). The build takes many minutes,
so it runs only with ``QLORA_STUDIO_TEST_PACKAGE=1`` (see docs/packaging.md);
``QLORA_STUDIO_PACKAGE_PROGRAM=dist/qlora-studio/qlora-studio`` tests an existing build instead.
"""

from __future__ import annotations

import ast
import json
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import studio
from studio import __version__
from studio.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "packaging" / "qlora-studio.spec"
LAUNCHER = ROOT / "packaging" / "launcher.py"
BUILD_ENV = "QLORA_STUDIO_TEST_PACKAGE"
PROGRAM_ENV = "QLORA_STUDIO_PACKAGE_PROGRAM"  # test this already-built program instead


def _root_paths(tree: ast.AST) -> list[str]:
    """Every ``root / "a" / "b"`` expression of the spec, as "a/b"."""
    divisions = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
    ]
    inner = {id(node.left) for node in divisions}  # "root / a" inside "root / a / b"
    found = []
    for node in divisions:
        if id(node) in inner:
            continue
        parts = []
        current = node
        while isinstance(current, ast.BinOp) and isinstance(current.op, ast.Div):
            if not (
                isinstance(current.right, ast.Constant) and isinstance(current.right.value, str)
            ):
                break
            parts.append(current.right.value)
            current = current.left
        else:
            if isinstance(current, ast.Name) and current.id == "root":
                found.append("/".join(reversed(parts)))
    return found


def test_spec_compiles_and_names_existing_paths():
    tree = ast.parse(SPEC.read_text(encoding="utf-8"), filename=str(SPEC))
    compile(tree, str(SPEC), "exec")
    paths = _root_paths(tree)
    assert "packaging/launcher.py" in paths
    assert "resources" in paths
    assert "resources/icons/qlora-studio.png" in paths
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"the spec names paths that do not exist: {missing}"


def test_launcher_calls_freeze_support_before_main():
    tree = ast.parse(LAUNCHER.read_text(encoding="utf-8"))
    calls = [
        ast.unparse(node.func)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name)
    ]
    assert "multiprocessing.freeze_support" in calls
    assert calls.index("multiprocessing.freeze_support") < calls.index("main")


def test_every_subcommand_module_is_a_collected_studio_submodule():
    # collect_submodules("studio") walks the package like this; cli.py imports these by name.
    found = {m.name for m in pkgutil.walk_packages(studio.__path__, "studio.")}
    missing = [name for name in COMMANDS if f"studio.commands.{name}" not in found]
    assert not missing, f"subcommand modules not found under studio/commands: {missing}"
    assert 'collect_submodules("studio")' in SPEC.read_text(encoding="utf-8")


# --- the real build (opt-in) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_program(tmp_path_factory) -> Path:
    if os.environ.get(BUILD_ENV) != "1":
        pytest.skip(f"builds the program for many minutes; set {BUILD_ENV}=1 to run it")
    if os.environ.get(PROGRAM_ENV):
        return Path(os.environ[PROGRAM_ENV]).resolve()
    pyinstaller = shutil.which("pyinstaller", path=str(Path(sys.executable).parent))
    if pyinstaller is None:
        pytest.skip('PyInstaller is not installed: pip install "pyinstaller>=6.10"')
    out = tmp_path_factory.mktemp("package")
    subprocess.run(
        [
            pyinstaller, "--noconfirm", "--log-level", "WARN",
            "--distpath", str(out / "dist"), "--workpath", str(out / "build"), str(SPEC),
        ],
        cwd=ROOT,
        check=True,
    )  # fmt: skip
    program = out / "dist" / "qlora-studio" / "qlora-studio"
    assert program.is_file()
    return program


def _run(program: Path, *args: str, cwd: Path | None = None, **env: str):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "QT_QPA_PLATFORM": "offscreen", **env}
    return subprocess.run(
        [str(program), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=900
    )


@pytest.mark.slow
def test_built_program_answers_version_and_gpus(built_program):
    version = _run(built_program, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"qlora-studio {__version__}"

    gpus = _run(built_program, "gpus")
    assert gpus.returncode == 0, gpus.stderr
    assert gpus.stdout.strip()

    as_json = _run(built_program, "gpus", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert isinstance(json.loads(as_json.stdout), dict)


@pytest.mark.slow
def test_built_program_holds_the_window_libraries(built_program):
    # The window imports pyqtgraph only after its first paint, inside a function: the build
    # must still carry it, or the packaged window would fail right after appearing.
    viewer = shutil.which("pyi-archive_viewer", path=str(Path(sys.executable).parent))
    if viewer is None:
        pytest.skip("pyi-archive_viewer (PyInstaller) is not installed")
    listing = subprocess.run(
        [viewer, "--list", "--recursive", "--brief", str(built_program)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    modules = {line.strip() for line in listing.splitlines()}
    for module in ("pyqtgraph", "pyqtgraph.widgets.PlotWidget", "studio.ui.plots"):
        assert module in modules, f"{module} is missing from the build"


@pytest.mark.slow
def test_built_program_estimates_the_bundled_builtin_model(built_program, tmp_path):
    result = _run(
        built_program,
        "estimate", "--model", "builtin:smollm2-135m-instruct", "--json",
        QLORA_STUDIO_CACHE=str(tmp_path / "cache"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    estimate = json.loads(result.stdout)
    assert estimate["total_bytes"] > estimate["weights_bytes"] > 0


@pytest.mark.slow
def test_built_program_trains_a_tiny_model_in_its_spawn_child(built_program, tmp_path, tiny_models):
    data = tmp_path / "data.jsonl"
    rows = [{"instruction": f"Say hello {i}.", "input": "", "output": "Hello!"} for i in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(
        f"""schema_version = 1

[model]
source = "{tiny_models["llama"].as_posix()}"

[quantization]
compute_dtype = "float32"

[lora]
r = 4
alpha = 8

[dataset]
path = "data.jsonl"
max_length = 64
validation_split = 0

[training]
max_steps = 2
batch_size = 2
optimizer = "adamw_torch"
gradient_checkpointing = false
save_steps = 2
device = "cpu"

[output]
dir = "bundle"
""",
        encoding="utf-8",
    )
    result = _run(
        built_program,
        "train",
        str(recipe),
        cwd=tmp_path,
        QLORA_STUDIO_CACHE=str(tmp_path / "cache"),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    bundle = Path(result.stdout.strip().splitlines()[-1])
    assert bundle.is_dir()
    assert (bundle / "recipe.toml").is_file()
