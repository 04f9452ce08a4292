"""One process of a multi-process run: the same `Job`, run by every rank under accelerate.

``python -m studio.core.engine.rank RECIPE.toml [--resume] [--overwrite]`` is what
``accelerate launch`` starts in each process (see `launch`); every process runs the job's
phases, the Trainer does the distributed work (DDP or FSDP, set up by accelerate from the
environment the launcher gives), and these rules keep the run one run:

- Events: the process with local rank 0 sends every event over the channel to its launcher
  (`launch.run_launcher`, which relays them to the runner); the others send only their
  `Failed`, so a crash on any rank is reported with its own message. Without a channel
  (started by hand under ``accelerate launch`` on a cluster) local rank 0 prints the events.
- Control: global rank 0 reads pause / stop from the channel, and every question the job asks
  (`SyncedControl`) is answered by a broadcast of rank 0's answer, so all ranks pause and stop
  at the same step. The questions are asked in the same order on every rank, because every
  rank runs the same code and gets the same answers.
- Files: only global rank 0 takes the output lock, removes old checkpoints, writes
  ``metrics.jsonl``, the checkpoint manifests and the bundle; the others wait where it matters
  (a barrier before each manifest, rank 0's choice of checkpoint broadcast on resume).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from datetime import timedelta

from studio.core.engine.job import Job, _Emitter
from studio.core.events import Failed, Finished, to_dict

CHANNEL_ENV = "QLORA_STUDIO_CHANNEL"  # host:port of the launcher's listener
CHANNEL_KEY_ENV = "QLORA_STUDIO_CHANNEL_KEY"  # its authkey, hex
PROCESS_GROUP_TIMEOUT_S = 1800


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def rank_info() -> tuple[int, int, int]:
    """(global rank, local rank, world size) from the launcher's environment."""
    return _env_int("RANK", 0), _env_int("LOCAL_RANK", 0), _env_int("WORLD_SIZE", 1)


# --------------------------------------------------------------------------- control


