"""The run recipe: plain data that the GUI edits, the CLI runs and the engine receives.

A recipe is a tree of frozen dataclasses, one per TOML section. `Recipe.from_dict` validates
every key and value and raises `RecipeError` naming the key (``training.batch_size``), what was
found and what is allowed; unknown keys are errors, never ignored. `load_recipe` and
`save_recipe` read and write TOML with a ``schema_version``; saving is atomic.

Relative paths in a recipe file (``dataset.path``, ``output.dir``, a local ``model.source``)
are relative to the folder that holds the file; `load_recipe` resolves them, so a loaded
recipe holds absolute paths and can be run from anywhere.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
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


class RecipeError(ValueError):
    """A recipe key holds a bad value, or the recipe has an unknown key.

    ``key`` is the dotted key (``quantization.quant_type``), ``source`` the file if any.
    """

    def __init__(self, key: str, message: str, source: str | os.PathLike | None = None):
        self.key = key
        self.source = str(source) if source is not None else None
        where = f"{self.source}: " if self.source else ""
        super().__init__(f"{where}{key}: {message}")


def _choice(value: Any, allowed: tuple[str, ...]) -> str | None:
    """None when ``value`` is allowed, else the message that says what is."""
    if value in allowed:
        return None
    return f"{value!r} is not allowed; use one of {', '.join(repr(a) for a in allowed)}"


@dataclass(frozen=True)
class ModelSection:
    """Which base model to fine-tune (see `studio.core.models.resolve_model`)."""

    source: str = BUILTIN_MODEL
    trust_remote_code: bool = False

    def problems(self) -> dict[str, str]:
        if not self.source.strip():
            return {
                "source": "is empty; give a local folder, a hub id, a .gguf file or "
                f"{BUILTIN_MODEL!r}"
            }
        return {}


@dataclass(frozen=True)
class QuantizationSection:
    """How the frozen base model is held in memory.

    ``fp32_upcast`` is PEFT's k-bit preparation casting every non-quantized parameter
    (embeddings, lm_head, norms) to float32: more stable, and more memory (MEMORY_MODEL.md).
    """

    mode: str = "4bit"
    quant_type: str = "nf4"
    compute_dtype: str = "auto"
    double_quant: bool = True
    fp32_upcast: bool = True

    def problems(self) -> dict[str, str]:
        found = {
            "mode": _choice(self.mode, QUANT_MODES),
            "quant_type": _choice(self.quant_type, QUANT_TYPES),
            "compute_dtype": _choice(self.compute_dtype, COMPUTE_DTYPES),
        }
        return {k: v for k, v in found.items() if v}


@dataclass(frozen=True)
class LoraSection:
    """The LoRA adapter: rank, scaling, dropout and which linears it wraps."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"
    use_rslora: bool = False
    use_dora: bool = False

    def problems(self) -> dict[str, str]:
        found: dict[str, str] = {}
        if self.r < 1:
            found["r"] = f"{self.r} is too small; the rank must be 1 or more (8 to 64 is usual)"
        if self.alpha < 1:
            found["alpha"] = f"{self.alpha} is too small; alpha must be 1 or more"
        if not 0.0 <= self.dropout < 1.0:
            found["dropout"] = f"{self.dropout} is out of range; use 0.0 up to (not including) 1.0"
        targets = self.target_modules
        if isinstance(targets, str):
            if targets != "all-linear":
                found["target_modules"] = (
                    f"{targets!r} is not allowed; use 'all-linear' or a list of module names "
                    "such as ['q_proj', 'v_proj']"
                )
        elif not targets or not all(isinstance(t, str) and t for t in targets):
            found["target_modules"] = "must be 'all-linear' or a non-empty list of module names"
        return found


