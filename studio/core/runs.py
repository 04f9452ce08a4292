"""The run library: every run the studio starts, recorded so it can be found, read back and
compared later (docs/window.md, "Runs").

Three files make it up:

- The index, ``<runs root>/runs.jsonl``: one JSON line per run folder added (by the engine when
  a run starts, or by a person adding a bundle made elsewhere) or forgotten (deleted). Lines
  are appended under an exclusive ``flock`` with ``O_APPEND``, so runs starting at the same
  time never interleave or lose a line. The runs root is ``QLORA_STUDIO_RUNS_ROOT``, by
  default ``~/qlora-studio/runs`` (where the window puts runs whose output folder is relative).
  Bundles lying directly in the root are listed too, indexed or not.
- The run's status file, ``<output.dir>.run.json`` beside the bundle folder (like its log,
  ``<output.dir>.log``): written atomically by the engine process at the start, at every
  checkpoint and phase, and at the end: ``running``, ``finished``, ``stopped`` (resumable
  while a checkpoint is kept) or ``failed`` with the phase and the message.
- ``memory.jsonl``: the engine samples its own memory twice a second in a thread (resident
  memory; on a GPU torch's allocated and reserved memory and the device's used memory) into
  the checkpoints folder while it runs; the bundle gets a copy, so the memory curve can be
  drawn again later.

`RunRecorder` is the engine's side (it sits between the job and the event pipe, so runs of
the window and of ``qlora-studio train`` are recorded alike); `list_runs`, `read_run`,
`run_curves`, `recipe_diff` and `compare_charts` are the readers' side (the Runs view and
``qlora-studio runs``). A run whose folder was moved or deleted reads as ``missing``; a damaged
metrics file gives the rows that could be read and says which line was bad. Qt-free.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.core.phases import RunState

RUNS_ROOT_ENV = "QLORA_STUDIO_RUNS_ROOT"
INDEX = "runs.jsonl"
STATUS_SUFFIX = ".run.json"
MEMORY = "memory.jsonl"
METRICS = "metrics.jsonl"
RECIPE = "recipe.toml"
MANIFEST = "manifest.json"
STATUS_FORMAT = 1
SAMPLE_EVERY_S = 0.5

# What a run's status says (`RunSummary.state` adds MISSING), as short names here.
FINISHED, STOPPED, FAILED, RUNNING, MISSING = (
    RunState.FINISHED,
    RunState.STOPPED,
    RunState.FAILED,
    RunState.RUNNING,
    RunState.MISSING,
)
# The recipe key every run differs in (it names the run); left out of `recipe_diff`.
NAMING_KEYS = ("output.dir",)


# ------------------------------------------------------------------------------ places
def runs_root() -> Path:
    """The runs root: ``QLORA_STUDIO_RUNS_ROOT``, else ``~/qlora-studio/runs``."""
    value = os.environ.get(RUNS_ROOT_ENV)
    return Path(value).expanduser() if value else Path.home() / "qlora-studio" / "runs"


def index_path(root: str | Path | None = None) -> Path:
    """The library's index, ``<runs root>/runs.jsonl``."""
    return (Path(root) if root is not None else runs_root()) / INDEX


def status_path(output_dir: str | Path) -> Path:
    """A run's status file: ``<output.dir>.run.json``, beside the bundle folder."""
    output_dir = Path(output_dir)
    return output_dir.with_name(output_dir.name + STATUS_SUFFIX)


def checkpoints_path(output_dir: str | Path) -> Path:
    """Where the run's checkpoints (and, while it runs, its metrics and memory) are."""
    output_dir = Path(output_dir)
    return output_dir.with_name(output_dir.name + ".checkpoints")


def _key(path: str | Path) -> str:
    return str(Path(path).expanduser().absolute())


# ------------------------------------------------------------------------------- index
def _append_index(entry: dict, root: str | Path | None) -> None:
    path = index_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - Windows: O_APPEND alone
            pass
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the lock


