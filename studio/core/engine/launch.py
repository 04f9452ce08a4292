"""Running a recipe on several processes (GPUs, machines) through ``accelerate launch``.

`accelerate_command` is the exact command line: ``python -m accelerate.commands.launch``
with the recipe's ``[distributed]`` section as flags (``--multi_gpu`` for DDP, ``--use_fsdp``
and the FSDP-QLoRA settings for FSDP), then ``--module studio.core.engine.rank`` and the
recipe file. docs/cluster.md shows it; `run_launcher` runs it.

`run_launcher` takes the place of `job.run_job` in the engine process when a recipe asks for
more than one process (`runner.EngineRunner` picks it), with the same arguments, so the
runner, the CLI and the window see one engine process with the same events and controls:

- it resolves the model once (a GGUF is converted here, not by every rank at once);
- it listens on a localhost socket (random port, random authkey, passed to the ranks in the
  environment); local rank 0 connects and sends every event, which is relayed as it comes;
  other ranks send only their `Failed`;
- it relays pause / stop / resume to global rank 0 as they change (`rank.SyncedControl` makes
  every rank act on them at the same step), and a stop when the front end is gone;
- it starts accelerate in its own session (a Ctrl-C in the terminal reaches the front end,
  which turns it into a stop, never torchrun, which would kill the ranks at once), and with a
  parent-death signal, so killing the engine process (`EngineRunner.kill`) ends accelerate,
  whose ranks then end themselves (`rank._watch_parent`);
- it ends with exactly one terminal event: rank 0's; else the first rank's `Failed`; else a
  `Failed` with accelerate's exit code and the end of its output (kept in
  ``<output.dir>.launch.log``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from studio.core.engine.rank import CHANNEL_ENV, CHANNEL_KEY_ENV
from studio.core.events import TERMINAL_EVENTS, Failed, LogMessage, PhaseChanged
from studio.core.phases import Phase
from studio.core.recipe import Recipe

RANK_MODULE = "studio.core.engine.rank"
LOG_TAIL_LINES = 40


def launch_log_path(output_dir: str | Path) -> Path:
    """Where accelerate's own output goes: ``<output.dir>.launch.log``."""
    output_dir = Path(output_dir)
    return output_dir.with_name(output_dir.name + ".launch.log")


def runs_on_cpu(recipe: Recipe) -> bool:
    """True when the run trains on the CPU (no GPU, ``device = "cpu"``, simulated GPUs)."""
    from studio.core import gpu, quant

    target = quant.resolve_device(recipe.training.device, gpu.discover_gpus())
    return not target.torch_device.startswith("cuda")


def check_topology(recipe: Recipe) -> None:
    """Raise `RecipeError` when processes, machines and ranks do not fit together."""
    from studio.core.recipe import RecipeError

    for key, message in recipe.distributed.topology_problems().items():
        raise RecipeError(f"distributed.{key}", message)


