"""``qlora-studio estimate (RECIPE.toml | --model SRC [options]) [--json]``: the memory breakdown.

Resolves the model (converting a GGUF once, with a progress line on stderr), reads its shape
on the meta device, picks the device from GPU discovery (simulated GPUs count) and prints the
estimator's terms, largest first, with total, capacity, verdict and advice; ``--json`` prints
``total_bytes``, ``weights_bytes``, ``terms`` (key -> bytes), ``device``, ``fits`` and more.
Flags override the recipe's keys. Without a recipe or ``--model``, the default recipe (the
built-in model) is used. A ``catalog:<name>`` source or a folder holding only config.json is
estimated as a plan (labelled so): no weights are needed to estimate. Bad recipe, flags or
model: a message on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from studio.commands import ExitCode


def _flag_help(dotted: str, extra: str = "") -> str:
    """A flag's help from the recipe key's metadata: what it does, its bounds and default."""
    from studio.core.recipe import field_spec

    spec = field_spec(dotted)
    text = spec.help
    if spec.minimum is not None and spec.maximum is not None:
        low, high = (
            f"{b:g}" if isinstance(b, float) else str(b) for b in (spec.minimum, spec.maximum)
        )
        text += f" From {low} to {high}."
    if spec.choice_help:
        text += " " + " ".join(f"{c}: {spec.choice_help[c]}" for c in spec.choices or ())
    if extra:
        text += f" {extra}"
    default = spec.default
    if isinstance(default, bool):
        default = "on" if default else "off"
    text += f" Recipe key {dotted}; default {default}."
    return text.replace("%", "%%")  # argparse formats help with %


def _add_flag(parser, flag: str, dotted: str, *, extra: str = "", **kwargs) -> None:
    """A flag that overrides the recipe key ``dotted``; its value lands in ``args`` under
    that key, which `build_recipe` reads back."""
    from studio.core.recipe import field_spec

    spec = field_spec(dotted)
    if spec.type is bool:
        kwargs.update(action=argparse.BooleanOptionalAction, default=None)
    elif spec.choices is not None:
        kwargs["choices"] = spec.choices
    elif spec.type in (int, float):
        kwargs["type"] = spec.type
    parser.add_argument(flag, dest=dotted, help=_flag_help(dotted, extra), **kwargs)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "estimate",
        help="print the memory a recipe (or a model with options) needs, term by term",
        description="Estimate the memory of a QLoRA run: quantized weights (exact), LoRA, "
        "optimizer, activations, logits and CUDA overheads, against the GPU's free memory "
        "(or the available RAM on the CPU). Flags override the recipe.",
    )
    parser.add_argument("recipe", nargs="?", metavar="RECIPE.toml", help="a recipe file")
    _add_flag(parser, "--model", "model.source", metavar="SRC")
    _add_flag(parser, "--trust-remote-code", "model.trust_remote_code")
    _add_flag(parser, "--quant-mode", "quantization.mode")
    _add_flag(parser, "--quant-type", "quantization.quant_type")
    _add_flag(parser, "--compute-dtype", "quantization.compute_dtype")
    _add_flag(parser, "--double-quant", "quantization.double_quant")
    _add_flag(parser, "--fp32-upcast", "quantization.fp32_upcast")
    _add_flag(parser, "--r", "lora.r", metavar="RANK")
    _add_flag(
        parser,
        "--target-modules",
        "lora.target_modules",
        metavar="NAMES",
        extra="Here: 'all-linear' or comma-separated names (q_proj,v_proj).",
    )
    _add_flag(parser, "--lora-dropout", "lora.dropout", metavar="P")
    _add_flag(parser, "--batch-size", "training.batch_size", metavar="N")
    _add_flag(parser, "--dataset", "dataset.path", metavar="PATH")
    _add_flag(parser, "--max-length", "dataset.max_length", metavar="TOKENS")
    _add_flag(parser, "--gradient-checkpointing", "training.gradient_checkpointing")
    _add_flag(parser, "--optimizer", "training.optimizer")
    _add_flag(parser, "--device", "training.device", metavar="DEV")
    _add_flag(
        parser,
        "--num-processes",
        "distributed.num_processes",
        metavar="N",
        extra="Above 1 the figures are one GPU's share, and the fewest GPUs that fit is shown.",
    )
    _add_flag(parser, "--strategy", "distributed.strategy")
    _add_flag(parser, "--cpu-offload", "distributed.cpu_offload")
    parser.add_argument(
        "--no-data",
        action="store_true",
        help="count every example at dataset.max_length without reading the dataset (by "
        "default its longest example is measured with the model's tokenizer: batches are "
        "padded only to their longest example, so shorter data needs less memory)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON (bytes)")
    return parser


def _longest_example(recipe, resolved) -> int | None:
    """The dataset's longest example in tokens (with the model's tokenizer), or None when it
    cannot be measured here (a plan has no tokenizer; a dataset error is the train command's
    to report: the estimate then counts max_length, with a note)."""
    if resolved.plan or not recipe.dataset.path:
        return None
    try:
        from studio.core.helper import preview_dataset

        # the window's preview, read here in-process: the same stats the window counts
        preview = preview_dataset(recipe.dataset, str(resolved.path), lambda *_: None, count=0)
        return preview.stats.max_tokens
    except Exception as exc:  # noqa: BLE001 - the estimate still stands on max_length
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(
            f"note: the dataset's lengths could not be measured ({reason}); every example is "
            "counted at dataset.max_length",
            file=sys.stderr,
        )
        return None


def _fail(message: str) -> int:
    print(f"qlora-studio estimate: {message}", file=sys.stderr)
    return ExitCode.BAD_INPUT


def build_recipe(args: argparse.Namespace):
    """The recipe from the file (or the defaults) with the flags applied; RecipeError if bad."""
    from studio.core.recipe import Recipe, load_recipe

    recipe = load_recipe(args.recipe) if args.recipe else Recipe()
    changes: dict[str, dict] = {}
    for dotted, value in vars(args).items():
        if "." not in dotted or value is None:
            continue  # not a recipe key (RECIPE.toml, --json, --no-data), or not given
        section, key = dotted.split(".", 1)
        if dotted == "lora.target_modules" and value != "all-linear":
            value = [v.strip() for v in value.split(",") if v.strip()]
        changes.setdefault(section, {})[key] = value
    return recipe.with_changes(**changes) if changes else recipe


class _Progress:
    """A one-line progress indicator on stderr for the GGUF conversion."""

    def __init__(self) -> None:
        self.shown = False

    def __call__(self, phase: str, fraction: float | None) -> None:
        pct = "" if fraction is None else f" {fraction:4.0%}"
        print(
            f"\r{phase} the model to safetensors (once){pct}", end="", file=sys.stderr, flush=True
        )
        self.shown = True

    def done(self) -> None:
        if self.shown:
            print(file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from studio.core.gpu import FakeGpuError, discover_gpus
    from studio.core.memory import estimate_with_data, format_table
    from studio.core.models import ModelSourceError, read_shape, resolve_model
    from studio.core.quant import QuantError, resolve_device
    from studio.core.recipe import RecipeError

    try:
        recipe = build_recipe(args)
    except RecipeError as exc:
        return _fail(str(exc))
    for note in recipe.notes():
        print(f"note: {note}", file=sys.stderr)
    try:
        discovery = discover_gpus()
        device = resolve_device(recipe.training.device, discovery)
    except (FakeGpuError, QuantError) as exc:
        return _fail(str(exc))

    progress = _Progress()
    try:
        resolved = resolve_model(
            recipe.model.source,
            progress=progress,
            trust_remote_code=recipe.model.trust_remote_code,
            allow_plan=True,  # a catalog entry or a config.json alone: estimate it as a plan
        )
        progress.done()
        if resolved.kind == "catalog":
            from studio.core.catalog import catalog_shape

            shape = catalog_shape(resolved.source)
        else:
            shape = read_shape(resolved, trust_remote_code=recipe.model.trust_remote_code)
    except ModelSourceError as exc:
        progress.done()
        return _fail(f"model.source: {exc}")
    from studio.core.engine.validation import check_recipe_against_shape

    try:
        check_recipe_against_shape(recipe, shape)  # e.g. target_modules the model lacks
    except RecipeError as exc:
        return _fail(str(exc))
    longest = None if args.no_data else _longest_example(recipe, resolved)
    try:
        est = estimate_with_data(shape, recipe, device, longest_tokens=longest)
    except QuantError as exc:
        return _fail(str(exc))

    from studio.core.scaling import smallest_fitting_processes

    smallest = {
        strategy: smallest_fitting_processes(shape, recipe, device, strategy)
        for strategy in ("ddp", "fsdp")
    }
    if args.json:
        data = est.to_json_dict()
        data["smallest_fitting_processes"] = smallest
        data["model"] = {
            "source": resolved.source,
            "kind": resolved.kind,
            "path": str(resolved.path),
            "summary": shape.summary(),
            "plan": resolved.plan,
        }
        data["labels"] = {t.key: t.label for t in est.terms}
        print(json.dumps(data, indent=2))
    else:
        print(f"Model: {resolved.display_name} ({shape.summary()})")
        if resolved.plan:
            print(
                "Plan: only the model's config was read (no weights here); the estimate is the "
                "same as for the downloaded model."
            )
        q = recipe.quantization
        quant = (
            "no quantization"
            if q.mode == "none"
            else f"{q.mode} {q.quant_type if q.mode == '4bit' else 'LLM.int8'}"
            + (", double quant" if q.mode == "4bit" and q.double_quant else "")
        )
        t = recipe.training
        print(
            f"Recipe: {quant}, compute {est.compute_dtype}, LoRA r={recipe.lora.r}, "
            f"batch {t.batch_size} x {est.sequence_tokens} tokens"
            + (" (the dataset's longest example)" if est.sequence_from_data else "")
            + ", "
            f"checkpointing {'on' if t.gradient_checkpointing else 'off'}, {t.optimizer}"
        )
        if est.processes > 1:
            print(
                f"Per GPU: {est.processes} processes, {est.strategy.upper()}"
                + (", CPU offload" if recipe.distributed.cpu_offload else "")
                + " (docs/cluster.md)"
            )
        print()
        print(format_table(est))
        print(_smallest_line(smallest, recipe))
    return ExitCode.OK


def _smallest_line(smallest: dict, recipe) -> str:
    """The fewest processes (GPUs like this one) that fit, per strategy."""
    offload = " with CPU offload" if recipe.distributed.cpu_offload else ""
    parts = []
    for strategy, count in smallest.items():
        name = strategy.upper() + (offload if strategy == "fsdp" else "")
        if count is None:
            parts.append(f"{name}: none up to 64")
        else:
            parts.append(f"{name}: {count}")
    return "Fewest GPUs that fit: " + "; ".join(parts)