def register(output_dir: str | Path, *, how: str = "engine", root: str | Path | None = None):
    """Add the run (or bundle) folder ``output_dir`` to the library's index."""
    _append_index({"path": _key(output_dir), "added": time.time(), "how": how}, root)


def forget(output_dir: str | Path, *, root: str | Path | None = None) -> None:
    """Take ``output_dir`` out of the index (its files are not touched)."""
    _append_index({"path": _key(output_dir), "removed": time.time()}, root)


def indexed(root: str | Path | None = None) -> list[Path]:
    """The run folders in the index (first added first), plus bundles and runs lying directly
    in the runs root; a forgotten folder is left out until it is added again."""
    found: dict[str, Path] = {}
    index = index_path(root)
    with contextlib.suppress(OSError):
        for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
                key = str(entry["path"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short: the others still count
            if entry.get("removed"):
                found.pop(key, None)
            else:
                found.setdefault(key, Path(key))
    folder = index.parent
    with contextlib.suppress(OSError):
        for child in sorted(folder.iterdir()):
            if child.name.startswith("."):
                continue
            if child.name.endswith(STATUS_SUFFIX):
                child = child.with_name(child.name[: -len(STATUS_SUFFIX)])
            elif not (child.is_dir() and (child / MANIFEST).is_file()):
                continue
            found.setdefault(_key(child), Path(_key(child)))
    return list(found.values())


# --------------------------------------------------------------------------- status file
def read_status(output_dir: str | Path) -> dict | None:
    """The run's status file as a dict; None when there is none or it cannot be read."""
    try:
        data = json.loads(status_path(output_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_status(output_dir: str | Path, status: dict) -> None:
    """Replace the run's status file atomically."""
    from studio.core.atomic import atomic_write_text

    path = atomic_write_text(
        status_path(output_dir), json.dumps(status, indent=2, sort_keys=True) + "\n"
    )
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):  # the temporary file's owner-only mode, made usual
        os.chmod(path, 0o666 & ~umask)


# ------------------------------------------------------------------------ memory sampler
class MemorySampler:
    """Samples this process's memory every ``every_s`` seconds into a JSON-lines file.

    Each line: ``t`` (Unix time), ``elapsed_s`` (the run's time, continued across resumed
    sessions), ``step``, ``phase``, ``rss_bytes``, and on a GPU ``cuda_allocated_bytes``,
    ``cuda_reserved_bytes`` and ``device_used_bytes``. The file is kept open and written line
    by line, so a copy taken at any moment holds whole lines. `set_phase` also takes a
    sample at once, so every phase a run passes through has at least one, however short.
    """

    def __init__(
        self, path: Path, *, cuda_device: Callable[[], str | None], every_s=SAMPLE_EVERY_S
    ):
        self.path = Path(path)
        self.cuda_device = cuda_device
        self.every_s = every_s
        self.step: int | None = None
        self.phase: str | None = None
        self.peak_bytes: int | None = None
        self._offset = _last_elapsed(self.path)
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._handle = None
        self._process = None
        self._write_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)

    def start(self) -> MemorySampler:
        import psutil

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._process = psutil.Process()
        self._handle = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self._thread.start()
        return self

    def set_phase(self, phase: str) -> None:
        """The run is in ``phase``: on entering it, take a sample now."""
        entered, self.phase = phase != self.phase, phase
        if entered and self._thread.is_alive():
            self._write_sample()

    def _write_sample(self) -> None:
        with self._write_lock, contextlib.suppress(Exception):  # a missed sample is no error
            if self._handle is not None:
                self._handle.write(json.dumps(self.sample(self._process)) + "\n")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with self._write_lock:
            if self._handle is not None:
                with contextlib.suppress(OSError):
                    self._handle.close()
                self._handle = None

    def _loop(self) -> None:
        while True:
            self._write_sample()
            if self._stop.wait(self.every_s):
                return

    def sample(self, process) -> dict:
        row: dict[str, Any] = {
            "t": round(time.time(), 3),
            "elapsed_s": round(self._offset + time.monotonic() - self._t0, 3),
            "step": self.step,
            "phase": self.phase,
            "rss_bytes": int(process.memory_info().rss),
        }
        device = self.cuda_device()
        if device:
            import sys

            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_initialized():
                row["cuda_allocated_bytes"] = int(torch.cuda.memory_allocated(device))
                row["cuda_reserved_bytes"] = int(torch.cuda.memory_reserved(device))
                free, total = torch.cuda.mem_get_info(device)
                row["device_used_bytes"] = int(total - free)
        value = row.get("cuda_reserved_bytes", row["rss_bytes"])
        self.peak_bytes = max(self.peak_bytes or 0, value)
        return row


def _last_elapsed(path: Path) -> float:
    """The last ``elapsed_s`` in a memory file (a resumed run's clock goes on from there)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 4096))
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return 0.0
    for line in reversed(lines):
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            return float(json.loads(line)["elapsed_s"])
    return 0.0


# ------------------------------------------------------------------------ engine's side
class RunRecorder:
    """Records one run of the engine: an event sink that forwards every event to ``send``
    (the pipe to the parent) and keeps the run's status file, the index and the memory
    sampler up to date. Recording never breaks a run: its own failures are swallowed.

    The run is recorded from the first phase after the output check: a start refused there
    (the folder is locked by another run, or holds a bundle that may not be replaced) leaves
    that run's status alone. ``job`` (set after the `Job` is made) gives the estimate, the
    resolved recipe and the torch device.
    """

    def __init__(
        self,
        recipe,
        *,
        resume: bool,
        send: Callable,
        root: str | Path | None = None,
        sample_memory: bool = True,
    ):
        self.recipe = recipe
        self.sample_memory = sample_memory
        self.resume = resume
        self.send = send
        self.root = root
        self.job = None
        self.output_dir = Path(recipe.output.dir).expanduser().absolute()
        self.status: dict | None = None
        self.sampler: MemorySampler | None = None
        self._session_t0 = time.monotonic()
        self._elapsed_before = 0.0

    # the emit interface ------------------------------------------------------------
    def __call__(self, event) -> None:
        self.send(event)
        with contextlib.suppress(Exception):
            self.observe(event)

    def parent_alive(self) -> bool:  # the `_Emitter` interface the job may use
        return self.send.parent_alive()

    @property
    def orphaned(self) -> bool:
        return getattr(self.send, "orphaned", False)

    # -------------------------------------------------------------------------------
    def observe(self, event) -> None:
        from studio.core.events import (
            CheckpointSaved,
            EvalLogged,
            Failed,
            Finished,
            PhaseChanged,
            StepLogged,
            Stopped,
        )
        from studio.core.phases import Phase

        if isinstance(event, PhaseChanged):
            phase = Phase.parse(event.phase)
            if self.status is None and phase not in (Phase.CHECKING, Phase.STARTING):
                self._begin(str(phase.value))
            if self.status is not None and self.status.get("phase") != str(phase.value):
                self._update(phase=str(phase.value), message=event.message)
            if self.sampler is not None:
                self.sampler.set_phase(str(phase.value))
        elif self.status is None:
            return
        elif isinstance(event, StepLogged):
            self.status.update(step=event.step, max_steps=event.max_steps, final_loss=event.loss)
            if self.sampler is not None:
                self.sampler.step = event.step
        elif isinstance(event, EvalLogged):
            self.status["final_eval_loss"] = event.eval_loss
        elif isinstance(event, CheckpointSaved):
            self._update(step=event.step, checkpoint=event.path)
        elif isinstance(event, Finished):
            self._end(
                FINISHED,
                step=event.step,
                peak_bytes=event.peak_bytes,
                estimate_bytes=event.estimate_bytes,
                final_loss=event.final_loss,
                checkpoint=None,
                message=f"finished at step {event.step}",
            )
        elif isinstance(event, Stopped):
            self._end(
                STOPPED,
                step=event.step,
                checkpoint=event.checkpoint,
                message=f"stopped at step {event.step}"
                + (", resumable from its checkpoint" if event.checkpoint else ""),
            )
        elif isinstance(event, Failed):
            phase = Phase.parse(event.phase)
            self._end(
                FAILED,
                phase=str(getattr(phase, "value", phase)),
                error_type=event.error_type,
                message=event.message,
            )

    def _begin(self, phase: str) -> None:
        from studio.core.recipe import recipe_to_toml

        previous = read_status(self.output_dir) if self.resume else None
        now = time.time()
        self._session_t0 = time.monotonic()
        self._elapsed_before = float((previous or {}).get("elapsed_s") or 0.0)
        self.status = {
            "format": STATUS_FORMAT,
            "name": self.output_dir.name,
            "output_dir": str(self.output_dir),
            "state": RUNNING,
            "started": (previous or {}).get("started") or now,
            "updated": now,
            "ended": None,
            "elapsed_s": self._elapsed_before,
            "sessions": int((previous or {}).get("sessions") or 0) + 1,
            "pid": os.getpid(),
            "recipe_toml": recipe_to_toml(self.recipe),
            "phase": None,
            "message": "",
            "step": (previous or {}).get("step"),
            "max_steps": self.recipe.training.max_steps,
        }
        register(self.output_dir, how="engine", root=self.root)
        self._write()
        if not self.sample_memory:
            return
        self.sampler = MemorySampler(
            checkpoints_path(self.output_dir) / MEMORY, cuda_device=self._cuda_device
        )
        self.sampler.phase = phase
        self.sampler.start()

    def _cuda_device(self) -> str | None:
        device = (getattr(self.job, "info", None) or {}).get("torch_device")
        return device if device and device.startswith("cuda") else None

    def _update(self, **changes) -> None:
        self.status.update(changes)
        self._write()

    def _write(self) -> None:
        status = self.status
        now = time.time()
        status["updated"] = now
        status["elapsed_s"] = round(self._elapsed_before + time.monotonic() - self._session_t0, 3)
        job = self.job
        if job is not None:
            from studio.core.recipe import recipe_to_toml

            status["recipe_toml"] = recipe_to_toml(job.recipe)  # the compute dtype resolved
            if getattr(job, "estimate", None) is not None:
                status["estimate_bytes"] = int(job.estimate.total_bytes)
            if job.info.get("device"):
                status["device"] = job.info["device"]
        if self.sampler is not None and self.sampler.peak_bytes:
            status["sampled_peak_bytes"] = self.sampler.peak_bytes
        write_status(self.output_dir, status)

    def _end(self, state: str, **changes) -> None:
        if self.sampler is not None:
            self.sampler.stop()
        if state != FINISHED and not changes.get("peak_bytes"):
            changes["peak_bytes"] = self._measured_peak()
        changes = {k: v for k, v in changes.items() if v is not None or k == "checkpoint"}
        self.status.update(state=state, ended=time.time(), **changes)
        self._write()

    def _measured_peak(self) -> int | None:
        device = (getattr(self.job, "info", None) or {}).get("torch_device")
        if not device:
            return None
        try:
            from studio.core.engine.building import measure_peak

            return measure_peak(device).get("bytes")
        except Exception:
            return None


def run_paths(output_dir: str | Path) -> list[Path]:
    """The files and folders that make up a run and exist: its bundle folder, checkpoints
    folder, status file and log (what deleting a run moves to the trash)."""
    output_dir = Path(output_dir)
    candidates = (
        output_dir,
        checkpoints_path(output_dir),
        status_path(output_dir),
        output_dir.with_name(output_dir.name + ".log"),
    )
    return [p for p in candidates if p.exists() or p.is_symlink()]


# ------------------------------------------------------------------------ readers' side
def read_jsonl(path: Path) -> tuple[list[dict], list[str]]:
    """The rows of a JSON-lines file that could be read, and a note per bad line."""
    rows: list[dict] = []
    problems: list[str] = []
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return rows, problems
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            problems.append(f"{path}: line {number} is not valid JSON; it was skipped")
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            problems.append(f"{path}: line {number} is not a JSON object; it was skipped")
    return rows, problems


@dataclass
class RunSummary:
    """What the library knows of one run folder (see `read_run`)."""

    path: Path
    name: str
    state: RunState
    phase: str | None = None
    message: str = ""
    resumable: bool = False
    has_bundle: bool = False
    started: float | None = None
    ended: float | None = None
    duration_s: float | None = None
    recipe: dict | None = None  # the recipe's TOML tree
    steps: int | None = None
    max_steps: int | None = None
    final_loss: float | None = None
    final_eval_loss: float | None = None
    estimate_bytes: int | None = None
    peak_bytes: int | None = None
    device: str | None = None
    problems: list[str] = field(default_factory=list)

    def value(self, dotted: str) -> Any:
        """A recipe value by dotted key (None when unknown)."""
        return flatten_recipe(self.recipe or {}).get(dotted)

    @property
    def model(self) -> str | None:
        return self.value("model.source")

    @property
    def quantization(self) -> str | None:
        mode = self.value("quantization.mode")
        if mode is None:
            return None
        if mode == "4bit":
            kind = self.value("quantization.quant_type") or ""
            double = " +DQ" if self.value("quantization.double_quant") else ""
            return f"{kind.upper()}{double}".strip() or mode
        return str(mode)

    @property
    def rank(self) -> int | None:
        return self.value("lora.r")

    @property
    def status_text(self) -> str:
        """finished / stopped, resumable / failed in <phase> / running / missing."""
        if self.state == STOPPED:
            return "stopped, resumable" if self.resumable else "stopped"
        if self.state == FAILED:
            from studio.core.phases import phase_label

            where = f" in {phase_label(self.phase).lower()}" if self.phase else ""
            return f"failed{where}" + (", resumable" if self.resumable else "")
        return self.state.value

    @property
    def bundle_path(self) -> Path | None:
        return self.path if self.has_bundle else None

    def recipe_object(self):
        """The run's recipe as a `Recipe` (raises `RecipeError` when it cannot be one)."""
        from studio.core.recipe import Recipe, RecipeError

        if self.recipe is None:
            raise RecipeError("recipe", f"{self.path} has no recipe that can be read")
        return Recipe.from_dict(self.recipe)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.path),
            "state": self.state,
            "status": self.status_text,
            "phase": self.phase,
            "message": self.message,
            "resumable": self.resumable,
            "bundle": self.has_bundle,
            "started": _iso(self.started),
            "ended": _iso(self.ended),
            "duration_s": self.duration_s,
            "model": self.model,
            "quantization": self.quantization,
            "rank": self.rank,
            "steps": self.steps,
            "max_steps": self.max_steps,
            "final_loss": self.final_loss,
            "final_eval_loss": self.final_eval_loss,
            "estimate_bytes": self.estimate_bytes,
            "peak_bytes": self.peak_bytes,
            "device": self.device,
            "problems": list(self.problems),
        }


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    import datetime as dt

    return dt.datetime.fromtimestamp(stamp, dt.timezone.utc).isoformat(timespec="seconds")