def accelerate_arguments(recipe: Recipe, *, on_cpu: bool) -> list[str]:
    """``accelerate launch``'s flags for the recipe's ``[distributed]`` section."""
    d = recipe.distributed
    args = [
        "--num_processes",
        str(d.num_processes),
        "--num_machines",
        str(d.num_machines),
        "--machine_rank",
        str(d.machine_rank),
        *(["--main_process_ip", d.main_process_ip.strip()] if d.main_process_ip.strip() else []),
        "--main_process_port",
        str(d.main_process_port),
        "--mixed_precision",
        "no",  # the Trainer sets bf16/fp16 itself from the resolved compute dtype
        "--dynamo_backend",
        "no",
    ]
    if d.strategy == "fsdp":
        # The Hugging Face / Answer.AI FSDP-QLoRA settings: decoder layers as the wrap unit
        # (the model's _no_split_modules), weights loaded on rank 0 only and broadcast, flat
        # parameters (use_orig_params false), sharded checkpoints. On the CPU every process
        # loads the weights itself: accelerate's sync_module_states needs an accelerator
        # ("There are currently no available devices found, must be one of 'XPU', 'CUDA',
        # ..." from its FSDP plugin), and the RAM-efficient loading relies on it.
        args += [
            "--use_fsdp",
            "--fsdp_version",
            "1",
            "--fsdp_sharding_strategy",
            "FULL_SHARD",
            "--fsdp_auto_wrap_policy",
            "TRANSFORMER_BASED_WRAP",
            "--fsdp_backward_prefetch",
            "BACKWARD_PRE",
            "--fsdp_cpu_ram_efficient_loading",
            "false" if on_cpu else "true",
            "--fsdp_sync_module_states",
            "false" if on_cpu else "true",
            "--fsdp_use_orig_params",
            "false",
            "--fsdp_offload_params",
            "true" if d.cpu_offload else "false",
            "--fsdp_state_dict_type",
            "SHARDED_STATE_DICT",
        ]
    elif d.num_processes > 1:
        args.append("--multi_gpu")
    if not on_cpu:  # stated even for "all": a default accelerate config must not pick others
        indices = d.gpu_indices()
        args += ["--gpu_ids", "all" if indices is None else ",".join(str(i) for i in indices)]
    if on_cpu:
        threads = max((os.cpu_count() or 1) // d.processes_per_machine, 1)
        args += ["--num_cpu_threads_per_process", str(threads)]
    return args


def accelerate_command(
    recipe: Recipe,
    recipe_file: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_cpu: bool | None = None,
    python: str | None = None,
) -> list[str]:
    """The whole command line that runs ``recipe_file`` as the recipe's ``[distributed]`` asks."""
    check_topology(recipe)
    if on_cpu is None:
        on_cpu = runs_on_cpu(recipe)
    command = [python or sys.executable, "-m", "accelerate.commands.launch"]
    command += accelerate_arguments(recipe, on_cpu=on_cpu)
    command += ["--module", RANK_MODULE, str(recipe_file)]
    if resume:
        command.append("--resume")
    if overwrite:
        command.append("--overwrite")
    return command


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """In the accelerate process (before exec): SIGKILL when the engine process dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _Launch:
    """The relay of the module docstring; `run` returns the terminal event it emitted."""

    def __init__(self, recipe: Recipe, resume: bool, overwrite: bool, emit, control):
        self.recipe = recipe
        self.resume = resume
        self.overwrite = overwrite
        self._emitter = emit
        self._emit_lock = threading.Lock()  # several reader threads send over one pipe
        self.control = control
        self.terminal = None
        self.rank_failures: list[tuple[int, Failed]] = []
        self.primary_conn = None
        self.phase = Phase.STARTING
        self._lock = threading.Lock()
        self._sent_state = None

    def _send(self, event) -> None:
        with self._emit_lock:
            self._emitter(event)

    # -- events from the ranks -----------------------------------------------------------
    def _serve(self, listener) -> None:
        readers = []
        while True:
            try:
                conn = listener.accept()
            except (OSError, EOFError):
                break
            except Exception:  # a stranger with the wrong key: ignore it
                continue
            thread = threading.Thread(target=self._read_rank, args=(conn,), daemon=True)
            thread.start()
            readers.append(thread)
        self.readers = readers

    def _read_rank(self, conn) -> None:
        try:
            hello = conn.recv()
        except (EOFError, OSError):
            return
        rank = int(hello.get("rank", -1))
        primary = int(hello.get("local_rank", -1)) == 0
        self._send(LogMessage("info", f"Process {rank} is running (pid {hello.get('pid')})."))
        if rank == 0:
            with self._lock:
                self.primary_conn = conn
                self._sent_state = None  # send the current control state at once
        while True:
            try:
                event = conn.recv()
            except (EOFError, OSError):
                return
            except Exception as exc:
                event = LogMessage("warning", f"an engine event could not be read: {exc}")
            if primary:
                if isinstance(event, PhaseChanged):
                    self.phase = event.phase
                if isinstance(event, TERMINAL_EVENTS):
                    with self._lock:
                        if self.terminal is not None:
                            continue
                        self.terminal = event
                self._send(event)
            elif isinstance(event, Failed):
                with self._lock:
                    self.rank_failures.append((rank, event))

    # -- control to rank 0 ---------------------------------------------------------------
    def _control_state(self) -> str:
        if self.control.stop_requested or not self._emitter.parent_alive():
            return "stop"
        return "pause" if self.control.pause_requested else "run"

    def _relay_control(self) -> None:
        state = self._control_state()
        with self._lock:
            conn = self.primary_conn
            if conn is None or state == self._sent_state:
                return
            try:
                conn.send(state)
                self._sent_state = state
            except (OSError, EOFError, BrokenPipeError):
                self.primary_conn = None

    # -- the run ---------------------------------------------------------------------------
    def _resolve_model_once(self) -> None:
        from studio.core import models

        def progress(what: str, fraction: float | None) -> None:
            phase = Phase.CONVERTING if "convert" in what else Phase.RESOLVING
            self._send(PhaseChanged(phase, what, fraction))

        # A failure here is left to the ranks, which report it as a single run does.
        with contextlib.suppress(Exception):
            models.resolve_model(
                self.recipe.model.source,
                progress=progress,
                trust_remote_code=self.recipe.model.trust_remote_code,
            )

    def run(self):
        from multiprocessing.connection import Listener

        from studio.core.recipe import save_recipe

        d = self.recipe.distributed
        self._send(
            PhaseChanged(
                Phase.STARTING,
                f"launching {d.processes_per_machine} {d.strategy.upper()} processes "
                f"with accelerate"
                + (
                    f" (machine {d.machine_rank} of {d.num_machines})" if d.num_machines > 1 else ""
                ),
            )
        )
        check_topology(self.recipe)
        self._resolve_model_once()
        on_cpu = runs_on_cpu(self.recipe)
        workdir = Path(tempfile.mkdtemp(prefix="qlora-studio-launch-"))
        recipe_file = save_recipe(self.recipe, workdir / "recipe.toml")
        key = os.urandom(16)
        listener = Listener(("127.0.0.1", 0), authkey=key)
        host, port = listener.address
        env = dict(os.environ)
        env[CHANNEL_ENV] = f"{host}:{port}"
        env[CHANNEL_KEY_ENV] = key.hex()
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        launched = self.recipe
        if d.num_machines == 1:  # the port matters between machines only: take a free one
            free = replace(d, main_process_port=_free_port())
            launched = replace(self.recipe, distributed=free)
        command = accelerate_command(
            launched, recipe_file, resume=self.resume, overwrite=self.overwrite, on_cpu=on_cpu
        )
        log_path = launch_log_path(self.recipe.output.dir)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._send(LogMessage("info", f"Launching: {' '.join(command)} (output in {log_path})"))
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C must not reach torchrun
                preexec_fn=_die_with_parent,  # no threads of ours exist yet
            )
        server = threading.Thread(target=self._serve, args=(listener,), daemon=True)
        server.start()
        try:
            while process.poll() is None:
                self._relay_control()
                time.sleep(0.1)
        finally:
            with contextlib.suppress(OSError):
                listener.close()
        # Let the readers take the last events (the ranks have ended, so their sockets close).
        deadline = time.monotonic() + 10
        server.join(max(deadline - time.monotonic(), 0))
        for reader in getattr(self, "readers", []):
            reader.join(max(deadline - time.monotonic(), 0))
        with contextlib.suppress(OSError):
            recipe_file.unlink()
            workdir.rmdir()
        with self._lock:
            if self.terminal is not None:
                return self.terminal
            self.terminal = self._failure(process.returncode, log_path)
        self._send(self.terminal)
        return self.terminal

    def _failure(self, code: int, log_path: Path) -> Failed:
        if self.rank_failures:
            rank, failed = sorted(self.rank_failures, key=lambda item: item[0])[0]
            return Failed(
                failed.phase,
                failed.error_type,
                f"Process {rank} of {self.recipe.distributed.num_processes} failed: "
                f"{failed.message}",
                failed.details,
            )
        try:
            lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            lines = []
        tail = "\n".join(lines[-LOG_TAIL_LINES:])
        return Failed(
            self.phase,
            "LaunchFailed",
            f"accelerate launch ended with exit code {code} before the run reported its end. "
            f"Its output is in {log_path}; checkpoints already written are kept, so resume can "
            "continue from the last one.",
            tail,
        )


def run_launcher(
    recipe: Recipe, resume: bool, overwrite: bool, conn, control, parent_pid=None, niceness=0
):
    """The engine process's entry point for a multi-process recipe (as `job.run_job`)."""
    from studio.core.engine.errors import failure_from_exception
    from studio.core.engine.job import _Emitter

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if niceness > 0 and hasattr(os, "nice"):
        os.nice(niceness)
    from studio.core.runs import RunRecorder

    emit = _Emitter(conn, parent_pid)
    # The run library (studio.core.runs): index and status; the workers' memory is theirs.
    emit = RunRecorder(recipe, resume=resume, send=emit, sample_memory=False)
    launch = _Launch(recipe, resume, overwrite, emit, control)
    try:
        result = launch.run()
    except BaseException as exc:
        result = failure_from_exception(exc, launch.phase)
        launch._send(result)
    with contextlib.suppress(OSError):
        conn.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if isinstance(result, Failed) else 0)


def main(argv: list[str] | None = None) -> int:
    """``python -m studio.core.engine.launch RECIPE.toml [--resume]``: print the exact
    ``accelerate launch`` command for the recipe (docs/cluster.md), for a cluster script."""
    import argparse
    import shlex

    from studio.core.recipe import RecipeError, load_recipe

    parser = argparse.ArgumentParser(prog="python -m studio.core.engine.launch")
    parser.add_argument("recipe")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--cpu", action="store_true", help="the command for CPU processes")
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe)
        command = accelerate_command(
            recipe,
            Path(args.recipe).resolve(),
            resume=args.resume,
            on_cpu=True if args.cpu else None,
            python="python",
        )
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(shlex.join(command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
