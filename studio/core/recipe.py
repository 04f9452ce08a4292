"""The run recipe: plain data that the GUI edits, the CLI runs and the engine receives.

A recipe is a tree of frozen dataclasses, one per TOML section. Every field carries its own
description as dataclass field metadata (as trl's ``SFTConfig`` does): ``help``, ``label``,
and where they apply ``choices`` (with ``choice_help`` and ``choice_labels``), inclusive
``minimum`` / ``maximum`` bounds, a UI ``step`` and ``decimals``. `field_specs` and
`field_spec` expose it as `FieldSpec` objects; the validation, the CLI's flags, the window's
widgets and the reference in docs/recipes.md all read it from there.

`Recipe.from_dict` validates every key and value and raises `RecipeError` naming the key
(``training.batch_size``), what was found and what is allowed; unknown keys are errors, never
ignored. `Recipe.notes` lists settings that have no effect given others. `load_recipe` and
`save_recipe` read and write UTF-8 TOML with a ``schema_version``; saving is atomic.

Relative paths in a recipe file (``dataset.path``, ``output.dir``, a local ``model.source``)
are relative to the folder that holds the file; `load_recipe` resolves them, so a loaded
recipe holds absolute paths and can be run from anywhere.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from studio.core.atomic import atomic_write_text

SCHEMA_VERSION = 1
BUILTIN_MODEL = "builtin:smollm2-135m-instruct"
BUILTIN_DATASET = "builtin:sample"

QUANT_MODES = ("4bit", "8bit", "none")
QUANT_TYPES = ("nf4", "fp4")
COMPUTE_DTYPES = ("auto", "bfloat16", "float16", "float32")
DATASET_FORMATS = ("auto", "alpaca", "chat", "text")
OPTIMIZERS = ("adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")
LR_SCHEDULERS = ("linear", "cosine", "constant")

# numpy's legacy seeding (which transformers.set_seed calls) takes 0 .. 2**32 - 1 only.
SEED_MAX = 2**32 - 1


class RecipeError(ValueError):
    """A recipe key holds a bad value, or the recipe has an unknown key.

    ``key`` is the dotted key (``quantization.quant_type``), ``source`` the file if any.
    """

    def __init__(self, key: str, message: str, source: str | os.PathLike | None = None):
        self.key = key
        self.source = str(source) if source is not None else None
        where = f"{self.source}: " if self.source else ""
        super().__init__(f"{where}{key}: {message}")


# --------------------------------------------------------------------------- field metadata


@dataclass(frozen=True)
class FieldSpec:
    """Everything known about one recipe key, read from its dataclass field's metadata.

    ``type`` is the annotation (int, float, bool, str, or ``str | tuple[str, ...]``),
    ``default`` the dataclass default (the shipped recipe's value). ``choices`` are the allowed
    strings; ``choice_help`` maps a choice to its explanation and ``choice_labels`` to the text
    a UI shows where that differs from the choice itself. ``minimum`` and ``maximum`` are
    inclusive bounds; ``step`` and ``decimals`` are hints for a spin box.
    """

    section: str
    key: str
    type: Any
    default: Any
    help: str
    label: str
    choices: tuple[str, ...] | None = None
    choice_help: Mapping[str, str] | None = field(default=None, hash=False)
    choice_labels: Mapping[str, str] | None = field(default=None, hash=False)
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    decimals: int | None = None

    @property
    def dotted(self) -> str:
        """``section.key``, the name messages and docs use (``training.max_steps``)."""
        return f"{self.section}.{self.key}"


_META_KEYS = frozenset(
    ("help", "label", "choices", "choice_help", "choice_labels")
    + ("minimum", "maximum", "step", "decimals")
)


def _field(default: Any, label: str, help: str, **meta: Any) -> Any:
    """A dataclass field whose metadata describes the key (see `FieldSpec`)."""
    unknown = set(meta) - _META_KEYS
    if unknown:  # a programming error
        raise TypeError(f"unknown field metadata {sorted(unknown)}")
    for name in ("choice_help", "choice_labels"):
        if meta.get(name) is not None:
            meta[name] = MappingProxyType(dict(meta[name]))
    return field(default=default, metadata={"label": label, "help": help, **meta})


def _number(value: float) -> str:
    """A bound as people write it: 1, 0.05, 1e-06, 4294967295."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return f"{value:.1f}"
    return repr(value)


def _allowed_range(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f"use {_number(minimum)} up to {_number(maximum)}"
    if minimum is not None:
        return f"use {_number(minimum)} or more"
    return f"use {_number(maximum)} or less"


def _choice(value: Any, allowed: tuple[str, ...]) -> str | None:
    """None when ``value`` is allowed, else the message that says what is."""
    if value in allowed:
        return None
    return f"{value!r} is not allowed; use one of {', '.join(repr(a) for a in allowed)}"


def _generic_problems(section: Any) -> dict[str, str]:
    """The checks every key's metadata implies: choices, bounds, finite floats."""
    found: dict[str, str] = {}
    hints = _hints(type(section))
    for f in fields(section):
        meta, value = f.metadata, getattr(section, f.name)
        if meta.get("choices") is not None:
            if message := _choice(value, meta["choices"]):
                found[f.name] = message
            continue
        if hints[f.name] not in (int, float) or isinstance(value, bool):
            continue
        lo, hi = meta.get("minimum"), meta.get("maximum")
        if not math.isfinite(value):
            found[f.name] = f"{value} is out of range; {_allowed_range(lo, hi)}"
        elif lo is not None and value < lo:
            found[f.name] = f"{value} is too small; {_allowed_range(lo, hi)}"
        elif hi is not None and value > hi:
            found[f.name] = f"{value} is too large; {_allowed_range(lo, hi)}"
    return found


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


class _Section:
    """What every section shares: `problems` = the metadata checks + its own cross-field rules."""

    def problems(self) -> dict[str, str]:
        """Key -> message for every bad value, in field order; empty when all is well."""
        found = _generic_problems(self)
        found.update(self._rules())  # a hand-written rule says it better
        return {f.name: found[f.name] for f in fields(self) if f.name in found}  # type: ignore[arg-type]

    def _rules(self) -> dict[str, str]:
        return {}


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class ModelSection(_Section):
    """Which base model to fine-tune (see `studio.core.models.resolve_model`)."""

    source: str = _field(
        BUILTIN_MODEL,
        "Base model",
        "The model to fine-tune: a local Hugging Face folder, a hub id (read from the local "
        f"cache), a .gguf file (converted once) or {BUILTIN_MODEL} (SmolLM2-135M-Instruct, "
        "shipped with the app).",
    )
    trust_remote_code: bool = _field(
        False,
        "Trust remote code",
        "Run the Python code a model folder or hub repository ships for its architecture. "
        "Some custom models need it; turn it on only for sources you trust.",
    )

    def _rules(self) -> dict[str, str]:
        if not self.source.strip():
            return {
                "source": "is empty; give a local folder, a hub id, a .gguf file or "
                f"{BUILTIN_MODEL!r}"
            }
        return {}


@dataclass(frozen=True)
class QuantizationSection(_Section):
    """How the frozen base model is held in memory.

    ``fp32_upcast`` is PEFT's k-bit preparation casting every non-quantized parameter
    (embeddings, lm_head, norms) to float32: more stable, and more memory (docs/memory-estimator.md).
    """

    mode: str = _field(
        "4bit",
        "Mode",
        "How the frozen base model is held in memory: 4-bit (QLoRA), 8-bit (LLM.int8) or not "
        "quantized. It decides most of the weights' memory.",
        choices=QUANT_MODES,
        choice_labels={"4bit": "4-bit", "8bit": "8-bit", "none": "none (16/32-bit)"},
        choice_help={
            "4bit": "Store the frozen base weights in 4 bits (QLoRA): about 4.5 bits per "
            "weight (4.13 with double quantization). Smallest memory; a little slower per step.",
            "8bit": "LLM.int8(): 1 byte per weight plus outlier handling. Twice the weight "
            "memory of 4-bit; closer to the original quality.",
            "none": "No quantization: the base weights stay in the compute dtype "
            "(2 bytes per weight in bf16/fp16, 4 in fp32). Plain LoRA; the most memory.",
        },
    )
    quant_type: str = _field(
        "nf4",
        "4-bit type",
        "The 4-bit data type (4-bit mode only). NF4 and FP4 take exactly the same memory.",
        choices=QUANT_TYPES,
        choice_labels={"nf4": "NF4", "fp4": "FP4"},
        choice_help={
            "nf4": "NormalFloat4: 16 levels placed for normally distributed weights. Usually "
            "the better choice for pretrained models; same memory as FP4.",
            "fp4": "A 4-bit float format. Same memory as NF4; usually slightly worse quality.",
        },
    )
    compute_dtype: str = _field(
        "auto",
        "Compute dtype",
        "The dtype matmuls run in and non-quantized weights are held in. auto picks bfloat16 "
        "where the device supports it, else float16.",
        choices=COMPUTE_DTYPES,
        choice_help={
            "auto": "Pick the best the device supports: bfloat16 where available, else float16 "
            "(float32 on the CPU where needed).",
            "bfloat16": "float32's range in 2 bytes. Needs compute capability 8.0+ (Ampere) "
            "or the CPU.",
            "float16": "2 bytes, narrower range than bfloat16 (loss scaling needed); runs on "
            "every GPU.",
            "float32": "4 bytes: twice the memory of non-quantized weights and activations; "
            "slow on GPUs.",
        },
    )
    double_quant: bool = _field(
        True,
        "Double quantization",
        "Quantize the 4-bit blocks' fp32 scales to 8 bits too (4-bit mode only): saves about "
        "0.37 bits per weight (~3 GB on a 65B model) for a negligible quality cost.",
    )
    fp32_upcast: bool = _field(
        True,
        "Upcast non-quantized weights to fp32",
        "PEFT's k-bit preparation: embeddings, norms and lm_head in float32. More stable "
        "training; costs 2x those weights and makes activations float32 (much more memory).",
    )


@dataclass(frozen=True)
class LoraSection(_Section):
    """The LoRA adapter: rank, scaling, dropout and which linears it wraps."""

    r: int = _field(
        16,
        "Rank r",
        "LoRA rank r: adapter size and capacity. Trainable parameters (and their optimizer "
        "state) grow linearly with r; 8 to 64 is usual.",
        minimum=1,
        maximum=1024,
    )
    alpha: int = _field(
        32,
        "Alpha",
        "LoRA alpha: the update is scaled by alpha / r. Twice the rank is a common choice. "
        "No memory cost.",
        minimum=1,
        maximum=4096,
    )
    dropout: float = _field(
        0.05,
        "Dropout",
        "Dropout on the adapter input; regularizes small datasets. No memory cost.",
        minimum=0.0,
        maximum=0.9,
        step=0.05,
        decimals=2,
    )
    target_modules: str | tuple[str, ...] = _field(
        "all-linear",
        "Targets",
        "Which linears get an adapter: 'all-linear' (every linear but lm_head) or a list of "
        "module names such as ['q_proj', 'v_proj']. Fewer targets, fewer trainable parameters.",
    )
    use_rslora: bool = _field(
        False,
        "rsLoRA",
        "Rank-stabilized LoRA: scale the update by alpha / sqrt(r) instead of alpha / r, so "
        "high ranks keep learning. No memory cost.",
    )
    use_dora: bool = _field(
        False,
        "DoRA",
        "Weight-decomposed LoRA: also trains a magnitude per output feature. Often better at "
        "low ranks; steps are slower and take more activation memory.",
    )

    def _rules(self) -> dict[str, str]:
        targets = self.target_modules
        if isinstance(targets, str):
            if targets != "all-linear":
                return {
                    "target_modules": f"{targets!r} is not allowed; use 'all-linear' or a list "
                    "of module names such as ['q_proj', 'v_proj']"
                }
        elif not targets or not all(isinstance(t, str) and t for t in targets):
            return {"target_modules": "must be 'all-linear' or a non-empty list of module names"}
        return {}


@dataclass(frozen=True)
class DatasetSection(_Section):
    """The training data: a file or folder (or the built-in sample) and how to read it."""

    path: str = _field(
        BUILTIN_DATASET,
        "Dataset",
        "The training data: a JSONL, JSON, CSV or Parquet file, a saved dataset folder, or "
        f"{BUILTIN_DATASET} (the built-in sample).",
    )
    format: str = _field(
        "auto",
        "Format",
        "How the examples are read and which tokens are trained.",
        choices=DATASET_FORMATS,
        choice_help={
            "auto": "Detect the format from the columns.",
            "alpaca": "instruction / input / output columns; the output is trained.",
            "chat": "A messages list rendered with the model's chat template; the assistant "
            "turns are trained.",
            "text": "Plain text, all of it trained.",
        },
    )
    max_length: int = _field(
        256,
        "Max length",
        "Sequence length in tokens: longer examples are truncated (and counted). Activation "
        "and logits memory grow linearly with it.",
        minimum=8,
        maximum=131072,
        step=64,
    )
    validation_split: float = _field(
        0.1,
        "Validation split",
        "Share of the examples held out for the evaluation loss; 0 turns evaluation off. "
        "Each evaluation takes a pass over them.",
        minimum=0.0,
        maximum=0.5,
        step=0.05,
        decimals=2,
    )
    train_on_prompt: bool = _field(
        False,
        "Train on the prompt too",
        "Off: only the responses are trained (the prompt is masked out of the loss). On: the "
        "loss covers the prompt tokens too.",
    )

    def _rules(self) -> dict[str, str]:
        if not self.path.strip():
            return {"path": f"is empty; give a JSONL/JSON/CSV/Parquet file or {BUILTIN_DATASET!r}"}
        return {}


@dataclass(frozen=True)
class TrainingSection(_Section):
    """The optimisation loop. ``max_steps`` > 0 wins over ``epochs``; -1 means use epochs."""

    max_steps: int = _field(
        40,
        "Max steps",
        "Optimizer steps to run (1 or more); -1 trains for the number of epochs instead. "
        "Time grows linearly with it.",
        minimum=-1,
        maximum=10_000_000,
    )
    epochs: float = _field(
        1.0,
        "Epochs",
        "Passes over the training data (used when max steps is -1).",
        minimum=0.01,
        maximum=1000.0,
        step=0.5,
        decimals=2,
    )
    batch_size: int = _field(
        4,
        "Batch size",
        "Examples per step on the device. Activation memory grows linearly with it.",
        minimum=1,
        maximum=4096,
    )
    grad_accum: int = _field(
        1,
        "Grad accumulation",
        "Gradient accumulation: the effective batch is batch size x this, with no extra "
        "memory; each step takes this many times longer.",
        minimum=1,
        maximum=4096,
    )
    learning_rate: float = _field(
        1e-3,
        "Learning rate",
        "Peak learning rate; 1e-4 to 3e-4 is usual for QLoRA on large models, small models "
        "take up to 1e-3.",
        minimum=1e-6,
        maximum=0.5,
        step=5e-5,
        decimals=6,
    )
    lr_scheduler: str = _field(
        "cosine",
        "LR schedule",
        "How the learning rate moves from its peak (after the warmup) to the last step.",
        choices=LR_SCHEDULERS,
        choice_help={
            "linear": "Falls in a straight line from the peak to 0 at the last step.",
            "cosine": "Follows a half cosine from the peak to 0: longer near the peak, a "
            "gentle end.",
            "constant": "Stays at the peak throughout; no warmup.",
        },
    )
    warmup_steps: int = _field(
        2,
        "Warmup steps",
        "Steps over which the learning rate rises from 0 to its peak, which steadies the "
        "first updates. The constant schedule has no warmup.",
        minimum=0,
        maximum=1_000_000,
    )
    gradient_checkpointing: bool = _field(
        False,
        "Gradient checkpointing",
        "Keep one tensor per layer and recompute the rest in backward: activation memory "
        "drops to a fraction, steps take ~30% longer.",
    )
    optimizer: str = _field(
        "adamw_torch",
        "Optimizer",
        "The optimizer; its state is a large share of training memory.",
        choices=OPTIMIZERS,
        choice_help={
            "adamw_torch": "PyTorch AdamW: 8 bytes of state per trainable parameter.",
            "adamw_8bit": "bitsandbytes 8-bit AdamW: about 2 bytes of state per trainable "
            "parameter.",
            "paged_adamw_8bit": "8-bit AdamW with states in paged (managed) memory: ~2 bytes "
            "per parameter, moved to the CPU under memory pressure instead of running out.",
            "paged_adamw_32bit": "32-bit AdamW with paged states: 8 bytes per parameter, pageable.",
        },
    )
    seed: int = _field(
        42,
        "Seed",
        "Random seed for the data order, the validation split and the adapter's starting "
        "weights: same seed, same run.",
        minimum=0,
        maximum=SEED_MAX,
    )
    save_steps: int = _field(
        10,
        "Save every",
        "Write a resumable checkpoint (adapter and optimizer state) every this many steps; "
        "each one takes a moment and disk space.",
        minimum=1,
        maximum=1_000_000,
    )
    eval_steps: int = _field(
        20,
        "Evaluate every",
        "Evaluate on the held-out split every this many steps (when the validation split is "
        "above 0); each evaluation takes a pass over the split.",
        minimum=1,
        maximum=1_000_000,
    )
    logging_steps: int = _field(
        1,
        "Log every",
        "Report the training loss (and tokens/s) every this many steps.",
        minimum=1,
        maximum=1_000_000,
    )
    device: str = _field(
        "auto",
        "Device",
        "Where to train: auto (the first GPU if there is one, else the CPU), cpu, cuda or "
        "cuda:N for the GPU with index N.",
    )

    def _rules(self) -> dict[str, str]:
        found: dict[str, str] = {}
        if self.max_steps == 0 or self.max_steps < -1:
            found["max_steps"] = (
                f"{self.max_steps} is not allowed; use a positive count or -1 (train for "
                "the epochs)"
            )
        device = self.device
        if not (device in ("auto", "cpu", "cuda") or _is_cuda_index(device)):
            found["device"] = f"{device!r} is not allowed; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        return found


def _is_cuda_index(device: str) -> bool:
    prefix, _, index = device.partition(":")
    return prefix == "cuda" and index.isdigit()


@dataclass(frozen=True)
class OutputSection(_Section):
    """Where the adapter bundle is written (checkpoints go to ``<dir>.checkpoints``)."""

    dir: str = _field(
        "runs/smollm2-sample",
        "Output folder",
        "Where the adapter bundle is written; checkpoints go beside it in <folder>.checkpoints.",
    )

    def _rules(self) -> dict[str, str]:
        return {} if self.dir.strip() else {"dir": "is empty; give a folder for the bundle"}


DISTRIBUTED_STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class DistributedSection(_Section):
    """Several processes (GPUs) and machines, through accelerate (docs/cluster.md).

    ``num_processes`` is the total over all machines, as ``accelerate launch`` counts it; more
    than 1 runs the same engine under ``accelerate launch`` (torchrun underneath).
    """

    num_processes: int = _field(
        1,
        "Processes (GPUs)",
        "Training processes in all, one per GPU (over all machines): 1 trains in one process; "
        "more runs the same recipe under accelerate launch. The global batch is batch size x "
        "grad accumulation x this.",
        minimum=1,
        maximum=1024,
    )
    strategy: str = _field(
        "ddp",
        "Strategy",
        "How the processes share the work when there is more than one.",
        choices=DISTRIBUTED_STRATEGIES,
        choice_labels={"ddp": "DDP (replicate)", "fsdp": "FSDP (shard)"},
        choice_help={
            "ddp": "DistributedDataParallel: every GPU holds the whole model and trains on its "
            "own share of each batch. Fastest when the model fits on one GPU.",
            "fsdp": "Fully Sharded Data Parallel: weights, LoRA weights, gradients and optimizer "
            "state are split over the GPUs and one decoder layer is gathered at a time, so a "
            "model too big for one GPU fits on several (FSDP-QLoRA).",
        },
    )
    gpus: str = _field(
        "all",
        "GPUs",
        "Which GPUs of this machine to use: all (the first N) or comma-separated indices such as "
        "0,1 (one per process on this machine, numbered as qlora-studio gpus lists them).",
    )
    cpu_offload: bool = _field(
        False,
        "Offload to CPU (FSDP)",
        "FSDP only: keep the sharded weights, gradients and optimizer state in CPU memory and "
        "bring each layer to the GPU when it runs. Least GPU memory; slower steps.",
    )
    num_machines: int = _field(
        1,
        "Machines",
        "Machines taking part; each runs the same recipe with its own machine rank.",
        minimum=1,
        maximum=1024,
    )
    machine_rank: int = _field(
        0,
        "Machine rank",
        "This machine's number among the machines, 0 for the main one (several machines only).",
        minimum=0,
        maximum=1023,
    )
    main_process_ip: str = _field(
        "",
        "Main machine address",
        "The address of machine 0 that the other machines connect to (several machines only; "
        "empty on one machine).",
    )
    main_process_port: int = _field(
        29500,
        "Main machine port",
        "The TCP port on machine 0 for the processes' rendezvous; must be free there.",
        minimum=1,
        maximum=65535,
    )

    @property
    def launched(self) -> bool:
        """True when the run goes through accelerate launch (more than one process)."""
        return self.num_processes > 1 or self.num_machines > 1

    @property
    def processes_per_machine(self) -> int:
        return max(self.num_processes // self.num_machines, 1)

    def gpu_indices(self) -> tuple[int, ...] | None:
        """The GPU indices ``gpus`` names, or None for ``all``."""
        if self.gpus.strip() == "all":
            return None
        return tuple(int(part) for part in self.gpus.split(","))

    def _rules(self) -> dict[str, str]:
        found: dict[str, str] = {}
        gpus = self.gpus.strip()
        if gpus != "all":
            parts = [p.strip() for p in gpus.split(",")]
            if not parts or not all(p.isdigit() for p in parts):
                found["gpus"] = f"{self.gpus!r} is not allowed; use 'all' or indices such as '0,1'"
            elif len(set(parts)) != len(parts):
                found["gpus"] = f"{self.gpus!r} names a GPU twice"
            elif len(parts) != self.processes_per_machine:
                found["gpus"] = (
                    f"{self.gpus!r} names {len(parts)} GPUs, but each machine runs "
                    f"{self.processes_per_machine} processes; name one GPU per process"
                )
        return found

    def topology_problems(self) -> dict[str, str]:
        """How processes and machines fit together (checked when a run is launched; kept out of
        `problems` so that each key's bounds hold whatever the other keys say)."""
        found: dict[str, str] = {}
        if self.num_processes % self.num_machines:
            found["num_processes"] = (
                f"{self.num_processes} processes do not split evenly over {self.num_machines} "
                "machines; use a multiple of num_machines"
            )
        if self.machine_rank >= self.num_machines:
            found["machine_rank"] = (
                f"{self.machine_rank} is too large for {self.num_machines} machines; use 0 up to "
                f"{self.num_machines - 1}"
            )
        if self.num_machines > 1 and not self.main_process_ip.strip():
            found["main_process_ip"] = "is empty; several machines need the address of machine 0"
        return found


@dataclass(frozen=True)
class Recipe:
    """A whole run, one field per TOML section."""

    model: ModelSection = field(default_factory=ModelSection)
    quantization: QuantizationSection = field(default_factory=QuantizationSection)
    lora: LoraSection = field(default_factory=LoraSection)
    dataset: DatasetSection = field(default_factory=DatasetSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    output: OutputSection = field(default_factory=OutputSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)

    def validate(self, source: str | os.PathLike | None = None) -> Recipe:
        """Return self, or raise `RecipeError` for the first problem found."""
        for section in fields(self):
            for key, message in getattr(self, section.name).problems().items():
                raise RecipeError(f"{section.name}.{key}", message, source)
        return self

    def notes(self) -> tuple[str, ...]:
        """Human notes on settings that have no effect given the others, one sentence each.

        A setting is noted when it asks for something that will not happen: a switch that is
        on, a count above 0, or, for a key that always holds some value (``quant_type``,
        ``epochs``, ``eval_steps``), a value changed from its default. Empty when nothing is
        contradictory. (DoRA works in every mode, 8-bit included, so it is never noted.)
        """
        q, t, d = self.quantization, self.training, self.dataset
        found: list[str] = []
        if q.mode != "4bit":
            if q.quant_type != field_spec("quantization.quant_type").default:
                found.append(
                    f"quantization.quant_type = {q.quant_type!r} has no effect with "
                    f"quantization.mode = {q.mode!r}; the 4-bit type applies to mode = '4bit' "
                    "only."
                )
            if q.double_quant:
                found.append(
                    "quantization.double_quant = true has no effect with quantization.mode = "
                    f"{q.mode!r}; double quantization applies to mode = '4bit' only."
                )
        if q.mode == "none" and q.fp32_upcast:
            found.append(
                "quantization.fp32_upcast = true has no effect with quantization.mode = "
                "'none'; the upcast is part of preparing a quantized model."
            )
        if t.max_steps > 0 and t.epochs != field_spec("training.epochs").default:
            found.append(
                f"training.epochs = {t.epochs} has no effect with training.max_steps = "
                f"{t.max_steps}; set max_steps = -1 to train for the epochs."
            )
        if t.lr_scheduler == "constant" and t.warmup_steps > 0:
            found.append(
                f"training.warmup_steps = {t.warmup_steps} has no effect with "
                "training.lr_scheduler = 'constant'; the constant schedule has no warmup."
            )
        if d.validation_split == 0 and t.eval_steps != field_spec("training.eval_steps").default:
            found.append(
                f"training.eval_steps = {t.eval_steps} has no effect with "
                "dataset.validation_split = 0; there is nothing held out to evaluate."
            )
        dist = self.distributed
        if dist.cpu_offload and dist.strategy != "fsdp":
            found.append(
                "distributed.cpu_offload = true has no effect with distributed.strategy = "
                f"{dist.strategy!r}; offloading applies to FSDP only."
            )
        if dist.strategy == "fsdp" and q.fp32_upcast and q.mode != "none":
            found.append(
                "quantization.fp32_upcast = true has no effect with distributed.strategy = "
                "'fsdp'; FSDP-QLoRA keeps every weight in the compute dtype so that a layer's "
                "weights can be sharded together."
            )
        return tuple(found)

    def to_dict(self) -> dict[str, Any]:
        """The TOML tree, ``schema_version`` first; tuples become lists."""
        tree: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        for section in fields(self):
            values = dataclasses.asdict(getattr(self, section.name))
            tree[section.name] = {
                k: list(v) if isinstance(v, tuple) else v for k, v in values.items()
            }
        return tree

    @classmethod
    def from_dict(cls, tree: Mapping[str, Any], source: str | os.PathLike | None = None) -> Recipe:
        """Build and validate a recipe; missing keys take their defaults.

        Raises `RecipeError` for an unknown section or key, a value of the wrong type, a
        value outside what is allowed, or a ``schema_version`` this release cannot read.
        """
        version = tree.get("schema_version", SCHEMA_VERSION)
        if type(version) is not int or version != SCHEMA_VERSION:  # true == 1 in Python
            raise RecipeError(
                "schema_version",
                f"{version!r} is not supported; this release reads schema_version = "
                f"{SCHEMA_VERSION}",
                source,
            )
        section_types = _hints(cls)
        sections: dict[str, Any] = {}
        for name, body in tree.items():
            if name == "schema_version":
                continue
            if name not in section_types:
                raise RecipeError(
                    name,
                    f"unknown section; the sections are {', '.join(section_types)}",
                    source,
                )
            if not isinstance(body, Mapping):
                raise RecipeError(name, "must be a table ([" + name + "])", source)
            sections[name] = _build_section(name, section_types[name], body, source)
        return cls(**sections).validate(source)

    def with_changes(self, **sections: Mapping[str, Any]) -> Recipe:
        """A copy with some keys changed, e.g. ``with_changes(lora={"r": 8})``; validated."""
        tree = self.to_dict()
        for name, changes in sections.items():
            tree.setdefault(name, {}).update(changes)
        return Recipe.from_dict(tree)


@functools.cache
def field_specs() -> tuple[FieldSpec, ...]:
    """Every key of a recipe as a `FieldSpec`, in section order, then field order."""
    specs = []
    for section in fields(Recipe):
        section_type = _hints(Recipe)[section.name]
        hints = _hints(section_type)
        for f in fields(section_type):
            meta = f.metadata
            specs.append(
                FieldSpec(
                    section=section.name,
                    key=f.name,
                    type=hints[f.name],
                    default=f.default,
                    help=meta["help"],
                    label=meta["label"],
                    choices=meta.get("choices"),
                    choice_help=meta.get("choice_help"),
                    choice_labels=meta.get("choice_labels"),
                    minimum=meta.get("minimum"),
                    maximum=meta.get("maximum"),
                    step=meta.get("step"),
                    decimals=meta.get("decimals"),
                )
            )
    return tuple(specs)


@functools.cache
def _specs_by_name() -> dict[str, FieldSpec]:
    return {spec.dotted: spec for spec in field_specs()}


def field_spec(dotted: str) -> FieldSpec:
    """The `FieldSpec` of ``section.key`` (``"training.max_steps"``).

    Raises KeyError naming the key, and the keys there are, when it is not a recipe key.
    """
    try:
        return _specs_by_name()[dotted]
    except KeyError:
        raise KeyError(
            f"{dotted!r} is not a recipe key; the keys are {', '.join(_specs_by_name())}"
        ) from None


def _build_section(name: str, section_type: type, body: Mapping[str, Any], source) -> Any:
    hints = get_type_hints(section_type)
    values: dict[str, Any] = {}
    for key, value in body.items():
        dotted = f"{name}.{key}"
        if key not in hints:
            raise RecipeError(dotted, f"unknown key; [{name}] takes {', '.join(hints)}", source)
        values[key] = _coerce(dotted, hints[key], value, source)
    return section_type(**values)


def _coerce(dotted: str, hint: Any, value: Any, source) -> Any:
    """Check ``value`` against the annotation; ints are accepted where floats are expected."""
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise RecipeError(dotted, f"{value!r} is not a boolean; use true or false", source)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise RecipeError(dotted, f"{value!r} is not a whole number", source)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise RecipeError(dotted, f"{value!r} is not a number", source)
    if hint is str:
        if isinstance(value, str):
            return value
        raise RecipeError(dotted, f"{value!r} is not a string", source)
    # str | tuple[str, ...]: a string or a list of strings.
    if any(get_origin(arg) is tuple for arg in get_args(hint)):
        if isinstance(value, str):
            return value
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise RecipeError(dotted, f"{value!r} must be a string or a list of strings", source)
    raise TypeError(f"no coercion for {hint!r}")  # a programming error, not bad input


def _looks_like_path(value: str) -> bool:
    # A hub id ("org/name") has a slash too: a plain relative "a/b" counts as a path only
    # when it exists beside the recipe (see resolve_paths).
    return not value.startswith("builtin:") and (
        value.startswith((".", "/", "~")) or "\\" in value or value.endswith(".gguf")
    )


def _absolute(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and validate a TOML recipe; relative paths become absolute against its folder.

    The file must be UTF-8 (a byte-order mark at the start is allowed and skipped). Raises
    `RecipeError` naming the file (and the key, the TOML line, or the offset of the first
    byte that is not UTF-8) on any problem.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RecipeError("recipe", "file not found; check the path", path) from None
    except OSError as exc:
        raise RecipeError("recipe", f"cannot be read ({exc.strerror})", path) from None
    text = _decode_utf8(data, path)
    try:
        tree = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError("recipe", f"is not valid TOML: {exc}", path) from None
    recipe = Recipe.from_dict(tree, source=path)
    return resolve_paths(recipe, path.resolve().parent)


_BOM = b"\xef\xbb\xbf"


def _decode_utf8(data: bytes, path: Path) -> str:
    """The file's text; a leading UTF-8 byte-order mark is dropped (editors on Windows write
    one). Not UTF-8: `RecipeError` with the offset and line of the first bad byte."""
    skip = len(_BOM) if data.startswith(_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = skip + exc.start
        line = data.count(b"\n", 0, offset) + 1
        raise RecipeError(
            "recipe",
            f"is not UTF-8 text: byte {offset} (0x{data[offset]:02x}, line {line}) is not "
            "valid UTF-8; save the file as UTF-8 (for example with an editor's 'Save with "
            "encoding' command)",
            path,
        ) from None


def resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    """Make the recipe's relative file paths absolute against ``base``."""
    model_source = recipe.model.source
    if _looks_like_path(model_source) or (base / model_source).exists():
        model_source = _absolute(model_source, base)
    dataset_path = recipe.dataset.path
    if not dataset_path.startswith("builtin:"):
        dataset_path = _absolute(dataset_path, base)
    return replace(
        recipe,
        model=replace(recipe.model, source=model_source),
        dataset=replace(recipe.dataset, path=dataset_path),
        output=replace(recipe.output, dir=_absolute(recipe.output.dir, base)),
    )


def recipe_to_toml(recipe: Recipe) -> str:
    """The recipe as TOML text, every key written out (nothing left to library defaults)."""
    import tomli_w

    return tomli_w.dumps(recipe.to_dict())


def save_recipe(recipe: Recipe, path: str | os.PathLike) -> Path:
    """Write the recipe as TOML atomically (a temporary file renamed into place)."""
    return atomic_write_text(Path(path), recipe_to_toml(recipe))