def _read_toml(path: Path) -> dict | None:
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _toml_text(text: str | None) -> dict | None:
    if not text:
        return None
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except ValueError:
        return None


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _checkpoints(folder: Path) -> list[Path]:
    with contextlib.suppress(OSError):
        return sorted(p for p in folder.glob("checkpoint-*") if p.is_dir())
    return []


def run_files(path: str | Path) -> dict[str, Path | None]:
    """Where a run's recipe, metrics and memory samples are read from: the bundle when there
    is one, else the checkpoints folder (a run stopped, failed or still running)."""
    path = Path(path)
    bundle = (path / MANIFEST).is_file()
    folder = path if bundle else checkpoints_path(path)
    return {
        name: (folder / name) if (folder / name).is_file() else None
        for name in (RECIPE, METRICS, MEMORY)
    }


def read_run(path: str | Path) -> RunSummary:
    """Everything the library shows of the run at ``path``; never raises for a missing or
    damaged run (what could not be read is in ``problems``)."""
    from studio.core.events import EvalLogged, StepLogged, rows_of

    path = Path(path).expanduser().absolute()
    status = read_status(path)
    manifest = None
    if (path / MANIFEST).is_file():
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = None
    ckpt = checkpoints_path(path)
    checkpoints = _checkpoints(ckpt)
    summary = RunSummary(path=path, name=path.name, state=MISSING)
    if status is None and manifest is None and not ckpt.is_dir():
        summary.message = f"{path} is gone (moved or deleted)"
        return summary
    status = status or {}
    summary.has_bundle = manifest is not None
    state = RunState.parse(status.get("state"))
    if manifest is not None and state in (None, FINISHED, RUNNING, STOPPED, FAILED):
        # A bundle is there: the run that wrote it finished (a later attempt over it may not
        # have; its status then says so).
        state = state if state in (RUNNING, STOPPED, FAILED) else FINISHED
    if state == RUNNING and not _pid_alive(status.get("pid")):
        state = FAILED
        summary.message = "the engine process ended without reporting how"
    if state == FINISHED and manifest is None:
        summary.state = MISSING
        summary.message = f"the bundle folder {path} is gone (moved or deleted)"
    else:
        summary.state = state or (STOPPED if checkpoints else FAILED)
    summary.phase = status.get("phase")
    summary.message = summary.message or status.get("message") or ""
    summary.resumable = bool(checkpoints) and summary.state in (STOPPED, FAILED)
    summary.started = status.get("started")
    summary.ended = status.get("ended")
    summary.duration_s = status.get("elapsed_s")
    summary.device = status.get("device")
    files = run_files(path)
    summary.recipe = (
        (_read_toml(files[RECIPE]) if files[RECIPE] else None)
        or _toml_text(status.get("recipe_toml"))
        or (_read_toml(ckpt / RECIPE) if (ckpt / RECIPE).is_file() else None)
    )
    if summary.recipe is None and summary.state != MISSING:
        summary.problems.append(f"{path}: no readable recipe")
    rows: list[dict] = []
    if files[METRICS]:
        rows, problems = read_jsonl(files[METRICS])
        summary.problems.extend(problems)
    steps, evals = rows_of(rows, StepLogged), rows_of(rows, EvalLogged)
    run = (manifest or {}).get("run") or {}
    summary.steps = _last(steps, "step") or run.get("steps") or status.get("step")
    summary.max_steps = _last(steps, "max_steps") or status.get("max_steps")
    summary.final_loss = _last(steps, "loss") or run.get("final_loss") or status.get("final_loss")
    summary.final_eval_loss = (
        _last(evals, "eval_loss") or run.get("final_eval_loss") or status.get("final_eval_loss")
    )
    estimate = (manifest or {}).get("estimate") or {}
    summary.estimate_bytes = estimate.get("total_bytes") or status.get("estimate_bytes")
    measured = (manifest or {}).get("measured_peak") or {}
    summary.peak_bytes = (
        measured.get("bytes") or status.get("peak_bytes") or status.get("sampled_peak_bytes")
    )
    summary.device = summary.device or run.get("device")
    if summary.started is None and manifest is not None:
        summary.started = _parse_created(manifest.get("created")) or _mtime(path)
    if summary.duration_s is None and steps:
        from studio.core.plots import training_seconds

        summary.duration_s = training_seconds(steps)[-1]
    return summary


