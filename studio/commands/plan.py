"""``qlora-studio plan [RECIPE.toml] [--gpu INDEX | --simulated JSON] [--json]``: what fits.

For every model of the catalog (configs shipped with QLoRA Studio, nothing is downloaded),
whether the recipe (the default recipe without one) fits the GPU, the longest max_length and
the largest batch size that fit, and the change the estimator advises. The GPU is the first
one found (``--gpu`` picks another); ``--simulated`` plans for a GPU described as in
``QLORA_STUDIO_FAKE_GPUS`` (one JSON object or a list; the first is used). Without a GPU it
plans for the CPU (available RAM). Bad input: a message on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from studio.commands import ExitCode


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "plan",
        help="list the catalog's models: does the recipe fit this GPU, and what does",
        description="For each model of the built-in catalog (Llama 3.x, Mistral, Qwen2.5, "
        "Gemma 2, Phi-3.5, SmolLM2; configs only, nothing is downloaded): whether the recipe "
        "fits, the longest max_length and the largest batch size that fit, and what to change.",
    )
    parser.add_argument("recipe", nargs="?", metavar="RECIPE.toml", help="a recipe file")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--gpu", type=int, metavar="INDEX", help="plan for this GPU (NVML index)")
    where.add_argument(
        "--simulated",
        metavar="JSON",
        help='plan for a simulated GPU, e.g. \'{"name": "RTX 4090", "total_mib": 24564, '
        '"free_mib": 24000, "compute_capability": [8, 9]}\'',
    )
    parser.add_argument("--json", action="store_true", help="print JSON (bytes)")
    return parser


def _fail(message: str) -> int:
    print(f"qlora-studio plan: {message}", file=sys.stderr)
    return ExitCode.BAD_INPUT


def _device(args, recipe):
    from studio.core.gpu import GpuDiscovery, discover_gpus, parse_fake_gpus
    from studio.core.plan import plan_device

    if args.simulated is not None:
        text = args.simulated.strip()
        if text.startswith("{"):
            text = f"[{text}]"
        gpus = parse_fake_gpus(text)
        if not gpus:
            raise ValueError("--simulated lists no GPU")
        return plan_device(GpuDiscovery(gpus[:1], None, "simulated"), gpu_index=gpus[0].index)
    discovery = discover_gpus()
    if args.gpu is not None:
        return plan_device(discovery, gpu_index=args.gpu)
    return plan_device(discovery, recipe.training.device)


def run(args: argparse.Namespace) -> int:
    from studio.core.gpu import FakeGpuError
    from studio.core.plan import plan_table
    from studio.core.quant import QuantError
    from studio.core.recipe import Recipe, RecipeError, load_recipe

    try:
        recipe = load_recipe(args.recipe) if args.recipe else Recipe()
    except RecipeError as exc:
        return _fail(str(exc))
    try:
        device = _device(args, recipe)
        rows = plan_table(device, recipe)
    except (FakeGpuError, QuantError, ValueError) as exc:
        return _fail(str(exc))
    if args.json:
        print(
            json.dumps(
                {"device": device.name, "rows": [row.to_json_dict() for row in rows]}, indent=2
            )
        )
    else:
        print(format_table(rows, device, recipe))
    return ExitCode.OK


def format_table(rows, device, recipe) -> str:
    """The plan for people: one line per model, then the advice of those that do not fit."""
    from studio.core.plan import PLAN_COLUMNS
    from studio.core.units import format_bytes

    t = recipe.training
    lines = [
        f"Device: {device.name}; capacity {format_bytes(rows[0].capacity_bytes) if rows else '-'}",
        f"Recipe: batch {t.batch_size} x {recipe.dataset.max_length} tokens, LoRA "
        f"r={recipe.lora.r}, checkpointing {'on' if t.gradient_checkpointing else 'off'}, "
        f"{t.optimizer}, fp32 upcast {'on' if recipe.quantization.fp32_upcast else 'off'}",
        "",
    ]
    header = PLAN_COLUMNS
    table = [header, *(row.cells() for row in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for n, r in enumerate(table):
        lines.append(
            "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    advised = [row for row in rows if row.verdict != "fits" and row.advice]
    if advised:
        lines.append("")
        lines += [f"{row.display_name}: {row.advice}" for row in advised]
    lines.append("")
    lines.append(
        "Fits: the estimate is at most 90% of the capacity. Longest seq (at this batch size) "
        "and max batch (at this max_length) are the largest that fit. Estimate one model: "
        "qlora-studio estimate --model catalog:<name>."
    )
    return "\n".join(lines)