@dataclass(frozen=True)
class DatasetSection:
    """The training data: a file or folder (or the built-in sample) and how to read it."""

    path: str = BUILTIN_DATASET
    format: str = "auto"
    max_length: int = 512
    validation_split: float = 0.1
    train_on_prompt: bool = False

    def problems(self) -> dict[str, str]:
        found: dict[str, str] = {}
        if not self.path.strip():
            found["path"] = f"is empty; give a JSONL/JSON/CSV/Parquet file or {BUILTIN_DATASET!r}"
        if choice := _choice(self.format, DATASET_FORMATS):
            found["format"] = choice
        if self.max_length < 8:
            found["max_length"] = f"{self.max_length} is too small; use 8 or more tokens"
        if not 0.0 <= self.validation_split < 0.9:
            found["validation_split"] = (
                f"{self.validation_split} is out of range; use 0.0 (no evaluation) up to 0.5"
            )
        return found


@dataclass(frozen=True)
class TrainingSection:
    """The optimisation loop. ``max_steps`` > 0 wins over ``epochs``; -1 means use epochs."""

    max_steps: int = 60
    epochs: float = 1.0
    batch_size: int = 2
    grad_accum: int = 1
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_steps: int = 0
    gradient_checkpointing: bool = True
    optimizer: str = "paged_adamw_8bit"
    seed: int = 42
    save_steps: int = 20
    eval_steps: int = 20
    logging_steps: int = 1
    device: str = "auto"

    def problems(self) -> dict[str, str]:
        found: dict[str, str] = {}
        if self.max_steps == 0 or self.max_steps < -1:
            found["max_steps"] = f"{self.max_steps} is not allowed; use a positive count or -1"
        if self.max_steps == -1 and not self.epochs > 0:
            found["epochs"] = f"{self.epochs} is not allowed with max_steps = -1; use more than 0"
        for key in ("batch_size", "grad_accum", "save_steps", "eval_steps", "logging_steps"):
            value = getattr(self, key)
            if value < 1:
                found[key] = f"{value} is too small; use 1 or more"
        if self.warmup_steps < 0:
            found["warmup_steps"] = f"{self.warmup_steps} is negative; use 0 or more"
        if not (math.isfinite(self.learning_rate) and 0 < self.learning_rate < 1):
            found["learning_rate"] = f"{self.learning_rate} is out of range; 1e-5 to 1e-3 is usual"
        if choice := _choice(self.optimizer, OPTIMIZERS):
            found["optimizer"] = choice
        if choice := _choice(self.lr_scheduler, LR_SCHEDULERS):
            found["lr_scheduler"] = choice
        device = self.device
        if not (device in ("auto", "cpu", "cuda") or _is_cuda_index(device)):
            found["device"] = f"{device!r} is not allowed; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        return found


def _is_cuda_index(device: str) -> bool:
    prefix, _, index = device.partition(":")
    return prefix == "cuda" and index.isdigit()


@dataclass(frozen=True)
class OutputSection:
    """Where the adapter bundle is written (checkpoints go to ``<dir>.checkpoints``)."""

    dir: str = "runs/smollm2-sample"

    def problems(self) -> dict[str, str]:
        return {} if self.dir.strip() else {"dir": "is empty; give a folder for the bundle"}


@dataclass(frozen=True)
class Recipe:
    """A whole run, one field per TOML section."""

    model: ModelSection = field(default_factory=ModelSection)
    quantization: QuantizationSection = field(default_factory=QuantizationSection)
    lora: LoraSection = field(default_factory=LoraSection)
    dataset: DatasetSection = field(default_factory=DatasetSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    output: OutputSection = field(default_factory=OutputSection)

    def validate(self, source: str | os.PathLike | None = None) -> Recipe:
        """Return self, or raise `RecipeError` for the first problem found."""
        for section in fields(self):
            for key, message in getattr(self, section.name).problems().items():
                raise RecipeError(f"{section.name}.{key}", message, source)
        return self

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
        section_types = get_type_hints(cls)
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

    Raises `RecipeError` naming the file (and the key, or the TOML line) on any problem.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError("recipe", "file not found; check the path", path) from None
    except OSError as exc:
        raise RecipeError("recipe", f"cannot be read ({exc.strerror})", path) from None
    try:
        tree = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError("recipe", f"is not valid TOML: {exc}", path) from None
    recipe = Recipe.from_dict(tree, source=path)
    return resolve_paths(recipe, path.resolve().parent)


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