def _last(rows: Sequence[dict], key: str):
    for row in reversed(rows):
        if row.get(key) is not None:
            return row[key]
    return None


def _parse_created(text) -> float | None:
    import datetime as dt

    try:
        return dt.datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def list_runs(root: str | Path | None = None) -> list[RunSummary]:
    """Every run in the library, newest first (runs whose start is unknown last)."""
    runs = [read_run(path) for path in indexed(root)]
    return sorted(runs, key=lambda r: r.started or 0.0, reverse=True)


def find_run(reference: str, root: str | Path | None = None) -> RunSummary:
    """The run ``reference`` names: a folder (in the library or not), or a run's name in the
    library. Raises LookupError when it names none, or several."""
    path = Path(reference).expanduser()
    if path.is_dir() or status_path(path).is_file() or checkpoints_path(path).is_dir():
        return read_run(path)
    matches = [p for p in indexed(root) if p.name == reference]
    if len(matches) == 1:
        return read_run(matches[0])
    if not matches:
        raise LookupError(
            f"{reference!r} is neither a run folder nor the name of a run in the library "
            f"({index_path(root).parent}); `qlora-studio runs` lists them"
        )
    raise LookupError(
        f"{reference!r} names {len(matches)} runs: "
        + ", ".join(str(p) for p in matches)
        + "; give the folder instead"
    )


