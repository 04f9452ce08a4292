"""The job: one run of a recipe inside the engine process, phase by phase.

`run_job` is the child process's entry point (see `runner.EngineRunner`). The phases are
those of `studio.core.phases.Phase`: resolving the model (converting a GGUF once), loading
and quantizing it, preparing it for k-bit training (the fp32 upcast is a recipe option),
applying LoRA, tokenizing the dataset, training with the transformers Trainer, and saving
the bundle. Each phase emits `PhaseChanged`; training emits what `callbacks.EngineCallback`
reports; the job ends with exactly one terminal event: `Finished`, `Stopped` or `Failed`.

Files: checkpoints go to ``<output.dir>.checkpoints/checkpoint-<step>/`` (HF Trainer
checkpoints), beside a ``metrics.jsonl`` that survives a killed process so a resumed run's
bundle still has the whole history. The bundle is written only at the end, atomically, and
the checkpoints are removed once it is in place.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import os
import shutil
import signal
import sys
import warnings
from dataclasses import replace
from pathlib import Path

from studio.core.engine.building import (
    apply_lora,
    keep_4bit_weights_trainable,
    measure_peak,
    prepare_for_training,
    training_arguments,
)
from studio.core.engine.checkpoints import (
    checkpoint_step,
    checkpoints_dir,
    last_checkpoint,
    manifest_callback,
    scan_checkpoints,
)
from studio.core.engine.errors import (
    OutputExistsError,
    failure_from_exception,
    is_bad_input,
)
from studio.core.engine.output import check_start, inspect_output
from studio.core.engine.runlog import log_failure, with_log_reference
from studio.core.events import (
    EvalLogged,
    Failed,
    Finished,
    LogMessage,
    PhaseChanged,
    StepLogged,
    Stopped,
    event_from_dict,
    rows_of,
    to_dict,
)
from studio.core.phases import Phase
from studio.core.recipe import Recipe, recipe_to_toml
from studio.core.units import format_bytes

RUN_METRICS = "metrics.jsonl"
RUN_RECIPE = "recipe.toml"
MEMORY_SAMPLES = "memory.jsonl"  # written by studio.core.runs.MemorySampler
_LIBRARY_LOGGERS = ("transformers", "peft", "accelerate", "bitsandbytes", "datasets", "torch")


class _StopBeforeTraining(Exception):
    """A stop arrived between phases, before the Trainer ran."""


class _Emitter:
    """Sends events to the parent; notices when the parent is gone."""

    def __init__(self, conn, parent_pid: int | None):
        self.conn = conn
        self.parent_pid = parent_pid
        self.orphaned = False

    def __call__(self, event) -> None:
        if self.orphaned:
            return
        try:
            self.conn.send(event)
        except (BrokenPipeError, EOFError, OSError):
            self.orphaned = True

    def parent_alive(self) -> bool:
        if self.orphaned:
            return False
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            self.orphaned = True
        return not self.orphaned


class _EventLogHandler(logging.Handler):
    """Library warnings become LogMessage events (each distinct message once)."""

    def __init__(self, emit):
        super().__init__(level=logging.WARNING)
        self.emit_event = emit
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage().strip()
        except Exception:  # a broken log call must never break the job
            return
        if message and message not in self.seen:
            self.seen.add(message)
            level = record.levelname.lower()
            if "pip install kernels" in message:
                # bitsandbytes' optional CPU kernels: nothing is wrong, it is only slower.
                level = "info"
                message = (
                    "bitsandbytes runs 4-bit matmuls on the CPU with its built-in code "
                    "(the optional 'kernels' package is not installed)"
                )
            self.emit_event(LogMessage(level, message))


def run_job(
    recipe: Recipe, resume: bool, overwrite: bool, conn, control, parent_pid=None, niceness=0
):
    """Entry point of the engine process: run ``recipe`` and end the process.

    Ctrl-C in a terminal reaches the whole process group; the parent turns it into a stop
    request, so the child ignores SIGINT itself.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Before torch is imported: a repeatable (and estimable) peak; see engine/allocator.py.
    from studio.core.engine.allocator import configure_allocator

    configure_allocator()
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 <pid>` prints every thread's stack
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    if hasattr(signal, "pthread_sigmask"):  # the runner blocked it while starting us
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if niceness > 0 and hasattr(os, "nice"):
        os.nice(niceness)
    # NVML (discovery, the GUI) numbers GPUs in PCI bus order; make cuda:N the same card.
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    emit = _Emitter(conn, parent_pid)
    from studio.core.runs import RunRecorder

    # The run library (studio.core.runs): status file, index and memory samples.
    recorder = RunRecorder(recipe, resume=resume, send=emit)
    job = Job(
        recipe,
        resume=resume,
        overwrite=overwrite,
        emit=recorder,
        control=control,
        should_stop=lambda: control.stop_requested or not emit.parent_alive(),
    )
    recorder.job = job
    result = job.run()
    with contextlib.suppress(OSError):
        conn.close()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: library threads and atexit hooks must not keep a finished
    # job alive; everything the job owes the parent has been sent.
    os._exit(1 if isinstance(result, Failed) else 0)


class Job:
    """One run of a recipe; `run` returns (and emits) the terminal event."""

    def __init__(
        self, recipe: Recipe, *, resume: bool, overwrite: bool, emit, control, should_stop
    ):
        self.recipe = recipe
        self.resume = resume
        self.overwrite = overwrite
        self.emit = emit
        self.control = control
        self.should_stop = should_stop
        self.phase = Phase.CHECKING
        self.estimate = None
        self.metrics: list[dict] = []
        self.output_dir = Path(recipe.output.dir)
        self.ckpt_dir = checkpoints_dir(self.output_dir)
        self.info: dict = {}

    # ---------------------------------------------------------------------------- helpers
    def _phase(self, phase: str, message: str = "", progress: float | None = None) -> None:
        self.phase = phase
        self.emit(PhaseChanged(phase, message, progress))

    def _log(self, message: str, level: str = "info") -> None:
        self.emit(LogMessage(level, message))

    def _check_stop(self) -> None:
        if self.should_stop():
            raise _StopBeforeTraining()

    def _capture_library_output(self) -> None:
        handler = _EventLogHandler(self.emit)
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_default_handler()
            hf_logging.disable_progress_bar()
        except Exception:
            pass
        try:
            import datasets

            datasets.disable_progress_bars()
        except Exception:
            pass
        for name in _LIBRARY_LOGGERS:
            logger = logging.getLogger(name)
            logger.addHandler(handler)
        seen: set[str] = set()

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, (DeprecationWarning, FutureWarning)):
                return  # API renames inside the libraries: nothing a user can act on
            text = f"{category.__name__}: {message}"
            if text not in seen:
                seen.add(text)
                self.emit(LogMessage("warning", text))

        warnings.showwarning = show

    # -------------------------------------------------------------------------------- run
    def run(self):
        """Run every phase; returns the terminal event after emitting it.

        The output folder's lock (`studio.core.engine.lock`) is held from the first check to
        the terminal event, and released on every way out of here.
        """
        lock = None
        try:
            self._capture_library_output()
            self._phase(Phase.CHECKING, f"checking {self.output_dir}")
            lock = self._take_lock()
            self._check_output()
            result = self._run_phases()
        except _StopBeforeTraining:
            checkpoint = last_checkpoint(self.ckpt_dir)
            step = checkpoint_step(checkpoint) if checkpoint else 0
            result = Stopped(step=step, checkpoint=str(checkpoint) if checkpoint else None)
        except BaseException as exc:  # every failure becomes an event, whatever it is
            result = self._failure(exc)
        finally:
            if lock is not None:
                lock.release()
        self.emit(result)
        return result

    def _failure(self, exc: BaseException) -> Failed:
        """The Failed event for ``exc``; its traceback goes to the run's log file, which the
        message names (a front end shows the message, never the traceback)."""
        try:
            kept = last_checkpoint(self.ckpt_dir)
        except Exception:
            kept = None
        failed = failure_from_exception(
            exc,
            self.phase,
            estimate=self.estimate,
            folders=(self.ckpt_dir, self.output_dir.parent),
            kept=str(kept) if kept else None,
        )
        try:
            path = log_failure(self.output_dir, failed)
        except Exception:
            path = None
        if not is_bad_input(failed):
            failed = replace(failed, message=with_log_reference(failed.message, path))
        return failed

    def _take_lock(self):
        """Hold the output folder's lock; refuse (OutputLockedError) while another run has it."""
        from studio.core.atomic import clean_stale_siblings
        from studio.core.engine.lock import acquire, describe_holder

        lock = acquire(self.output_dir, command=f"qlora-studio engine for {self.output_dir}")
        if lock.took_over:
            self._log(
                f"Took over the lock {lock.path} from {describe_holder(lock.took_over)}, "
                "which ended without releasing it.",
                "warning",
            )
        # Folders left half-written by a run that was killed while it saved (we hold the lock,
        # so no other run of this output is writing them).
        from studio.core.runs import status_path

        # The status file is rewritten at every phase, so a kill can strand its temporary too.
        for target in (self.output_dir, status_path(self.output_dir)):
            for stale in clean_stale_siblings(target, legacy=True):
                self._log(f"Removed {stale}, left behind by a run killed while it saved.")
        return lock

    def _check_output(self) -> None:
        """Refuse to start when the bundle or an earlier run's checkpoints would be lost."""
        check_start(inspect_output(self.output_dir), resume=self.resume, overwrite=self.overwrite)
        if not self.resume and self.ckpt_dir.exists():
            shutil.rmtree(self.ckpt_dir)

    def _run_phases(self):
        recipe = self.recipe
        import torch

        from studio.core import gpu, memory, models, quant

        # resolving (+ converting)
        self._phase(Phase.RESOLVING, f"finding the model {recipe.model.source}")
        device = quant.resolve_device(recipe.training.device, gpu.discover_gpus())
        compute_dtype = quant.resolve_compute_dtype(recipe.quantization.compute_dtype, device)
        recipe = replace(
            recipe, quantization=replace(recipe.quantization, compute_dtype=compute_dtype)
        )
        self.recipe = recipe
        resolved = models.resolve_model(
            recipe.model.source,
            progress=self._model_progress,
            trust_remote_code=recipe.model.trust_remote_code,
        )
        self.phase = Phase.RESOLVING
        # A model the libraries cannot build, or LoRA targets it does not have, is bad input.
        shape = models.read_shape(resolved, trust_remote_code=recipe.model.trust_remote_code)
        from studio.core.engine.validation import check_recipe_against_shape

        check_recipe_against_shape(recipe, shape)
        try:
            self.estimate = memory.estimate(shape, recipe, device)
        except Exception as exc:  # the estimate informs; it must not block training
            self._log(f"No memory estimate for this model: {exc}", "warning")
        self.info.update(
            base_model={
                "source": resolved.source,
                "kind": resolved.kind,
                "path": str(resolved.path),
                "display_name": resolved.display_name,
                "summary": shape.summary() if shape is not None else None,
            },
            device=device.name,
            torch_device=device.torch_device,
            compute_dtype=compute_dtype,
        )
        on_cuda = device.torch_device.startswith("cuda")
        self._log(
            f"Device: {device.name}"
            + ("" if on_cuda or device.gpu is None else "; training runs on the CPU")
            + f"; compute dtype {compute_dtype}"
        )
        if self.estimate is not None:
            self._log(
                f"Memory estimate: {format_bytes(self.estimate.total_bytes)} "
                f"({self.estimate.verdict})"
            )
        self._check_stop()

        # loading + quantizing
        self._phase(Phase.LOADING, f"loading {resolved.display_name}")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        trc = recipe.model.trust_remote_code
        tokenizer = AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=trc)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(device.torch_device)
        bnb_config = self._bnb_config(recipe.quantization, compute_dtype)
        load_kwargs = {
            "dtype": quant.torch_dtype(compute_dtype),
            "device_map": {"": device.torch_device},
            "trust_remote_code": trc,
        }
        if bnb_config is not None:
            load_kwargs["quantization_config"] = bnb_config
            self._phase(Phase.LOADING, f"loading and quantizing to {recipe.quantization.mode}")
        model = AutoModelForCausalLM.from_pretrained(resolved.path, **load_kwargs)
        model.config.use_cache = False
        keep_4bit_weights_trainable(model)
        weights = memory.measure_model_bytes(model)
        self.info["measured_weights_bytes"] = weights
        self._log(
            f"Loaded model holds {format_bytes(weights)}"
            + (
                f" (estimate {format_bytes(self.estimate.weights_bytes)})"
                if self.estimate is not None
                else ""
            )
        )
        self._check_stop()

        # preparing
        self._phase(Phase.PREPARING, "preparing the model for k-bit training")
        model = prepare_for_training(
            model,
            quantized=bnb_config is not None,
            upcast=recipe.quantization.fp32_upcast,
            gradient_checkpointing=recipe.training.gradient_checkpointing,
        )
        self._check_stop()

        # applying_lora
        self._phase(Phase.APPLYING_LORA, f"adding LoRA r={recipe.lora.r}")
        from transformers import set_seed

        set_seed(recipe.training.seed)  # LoRA's initial A matrices come from the global RNG
        model = apply_lora(model, recipe.lora)
        trainable, total = model.get_nb_trainable_parameters()
        self._log(
            f"LoRA: {trainable:,} trainable parameters ({100 * trainable / total:.2f}% of "
            f"{total:,})"
        )
        self._check_stop()

        # tokenizing
        self._phase(Phase.TOKENIZING, f"tokenizing {recipe.dataset.path}")
        from studio.core import data

        prepared = data.prepare_datasets(recipe.dataset, tokenizer, seed=recipe.training.seed)
        self.info["dataset_format"] = prepared.format
        stats = prepared.stats
        self._log(prepared.explanation)
        summary = stats.summary() if hasattr(stats, "summary") else str(stats)
        self._log(f"Dataset: {summary}")
        if stats.truncated:
            self._log(
                f"{stats.truncated} of {stats.examples} examples are longer than "
                f"dataset.max_length = {recipe.dataset.max_length} and were truncated",
                "warning",
            )
        if self.estimate is not None and stats.max_tokens < recipe.dataset.max_length:
            # Batches are padded to their longest example: the run needs what that length does.
            with contextlib.suppress(Exception):
                self.estimate = memory.estimate_with_data(
                    shape, recipe, device, longest_tokens=stats.max_tokens
                )
                self._log(
                    f"Memory estimate for this dataset (its longest example is "
                    f"{stats.max_tokens} tokens): {format_bytes(self.estimate.total_bytes)}"
                )
        self._check_stop()

        # training
        self._phase(Phase.TRAINING, "starting")
        trainer, callback = self._build_trainer(model, tokenizer, prepared, device)
        resume_from = self._resume_checkpoint()
        if resume_from is not None and self._already_trained(trainer, resume_from):
            # The checkpoint holds the last step (the run was killed while it wrote the
            # bundle): the Trainer would train one step too many, so load it and save.
            self._load_final_checkpoint(model, trainer, resume_from)
        else:
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        step = trainer.state.global_step
        if callback.stop_requested and step < trainer.state.max_steps:
            checkpoint = last_checkpoint(self.ckpt_dir)
            return Stopped(step=step, checkpoint=str(checkpoint) if checkpoint else None)

        # saving
        self._phase(Phase.SAVING, f"writing the bundle to {self.output_dir}")
        measured = measure_peak(device.torch_device)
        return self._save_bundle(model, tokenizer, step, measured)

    def _bnb_config(self, quantization, compute_dtype: str):
        """The BitsAndBytesConfig to load with (`rank.DistributedJob` changes the storage)."""
        from studio.core import quant

        return quant.make_bnb_config(quantization, compute_dtype)

    def _model_progress(self, what: str, fraction: float | None) -> None:
        phase = Phase.CONVERTING if "convert" in what else Phase.RESOLVING
        self.phase = phase
        self.emit(PhaseChanged(phase, what, fraction))

    # --------------------------------------------------------------------------- training
    def _pick_checkpoint(self) -> Path | None:
        """The newest intact checkpoint; damaged ones newer than it are said and removed."""
        found = scan_checkpoints(self.ckpt_dir)
        intact = [path for _, path, why in found if why is None]
        chosen = intact[-1] if intact else None
        chosen_step = checkpoint_step(chosen) if chosen else -1
        for step, path, why in found:
            if why is None or step < chosen_step:
                continue
            instead = (
                f"resuming from {chosen.name} (step {chosen_step}), the newest intact one"
                if chosen
                else "no intact checkpoint is left, so training starts from step 0"
            )
            self._log(f"{path} is damaged ({why}); {instead}. Removing it.", "warning")
            shutil.rmtree(path, ignore_errors=True)
        return chosen

    def _already_trained(self, trainer, checkpoint: Path) -> bool:
        """True when ``checkpoint`` is at (or past) the step the Trainer would train to."""
        try:
            max_steps = trainer.set_initial_training_values(
                trainer.args, trainer.get_train_dataloader()
            )[-1]
        except Exception:  # an API change: let the Trainer decide
            return False
        return max_steps > 0 and checkpoint_step(checkpoint) >= max_steps

    def _load_final_checkpoint(self, model, trainer, checkpoint: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file
        from transformers import TrainerState

        weights = load_file(str(checkpoint / "adapter_model.safetensors"))
        result = set_peft_model_state_dict(model, weights)
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise RuntimeError(
                f"{checkpoint} holds adapter weights this model does not have: "
                f"{', '.join(unexpected[:5])}"
            )
        trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
        self._log(
            f"{checkpoint.name} already holds the last step ({trainer.state.global_step}); "
            "writing the bundle from it without training further."
        )

    def _resume_checkpoint(self) -> Path | None:
        """The checkpoint to resume from, with the run's metrics trimmed to it and replayed."""
        metrics_file = self.ckpt_dir / RUN_METRICS
        checkpoint = self._pick_checkpoint() if self.resume else None
        if self.resume and checkpoint is None:
            self._log(
                f"No intact checkpoint found in {self.ckpt_dir}; starting from step 0.", "warning"
            )
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        recipe_file = self.ckpt_dir / RUN_RECIPE
        text = recipe_to_toml(self.recipe)
        if checkpoint is not None and recipe_file.is_file() and recipe_file.read_text() != text:
            self._log(
                "The recipe differs from the one that wrote the checkpoints; resuming "
                "with the new values.",
                "warning",
            )
        recipe_file.write_text(text, encoding="utf-8")
        kept: list[dict] = []
        if checkpoint is not None:
            step = checkpoint_step(checkpoint)
            if metrics_file.is_file():
                for line in metrics_file.read_text(encoding="utf-8").splitlines():
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue  # a line cut short by a killed process
                    if entry.get("step", 0) <= step:
                        kept.append(entry)
            self._log(f"Resuming from {checkpoint} (step {step}).")
            for entry in kept:
                self.emit(event_from_dict(entry))
        self.metrics = kept
        metrics_file.write_text("".join(json.dumps(m) + "\n" for m in kept), encoding="utf-8")
        return checkpoint

    def _record_metric(self, event) -> None:
        entry = to_dict(event)
        self.metrics.append(entry)
        with open(self.ckpt_dir / RUN_METRICS, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")

    def _build_trainer(self, model, tokenizer, prepared, device):
        from transformers import (
            DataCollatorForSeq2Seq,
            PrinterCallback,
            ProgressCallback,
            Trainer,
        )

        from studio.core.engine.callbacks import engine_callback

        args = training_arguments(
            self.recipe,
            str(self.ckpt_dir),
            device.torch_device,
            has_validation=prepared.validation is not None,
        )
        columns = ["input_ids", "attention_mask", "labels"]
        train = prepared.train.select_columns(columns)
        validation = (
            prepared.validation.select_columns(columns) if prepared.validation is not None else None
        )
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
        callback = engine_callback(
            self.emit,
            self.control,
            self.should_stop,
            on_metrics=self._record_metric,
            cuda_device=device.torch_device if device.torch_device.startswith("cuda") else None,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=validation,
            data_collator=collator,
            processing_class=tokenizer,
            callbacks=[manifest_callback(), callback],
        )
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        return trainer, callback

    # ----------------------------------------------------------------------------- saving
    def _save_bundle(self, model, tokenizer, step: int, measured: dict):
        from studio.core import bundle, quant

        steps = rows_of(self.metrics, StepLogged)
        evals = rows_of(self.metrics, EvalLogged)
        final_loss = steps[-1]["loss"] if steps else None
        run = {
            "steps": step,
            "final_loss": final_loss,
            "final_eval_loss": evals[-1]["eval_loss"] if evals else None,
            "device": self.info.get("device"),
            "torch_device": self.info.get("torch_device"),
            "compute_dtype": self.info.get("compute_dtype"),
            "dataset_format": self.info.get("dataset_format"),
            "measured_weights_bytes": self.info.get("measured_weights_bytes"),
            "resumed": self.resume,
        }
        estimate = self.estimate.to_json_dict() if self.estimate is not None else None
        try:
            bundle.write_bundle(
                self.output_dir,
                save_adapter=lambda folder: model.save_pretrained(folder),
                save_tokenizer=lambda folder: tokenizer.save_pretrained(folder),
                recipe=self.recipe,
                quantization_config=quant.bnb_config_kwargs(
                    self.recipe.quantization, self.recipe.quantization.compute_dtype
                ),
                metrics=self.metrics,
                base_model=self.info.get("base_model", {}),
                run=run,
                estimate=estimate,
                measured=measured,
                overwrite=self.overwrite,
                extra_files=[self.ckpt_dir / MEMORY_SAMPLES],
            )
        except FileExistsError:
            raise OutputExistsError(
                f"output.dir {self.output_dir} appeared while training, and this run may not "
                "overwrite it. The trained state is kept in "
                f"{self.ckpt_dir}: run again with --resume --overwrite to write the bundle "
                "there, or move that folder away and run with --resume."
            ) from None
        shutil.rmtree(self.ckpt_dir, ignore_errors=True)
        return Finished(
            bundle_dir=str(self.output_dir),
            step=step,
            peak_bytes=measured.get("bytes"),
            estimate_bytes=self.estimate.total_bytes if self.estimate is not None else None,
            final_loss=final_loss,
        )
