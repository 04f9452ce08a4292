"""The model catalog: the configs of the models people fine-tune, shipped for planning.

``catalog:<name>`` (e.g. ``catalog:llama-3.1-70b``) is a model source that holds only the
model's ``config.json`` (``studio/resources/catalog/<name>/config.json``, a few KB each), so
`qlora-studio estimate`, `qlora-studio plan` and the window can say whether a model fits a
GPU, and what change makes it fit, before anything is downloaded. Such a source is a *plan*:
its `ResolvedModel.plan` is True and training refuses it, naming the hub id to download.

The configs carry the published architecture values (hidden size, MLP width, layers, heads,
KV heads, head_dim where it differs, vocabulary, tied embeddings); ``index.json`` beside them
gives each a display name, its hub id and its published parameter count, which the tests hold
the parameter count computed from the config to (within 1 %).

Reading a shape builds the model on the meta device (about a second for a 70B model), so
`catalog_shape` keeps the shapes it read as JSON in ``cache_dir()/catalog-shapes``, keyed by
the config's hash and the transformers version.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from studio.core.models import LinearShape, ModelShape, ModelSourceError, ParamShape, ResolvedModel
from studio.core.paths import cache_dir

CATALOG_PREFIX = "catalog:"


def catalog_dir() -> Path:
    """The folder of the shipped configs (package data)."""
    return Path(__file__).resolve().parents[1] / "resources" / "catalog"


@dataclass(frozen=True)
class CatalogEntry:
    """One catalog model: ``name`` is what follows ``catalog:`` in a source."""

    name: str
    display_name: str
    hub_id: str
    published_params: int
    path: Path

    @property
    def source(self) -> str:
        return CATALOG_PREFIX + self.name


@lru_cache(maxsize=1)
def catalog_entries() -> tuple[CatalogEntry, ...]:
    """Every catalog model, smallest first."""
    root = catalog_dir()
    index = json.loads((root / "index.json").read_text(encoding="utf-8"))
    entries = [
        CatalogEntry(
            name,
            info["display_name"],
            info["hub_id"],
            int(info["published_params"]),
            root / name,
        )
        for name, info in index.items()
    ]
    return tuple(sorted(entries, key=lambda e: e.published_params))


def is_catalog_source(source: str) -> bool:
    return source.strip().lower().startswith(CATALOG_PREFIX)


def catalog_entry(source_or_name: str) -> CatalogEntry:
    """The entry for ``catalog:<name>`` or ``<name>``; `ModelSourceError` naming the choices."""
    name = source_or_name.strip()
    if name.lower().startswith(CATALOG_PREFIX):
        name = name[len(CATALOG_PREFIX) :]
    name = name.lower()
    for entry in catalog_entries():
        if entry.name == name:
            return entry
    names = ", ".join(e.name for e in catalog_entries())
    raise ModelSourceError(
        f"{source_or_name!r} is not in the model catalog. Catalog models: {names}."
    )


def resolve_catalog(source: str) -> ResolvedModel:
    """The plan-only `ResolvedModel` of a ``catalog:<name>`` source (config.json, no weights)."""
    entry = catalog_entry(source)
    return ResolvedModel(
        entry.source, "catalog", entry.path, f"{entry.display_name} (plan)", plan=True
    )


def not_trainable_message(resolved: ResolvedModel) -> str:
    """Why a plan cannot be trained, and what to give instead."""
    if resolved.kind == "catalog":
        entry = catalog_entry(resolved.source)
        return (
            f"{resolved.source} is a plan: QLoRA Studio ships only its config, so it can be "
            f"estimated but not trained. Download the weights on a connected machine "
            f"(hf download {entry.hub_id}) and set model.source to {entry.hub_id!r} or to the "
            "downloaded folder."
        )
    return (
        f"{resolved.path} has config.json but no weights (*.safetensors): it can be estimated "
        "as a plan but not trained. Pick the complete model folder, or download the model."
    )


def catalog_shape(source_or_name: str) -> ModelShape:
    """The shape of a catalog model, read once and then kept on disk."""
    entry = catalog_entry(source_or_name)
    config = (entry.path / "config.json").read_bytes()
    try:
        from transformers import __version__ as tf_version
    except ImportError:  # pragma: no cover - a dependency
        tf_version = "?"
    key = hashlib.sha256(config + tf_version.encode()).hexdigest()[:20]
    cached = cache_dir() / "catalog-shapes" / f"{entry.name}-{key}.json"
    try:
        return shape_from_json(json.loads(cached.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    from studio.core.models import read_shape

    shape = read_shape(entry.path)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(shape)), encoding="utf-8")
        tmp.replace(cached)
    except OSError:
        pass  # a read-only cache only costs the next call a second
    return shape


def shape_from_json(data: dict) -> ModelShape:
    """A `ModelShape` from ``dataclasses.asdict(shape)`` read back from JSON."""

    def param(d: dict) -> ParamShape:
        return ParamShape(**{**d, "shape": tuple(d["shape"])})

    return ModelShape(
        **{
            **data,
            "params": tuple(param(d) for d in data["params"]),
            "buffers": tuple(param(d) for d in data["buffers"]),
            "linears": tuple(LinearShape(**d) for d in data["linears"]),
            "modules_not_converted": tuple(data["modules_not_converted"]),
        }
    )