# ------------------------------------------------------------------------------ curves
X_KINDS = {"step": "step", "tokens": "tokens seen", "time": "training time"}


@dataclass
class RunCurves:
    """A run's logged steps and evaluations, its memory samples, and what could not be read."""

    steps: list[dict]
    evals: list[dict]
    memory: list[dict]
    problems: list[str]

    def loss_x(self, kind: str) -> list[float]:
        return _x_values(self.steps, kind)

    def eval_x(self, kind: str) -> list[float]:
        """Evaluations placed on the x axis at the step they were made."""
        if kind == "step" or not self.steps:
            return [float(row["step"]) for row in self.evals]
        by_step = dict(zip((r["step"] for r in self.steps), self.loss_x(kind), strict=True))
        xs = []
        for row in self.evals:
            before = [s for s in by_step if s <= row["step"]]
            xs.append(by_step[max(before)] if before else 0.0)
        return xs

    def memory_series(self) -> tuple[list[float], list[float], str]:
        """(seconds, bytes, what): the memory samples, else the steps' figures. On a GPU
        torch's reserved memory, on the CPU the engine process's resident memory."""
        samples = self.memory
        if samples:
            key = (
                "cuda_reserved_bytes"
                if any(s.get("cuda_reserved_bytes") is not None for s in samples)
                else "rss_bytes"
            )
            rows = [s for s in samples if s.get(key) is not None]
            what = "GPU reserved" if key.startswith("cuda") else "process RSS"
            return [float(s.get("elapsed_s") or 0.0) for s in rows], [s[key] for s in rows], what
        from studio.core.plots import training_seconds

        times = training_seconds(self.steps)
        for key, what in (("cuda_reserved_bytes", "GPU reserved"), ("process_rss_bytes", "RSS")):
            pairs = [(t, r[key]) for t, r in zip(times, self.steps, strict=True) if r.get(key)]
            if pairs:
                return [p[0] for p in pairs], [p[1] for p in pairs], what
        return [], [], ""


