"""The state of one studio session, with one owner that says what changed.

`Session` holds the recipe, the device, the model's shape, the dataset report, the memory
estimate, the job's state and progress, and the open bundle. It is a psygnal evented dataclass
(napari's ``EventedModel`` pattern): setting a field emits ``session.events.<field>(new, old)``
when the value really changed. Front ends show the fields and send edits back through `edit`,
`set_recipe` and the job methods; they never keep a copy of their own, and never talk to each
other. Derived state (the device, the estimate, why Start is blocked) is recomputed here, so
every view agrees.

Qt-free: the window binds widgets to these events; a test can drive a session alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from psygnal import evented

from studio.core.events import (
    TERMINAL_EVENTS,
    CheckpointSaved,
    Failed,
    Finished,
    Paused,
    PhaseChanged,
    Resumed,
    StepLogged,
    Stopped,
)
from studio.core.phases import JobState, Phase
from studio.core.recipe import Recipe


class LoadState(str, Enum):
    """How far reading a model or a dataset got."""

    EMPTY = "empty"
    READING = "reading"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class ModelStatus:
    """The model source being read, and its `ResolvedModel` and `ModelShape` once read."""

    source: str = ""
    state: LoadState = LoadState.EMPTY
    message: str = ""  # progress text while reading, the error when failed
    details: str = ""  # the traceback of a failure
    progress: float | None = None
    resolved: Any = None
    shape: Any = None


@dataclass(frozen=True)
class DatasetStatus:
    """The dataset preview for ``key`` = (dataset section, model folder), or its error."""

    key: Any = None
    state: LoadState = LoadState.EMPTY
    message: str = ""
    details: str = ""
    preview: Any = None


@dataclass(frozen=True)
class RunStatus:
    """The running (or last) job: status text, progress and outcome, as separate channels.

    ``progress`` is 0..1, or None while unknown. ``outcome`` is the terminal event once the job
    ended. ``last_step`` is the newest `StepLogged` (loss, speed, ETA).
    """

    phase: Phase | str | None = None
    message: str = ""
    progress: float | None = 0.0
    last_step: StepLogged | None = None
    outcome: Finished | Stopped | Failed | None = None
    resumed: bool = False
    checkpoint: str | None = None


def inactive_fields(recipe: Recipe) -> dict[str, str]:
    """Recipe keys that have no effect given the others, with the reason (dotted key ->)."""
    found: dict[str, str] = {}
    quant = recipe.quantization
    if quant.mode != "4bit":
        why = f"only used in 4-bit mode (mode is {quant.mode})"
        found["quantization.quant_type"] = why
        found["quantization.double_quant"] = why
    if quant.mode == "none":
        found["quantization.fp32_upcast"] = (
            "only used when the base is quantized (mode is none: nothing is prepared for "
            "k-bit training)"
        )
    elif quant.compute_dtype == "float32":
        found["quantization.fp32_upcast"] = "the compute dtype is float32 already"
    if recipe.training.max_steps > 0:
        found["training.epochs"] = "only used when max_steps is -1"
    if recipe.dataset.validation_split == 0:
        found["training.eval_steps"] = "no evaluation: dataset.validation_split is 0"
    from studio.core.scaling import inactive_distributed_fields

    found.update(inactive_distributed_fields(recipe))
    return found


@evented
@dataclass(eq=False)
class Session:
    """See the module docstring. Build with `Session.create` to get the derived fields set."""

    recipe: Recipe = field(default_factory=Recipe)
    discovery: Any = None  # a `GpuDiscovery`
    discovery_error: str = ""
    device: Any = None  # the `DeviceTarget` that recipe.training.device resolves to
    device_error: str = ""
    model: ModelStatus = field(default_factory=ModelStatus)
    dataset: DatasetStatus = field(default_factory=DatasetStatus)
    # The dataset's longest example in tokens, as ((path, format, model folder), tokens), from
    # the last preview of that file with that tokenizer; kept while max_length is edited.
    data_longest: tuple | None = None
    estimate: Any = None  # a `MemoryEstimate`, or None with ``estimate_message`` saying why
    estimate_message: str = ""
    recipe_problem: str = ""  # a recipe value the model cannot take (LoRA targets it lacks)
    job: JobState = JobState.IDLE
    run: RunStatus = field(default_factory=RunStatus)
    measured_peak: int | None = None  # of the finished run or the opened bundle
    bundle: str | None = None  # the finished or opened bundle (chat, save, export)

    @classmethod
    def create(cls, recipe: Recipe | None = None, *, discovery=None, discovery_error: str = ""):
        """A session for ``recipe`` on the GPUs ``discovery`` found (discovered if None)."""
        if discovery is None:
            from studio.core.gpu import FakeGpuError, GpuDiscovery, discover_gpus

            try:
                discovery = discover_gpus()
            except FakeGpuError as exc:
                discovery_error = str(exc)
                discovery = GpuDiscovery(gpus=(), reason=str(exc), source="none")
        session = cls(
            recipe=recipe or Recipe(), discovery=discovery, discovery_error=discovery_error
        )
        session.events.recipe.connect(session._recipe_changed)
        session.events.model.connect(session._model_changed)
        session._recipe_changed(session.recipe, None)
        return session

    # ------------------------------------------------------------------------- editing
    def edit(self, dotted: str, value: Any) -> Recipe:
        """Set one recipe key (``training.max_steps``); raises `RecipeError` when invalid,
        leaving the recipe as it was."""
        section, key = dotted.split(".", 1)
        self.recipe = self.recipe.with_changes(**{section: {key: value}})
        return self.recipe

    def edit_many(self, changes: Mapping[str, Mapping[str, Any]]) -> Recipe:
        """Set several keys at once (``{"training": {"batch_size": 1}}``), validated."""
        self.recipe = self.recipe.with_changes(**changes)
        return self.recipe

    def set_recipe(self, recipe: Recipe) -> None:
        """Show a whole recipe (opened from a file, or a past run's)."""
        self.recipe = recipe.validate()

    def apply_advice(self) -> bool:
        """Apply the change the estimate advises to make the run fit; False when none."""
        changes = getattr(self.estimate, "advice_changes", None)
        if not changes:
            return False
        self.edit_many(changes)
        return True

    def inactive_fields(self) -> dict[str, str]:
        """Keys with no effect in the current recipe (see `inactive_fields`)."""
        return inactive_fields(self.recipe)

    # ----------------------------------------------------------------- model and dataset
    def model_reading(self, source: str, message: str = "", progress: float | None = None):
        """Reading ``source`` started or progressed."""
        self.model = ModelStatus(
            source=source, state=LoadState.READING, message=message, progress=progress
        )

    def model_ready(self, source: str, resolved, shape) -> None:
        if source == self.recipe.model.source:
            self.model = ModelStatus(
                source=source, state=LoadState.READY, resolved=resolved, shape=shape
            )

    def model_failed(self, source: str, message: str, details: str = "") -> None:
        if source == self.recipe.model.source:
            self.model = ModelStatus(
                source=source, state=LoadState.FAILED, message=message, details=details
            )

    @property
    def is_plan(self) -> bool:
        """The model is a plan (config only): it can be estimated, not trained."""
        return self.model.state is LoadState.READY and getattr(self.model.resolved, "plan", False)

    def dataset_key(self):
        """What the dataset preview depends on: (dataset section, model folder) or None (no
        model read yet, or a plan, which has no tokenizer)."""
        if self.model.state is not LoadState.READY or self.is_plan:
            return None
        return (self.recipe.dataset, str(self.model.resolved.path))

    def dataset_reading(self, key) -> None:
        self.dataset = DatasetStatus(key=key, state=LoadState.READING, message="Reading…")

    def dataset_ready(self, key, preview) -> None:
        if key == self.dataset_key():
            self.dataset = DatasetStatus(key=key, state=LoadState.READY, preview=preview)
            stats = getattr(preview, "stats", None)
            longest = getattr(stats, "max_tokens", None)
            if longest and (self._length_key(), longest) != self.data_longest:
                self.data_longest = (self._length_key(), longest)
                self._recompute_estimate()

    def _length_key(self):
        """What the dataset's token lengths depend on: the file, its format, the tokenizer."""
        model = self.model.resolved
        d = self.recipe.dataset
        return (d.path, d.format, str(model.path) if model is not None else None)

    def _longest_tokens(self) -> int | None:
        if self.data_longest is not None and self.data_longest[0] == self._length_key():
            return self.data_longest[1]
        return None

    def dataset_failed(self, key, message: str, details: str = "") -> None:
        if key == self.dataset_key():
            self.dataset = DatasetStatus(
                key=key, state=LoadState.FAILED, message=message, details=details
            )

    # ----------------------------------------------------------------------- the job
    def start_blockers(self) -> tuple[str, ...]:
        """Why Start cannot run now, for people (empty: it can)."""
        reasons = []
        if self.job is not JobState.IDLE:
            reasons.append("A job is running.")
        if self.device_error:
            reasons.append(self.device_error)
        from studio.core.scaling import distributed_start_problem

        gpus = len(self.discovery.gpus) if self.discovery is not None else None
        if problem := distributed_start_problem(self.recipe, self.device, gpus):
            reasons.append(problem)
        model = self.model
        if model.state is LoadState.FAILED:
            reasons.append(f"The model cannot be used: {model.message}")
        elif model.state is LoadState.READING:
            reasons.append("Reading the model…")
        elif model.state is LoadState.EMPTY:
            reasons.append("The model has not been read yet.")
        elif self.is_plan:
            from studio.core.catalog import not_trainable_message

            reasons.append(not_trainable_message(model.resolved))
        if self.recipe_problem:
            reasons.append(self.recipe_problem)
        if self.dataset.state is LoadState.FAILED:
            reasons.append(f"The dataset cannot be used: {self.dataset.message}")
        elif self.dataset_key() is not None and self.dataset.state is not LoadState.READY:
            # Its preview reads every line: the run must not start on a file nobody checked.
            reasons.append("Checking the dataset…")
        return tuple(reasons)

    def job_started(self, *, resumed: bool) -> None:
        self.run = RunStatus(
            phase=Phase.STARTING, message="launching the training process", resumed=resumed
        )
        self.measured_peak = None
        self.bundle = None
        self.job = JobState.RUNNING

    def job_pausing(self) -> None:
        if self.job is JobState.RUNNING:
            self.job = JobState.PAUSING

    def job_resuming(self) -> None:
        if self.job.paused:
            self.job = JobState.RUNNING

    def job_stopping(self) -> None:
        if self.job.active:
            self.job = JobState.STOPPING

    def apply_event(self, event) -> None:
        """Take one engine event into the run's status and the job's state."""
        run = self.run
        if isinstance(event, PhaseChanged):
            self.run = replace(
                run, phase=event.phase, message=event.message, progress=event.progress
            )
        elif isinstance(event, StepLogged):
            total = event.max_steps if event.max_steps and event.max_steps > 0 else None
            self.run = replace(
                run,
                phase=Phase.TRAINING,
                message="",
                last_step=event,
                progress=event.step / total if total else None,
            )
        elif isinstance(event, CheckpointSaved):
            self.run = replace(run, checkpoint=event.path)
        elif isinstance(event, Paused):
            if self.job is not JobState.STOPPING:
                self.job = JobState.PAUSED
        elif isinstance(event, Resumed):
            if self.job is not JobState.STOPPING:
                self.job = JobState.RUNNING
        elif isinstance(event, TERMINAL_EVENTS):
            done = 1.0 if isinstance(event, Finished) else (run.progress or 0.0)
            self.run = replace(run, outcome=event, progress=done, message="")
            if isinstance(event, Finished):
                self.measured_peak = event.peak_bytes
                self.bundle = event.bundle_dir
            self.job = JobState.IDLE

    def open_bundle(self, path: str, *, measured_peak: int | None = None) -> None:
        """A bundle opened from disk becomes the one to chat with, save or export."""
        self.run = RunStatus()
        self.measured_peak = measured_peak
        self.bundle = path

    # ------------------------------------------------------------------- derived state
    def _recipe_changed(self, recipe: Recipe, old: Recipe | None) -> None:
        if old is None or recipe.training.device != old.training.device:
            self._resolve_device()
        if recipe.model.source != self.model.source:
            self.model = ModelStatus(source=recipe.model.source)
        if old is not None and recipe.dataset != old.dataset:
            self.dataset = DatasetStatus()
        if old is not None and self.job is JobState.IDLE:
            # The measured peak belongs to the run's recipe, not to this edited one.
            self.measured_peak = None
        self._recompute_estimate()

    def _model_changed(self, model: ModelStatus, old: ModelStatus) -> None:
        if model.resolved is not getattr(old, "resolved", None):
            self.dataset = DatasetStatus()  # the preview used the old model's tokenizer
        self._recompute_estimate()

    def _resolve_device(self) -> None:
        from studio.core.quant import QuantError, resolve_device

        try:
            self.device = resolve_device(self.recipe.training.device, self.discovery)
            self.device_error = ""
        except QuantError as exc:
            self.device = None
            self.device_error = str(exc)

    def _recompute_estimate(self, *_args) -> None:
        model = self.model
        estimate, message = None, ""
        if self.device is None:
            message = f"No estimate: {self.device_error}"
        elif model.state is LoadState.FAILED:
            message = f"No estimate: the model cannot be read. {model.message}"
        elif model.state is not LoadState.READY:
            message = "Reading the model's shape…"
        else:
            from studio.core.memory import estimate_with_data

            try:
                estimate = estimate_with_data(
                    model.shape, self.recipe, self.device, longest_tokens=self._longest_tokens()
                )
            except ValueError as exc:
                message = f"No estimate: {exc}"
        self.recipe_problem = self._check_against_model()
        self.estimate = estimate
        self.estimate_message = message

    def _check_against_model(self) -> str:
        """The recipe's model-dependent problem (the engine's own check), or ""."""
        if self.model.state is not LoadState.READY:
            return ""
        from studio.core.engine.validation import check_recipe_against_shape
        from studio.core.recipe import RecipeError

        try:
            check_recipe_against_shape(self.recipe, self.model.shape)
        except RecipeError as exc:
            return str(exc)
        return ""