class _ChannelControl:
    """Rank 0's view of the launcher's control messages ('run', 'pause', 'stop')."""

    def __init__(self, conn):
        self.conn = conn
        self.state = "run"
        self.lost = False
        self._changed = threading.Event()
        if conn is not None:
            threading.Thread(target=self._read, name="qlora-studio-control", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                self.lost = True  # the launcher is gone: stop with a checkpoint
                self._changed.set()
                return
            except Exception:
                continue
            if message in ("run", "pause", "stop"):
                self.state = message
                self._changed.set()

    @property
    def stop(self) -> bool:
        return self.state == "stop" or self.lost

    @property
    def pause(self) -> bool:
        return self.state == "pause"

    def wait(self, seconds: float) -> None:
        self._changed.wait(seconds)
        self._changed.clear()


class SyncedControl:
    """The job's control channel and stop test, the same answer on every rank.

    Each question is one broadcast of rank 0's two flags (stop, pause) on a gloo group, so a
    rank never decides alone. Has the interface the job and `callbacks.EngineCallback` use:
    `should_stop`, `stop_requested`, `pause_requested`, `hold_while_paused`.
    """

    def __init__(self, source: _ChannelControl | None, group, rank: int):
        self.source = source
        self.group = group
        self.rank = rank

    def _flags(self) -> tuple[bool, bool]:
        import torch
        import torch.distributed as dist

        flags = torch.zeros(2, dtype=torch.int32)
        if self.rank == 0 and self.source is not None:
            flags[0] = int(self.source.stop)
            flags[1] = int(self.source.pause)
        dist.broadcast(flags, src=0, group=self.group)
        return bool(flags[0]), bool(flags[1])

    def should_stop(self) -> bool:
        return self._flags()[0]

    @property
    def stop_requested(self) -> bool:
        return self._flags()[0]

    @property
    def pause_requested(self) -> bool:
        stop, pause = self._flags()
        return pause and not stop

    def hold_while_paused(self, poll_s: float = 0.1) -> None:
        # Rank 0 waits for news; the others go straight to the next question, whose broadcast
        # waits for rank 0.
        if self.rank == 0 and self.source is not None:
            self.source.wait(poll_s)


# --------------------------------------------------------------------------- events


class _RankEmitter:
    """Sends events to the launcher: all of them from the primary process, else Failed only."""

    def __init__(self, conn, primary: bool, rank: int):
        self.primary = primary
        self.rank = rank
        self.inner = _Emitter(conn, None) if conn is not None else None

    def __call__(self, event) -> None:
        if self.inner is None:
            if self.primary:
                _print_event(event)
            elif isinstance(event, Failed):
                _print_event(event, prefix=f"[rank {self.rank}] ")
            return
        if self.primary or isinstance(event, Failed):
            self.inner(event)

    def parent_alive(self) -> bool:
        return self.inner is None or self.inner.parent_alive()


def _print_event(event, prefix: str = "") -> None:
    """Headless output when no front end listens (a cluster job's log)."""
    from studio.core import events as ev

    if isinstance(event, ev.StepLogged):
        line = f"step {event.step}/{event.max_steps} loss {event.loss:.4f}"
    elif isinstance(event, ev.PhaseChanged):
        line = f"[{event.phase}] {event.message}"
    elif isinstance(event, ev.LogMessage):
        line = (
            f"  {event.message}" if event.level == "info" else f"  {event.level}: {event.message}"
        )
    elif isinstance(event, ev.Failed):
        line = f"error: the job failed while {event.phase} ({event.error_type}):\n{event.message}"
    else:
        line = f"{type(event).__name__}: {to_dict(event)}"
    print(prefix + line, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the job


class _NoLock:
    def release(self) -> None:
        pass


class DistributedJob(Job):
    """`Job` with the file rules of the module docstring; everything else is the same code."""

    def __init__(self, *args, rank: int, world_size: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.rank = rank
        self.world_size = world_size

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def fsdp(self) -> bool:
        return self.recipe.distributed.strategy == "fsdp"

    def _bnb_config(self, quantization, compute_dtype: str):
        # FSDP-QLoRA: the packed 4-bit weights stored in the compute dtype, so that a decoder
        # layer's tensors share one dtype and flatten into one shardable parameter.
        from studio.core import quant

        storage = compute_dtype if self.fsdp else "uint8"
        return quant.make_bnb_config(quantization, compute_dtype, quant_storage=storage)

    def _take_lock(self):
        return super()._take_lock() if self.main else _NoLock()

    def _check_output(self) -> None:
        if self.main:
            super()._check_output()

    def _resume_checkpoint(self):
        import torch.distributed as dist

        chosen = (
            [str(path) if (path := super()._resume_checkpoint()) else None] if self.main else [None]
        )
        dist.broadcast_object_list(chosen, src=0)
        from pathlib import Path

        return Path(chosen[0]) if chosen[0] else None

    def _record_metric(self, event) -> None:
        if self.main:
            super()._record_metric(event)
        else:
            self.metrics.append(to_dict(event))

    def _build_trainer(self, model, tokenizer, prepared, device):
        trainer, callback = super()._build_trainer(model, tokenizer, prepared, device)
        # Every rank writes its own files into a checkpoint (rng_state_<rank>.pth): wait for
        # all of them before rank 0's manifest lists the checkpoint's files.
        trainer.callback_handler.callbacks.insert(0, _barrier_on_save())
        plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
        if self.fsdp and plugin is not None:
            # PEFT's policy: decoder layers as units, and each trainable LoRA matrix its own
            # unit, so no flat parameter mixes frozen 4-bit storage with trainable fp32.
            from peft.utils.other import fsdp_auto_wrap_policy

            plugin.auto_wrap_policy = fsdp_auto_wrap_policy(trainer.model)
        self._trainer = trainer
        return trainer, callback

    def _save_bundle(self, model, tokenizer, step: int, measured: dict):
        import torch.distributed as dist

        peaks: list = [None] * self.world_size
        dist.all_gather_object(peaks, measured.get("bytes"))
        measured = dict(measured)
        measured["per_process_bytes"] = peaks
        measured["processes"] = self.world_size
        if all(p is not None for p in peaks):
            measured["bytes"] = max(peaks)  # the largest process's peak: what one GPU must hold
        if self.fsdp:
            model = _GatheredAdapter(model, _full_state_dict(self._trainer))
        if self.main:
            return super()._save_bundle(model, tokenizer, step, measured)
        return Finished(
            bundle_dir=str(self.output_dir),
            step=step,
            peak_bytes=measured.get("bytes"),
            estimate_bytes=self.estimate.total_bytes if self.estimate is not None else None,
            final_loss=None,
        )


def _full_state_dict(trainer) -> dict | None:
    """The FSDP model's whole state dict, gathered unit by unit to rank 0's CPU memory (every
    rank must call it; the others get None), as Answer.AI's train.py saves its adapters."""
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    wrapped = trainer.model_wrapped
    config = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
    # Set, not the state_dict_type context: training is over, and restoring the settings
    # accelerate made fails in torch 2.13 (their recorded type is None: KeyError on exit).
    FSDP.set_state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, config)
    state = wrapped.state_dict()
    if not state:
        return None
    # The Trainer's wrapper names everything "module.<name>"; PEFT wants the model's names.
    prefix = "module."
    return {k.removeprefix(prefix): v for k, v in state.items()}


class _GatheredAdapter:
    """The PEFT model for `Job._save_bundle`, saving the adapter from a gathered state dict
    (the FSDP shards are not whole weights): the same adapter files a one-GPU run writes."""

    def __init__(self, model, state_dict):
        self.model = model
        self.state_dict = state_dict

    def save_pretrained(self, folder, **kwargs):
        return self.model.save_pretrained(folder, state_dict=self.state_dict, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


def _barrier_on_save():
    from transformers import TrainerCallback

    class BarrierOnSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            import torch.distributed as dist

            dist.barrier()

    return BarrierOnSave()


# --------------------------------------------------------------------------- entry point


def _watch_parent() -> None:
    """End this process when its launcher (the torchrun agent) is gone: a killed job must
    not leave ranks behind."""
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="qlora-studio-parent-watch", daemon=True).start()


def _connect(rank: int, local_rank: int):
    address = os.environ.get(CHANNEL_ENV)
    if not address:
        return None
    from multiprocessing.connection import Client

    host, _, port = address.rpartition(":")
    key = bytes.fromhex(os.environ.get(CHANNEL_KEY_ENV, ""))
    conn = Client((host, int(port)), authkey=key)
    conn.send({"hello": True, "rank": rank, "local_rank": local_rank, "pid": os.getpid()})
    return conn


def _device_for_rank(recipe, local_rank: int):
    """The recipe with ``training.device`` set to this rank's GPU (``cuda:<local rank>``; the
    launcher made the chosen GPUs the visible ones), unchanged for the CPU (and simulated
    GPUs); and whether it is a GPU run."""
    from studio.core import gpu, quant

    target = quant.resolve_device(recipe.training.device, gpu.discover_gpus())
    if not target.torch_device.startswith("cuda"):
        return recipe, False
    training = replace(recipe.training, device=f"cuda:{local_rank}")
    return replace(recipe, training=training), True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.core.engine.rank")
    parser.add_argument("recipe")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    # Before torch is imported, as in a one-process engine: a repeatable peak.
    from studio.core.engine.allocator import configure_allocator

    configure_allocator()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    if hasattr(signal, "SIGUSR1"):
        import faulthandler

        faulthandler.register(signal.SIGUSR1, all_threads=True)
    rank, local_rank, world_size = rank_info()
    conn = _connect(rank, local_rank)
    if conn is not None:
        _watch_parent()
    emit = _RankEmitter(conn, primary=local_rank == 0, rank=rank)
    try:
        from studio.core.recipe import load_recipe

        recipe, on_cuda = _device_for_rank(load_recipe(args.recipe), local_rank)
        if recipe.distributed.strategy == "fsdp":
            # Every weight in the compute dtype (no fp32 upcast): FSDP flattens a layer's
            # tensors into one parameter of one dtype (Recipe.notes says so).
            quantization = replace(recipe.quantization, fp32_upcast=False)
            recipe = replace(recipe, quantization=quantization)
        import torch
        import torch.distributed as dist

        if on_cuda:
            torch.cuda.set_device(local_rank)
        timeout = timedelta(seconds=PROCESS_GROUP_TIMEOUT_S)
        dist.init_process_group(backend="nccl" if on_cuda else "gloo", timeout=timeout)
        group = dist.new_group(backend="gloo", timeout=timeout) if on_cuda else dist.group.WORLD
    except BaseException as exc:  # before the job exists: still one Failed, naming the rank
        from studio.core.engine.errors import failure_from_exception
        from studio.core.phases import Phase

        emit(failure_from_exception(exc, Phase.STARTING))
        return 1
    source = _ChannelControl(conn) if rank == 0 else None
    control = SyncedControl(source, group, rank)
    recorder = None
    if rank == 0:  # the run library records the run once, from process 0 (as run_job does)
        from studio.core.runs import RunRecorder

        recorder = emit = RunRecorder(recipe, resume=args.resume, send=emit)
    job = DistributedJob(
        recipe,
        resume=args.resume,
        overwrite=args.overwrite,
        emit=emit,
        control=control,
        should_stop=control.should_stop,
        rank=rank,
        world_size=world_size,
    )
    if recorder is not None:
        recorder.job = job
    result = job.run()
    if conn is not None:
        with contextlib.suppress(OSError):
            conn.close()
    return 1 if isinstance(result, Failed) else 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as run_job: no interpreter teardown behind a finished job