def _x_values(steps: Sequence[dict], kind: str) -> list[float]:
    if kind == "step":
        return [float(row["step"]) for row in steps]
    from studio.core.plots import training_seconds

    times = training_seconds(steps)
    if kind == "time":
        return times
    if kind != "tokens":
        raise ValueError(f"x axis {kind!r}: choose one of {', '.join(X_KINDS)}")
    # tokens_per_second is measured over the time since the previous logged step, so the
    # tokens seen are its integral over the run's (resumed sessions joined) time.
    seen, total, previous = [], 0.0, 0.0
    for time_s, row in zip(times, steps, strict=True):
        total += float(row.get("tokens_per_second") or 0.0) * max(time_s - previous, 0.0)
        previous = time_s
        seen.append(round(total))
    return seen


def run_curves(run: RunSummary | str | Path) -> RunCurves:
    """A run's curves from its bundle, or from its checkpoints folder while it has none."""
    from studio.core.events import EvalLogged, StepLogged, rows_of

    path = run.path if isinstance(run, RunSummary) else Path(run)
    files = run_files(path)
    rows, problems = read_jsonl(files[METRICS]) if files[METRICS] else ([], [])
    memory, memory_problems = read_jsonl(files[MEMORY]) if files[MEMORY] else ([], [])
    steps = [r for r in rows_of(rows, StepLogged) if isinstance(r.get("step"), int)]
    evals = [r for r in rows_of(rows, EvalLogged) if isinstance(r.get("step"), int)]
    return RunCurves(steps, evals, memory, problems + memory_problems)


# --------------------------------------------------------------------------- recipe diff
def flatten_recipe(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"lora": {"r": 16}}`` → ``{"lora.r": 16}`` (``schema_version`` left out)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if key == "schema_version" and not prefix:
            continue
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_recipe(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def recipe_diff(
    recipes: Sequence[dict | None], *, ignore: Iterable[str] = NAMING_KEYS
) -> list[tuple[str, list[Any]]]:
    """The dotted keys whose values differ between ``recipes`` (TOML trees), each with its
    value in every recipe (None where a recipe lacks the key), in recipe order. A key only
    some recipes have counts as differing. ``output.dir`` (it names the run) is left out."""
    from studio.core.recipe import field_specs

    flats = [flatten_recipe(r or {}) for r in recipes]
    order = {spec.dotted: i for i, spec in enumerate(field_specs())}
    keys = sorted({k for f in flats for k in f}, key=lambda k: (order.get(k, len(order)), k))
    skip = set(ignore)
    diff = []
    for key in keys:
        if key in skip:
            continue
        values = [f.get(key) for f in flats]
        if any(v != values[0] for v in values[1:]):
            diff.append((key, values))
    return diff


# ---------------------------------------------------------------------------- charts
def compare_charts(runs: Sequence[RunSummary], *, x: str = "step"):
    """Two `studio.core.plots.Chart`s: the runs' training (solid) and evaluation (dashed)
    loss against ``x`` (step, tokens or time), and their memory against time with each run's
    estimate as a dashed line, each run in its own colour."""
    from studio.core.plots import GIB, PALETTE, Chart, Series

    loss: list[Series] = []
    memory: list[Series] = []
    notes = []
    for index, run in enumerate(runs):
        color = PALETTE[index % len(PALETTE)]
        curves = run_curves(run)
        if curves.steps:
            ys = [float(r["loss"]) for r in curves.steps]
            loss.append(Series(f"{run.name} train", curves.loss_x(x), ys, color=color))
        if curves.evals:
            ys = [float(r["eval_loss"]) for r in curves.evals]
            loss.append(Series(f"{run.name} eval", curves.eval_x(x), ys, dashed=True, color=color))
        xs, ys, _ = curves.memory_series()
        if xs:
            memory.append(Series(run.name, xs, [y / GIB for y in ys], color=color))
            if run.estimate_bytes:
                est = run.estimate_bytes / GIB
                memory.append(Series(f"{run.name} est.", [xs[0], xs[-1]], [est, est], True, color))
        if not curves.steps:
            notes.append(run.name)
    loss_chart = Chart(
        tuple(loss),
        title="Loss",
        x_label=X_KINDS[x],
        y_label="loss",
        note="" if loss else "no steps were logged",
        x_kind={"step": "integer", "time": "seconds"}.get(x, "number"),
    )
    memory_chart = Chart(
        tuple(memory),
        title="Memory (GiB)",
        x_label="time (seconds)",
        y_label="GiB",
        note="" if memory else "no memory samples",
        y_from_zero=True,
        x_kind="seconds",
    )
    from dataclasses import replace

    from studio.core.plots import CLOCK_FROM_S

    def timed(chart, what):  # seconds, or m:ss once the axis reads as clock time
        clock = chart.axes().x_range[1] >= CLOCK_FROM_S
        return replace(chart, x_label=f"{what} ({'m:ss' if clock else 'seconds'})")

    if x == "time":
        loss_chart = timed(loss_chart, "training time")
    return loss_chart, timed(memory_chart, "time")


def compare_png(runs: Sequence[RunSummary], *, x: str = "step", width: int = 900) -> bytes:
    """One PNG: the loss overlay above the memory overlay (`compare_charts`)."""
    from studio.core.plots import stacked_png

    return stacked_png(compare_charts(runs, x=x), width=width, height=420)


def finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
