"""Estimator accuracy on this machine: estimated against really held bytes, per setting.

On the CPU, what can be measured exactly is what the loaded model holds and what training
adds before activations:
- weights: `memory.estimate(...).weights_bytes` against `memory.measure_model_bytes` of the
  same model loaded with transformers + bitsandbytes (parameters, buffers and each 4-bit
  weight's quantization state), for NF4/FP4, double quantization on/off, compute dtypes;
- LoRA weights: the estimate's LoRA term against the bytes of the trainable parameters PEFT
  creates, for several ranks.
Also the CPU runtime term (a model: the engine's libraries in memory) against the resident
memory of a fresh process after the engine's imports. What a training step adds is measured
by activation_accuracy.py; the CUDA terms need a GPU
(see docs/benchmarks.md).

    python benchmarks/estimator_accuracy.py [--models builtin,llama,qwen2,gpt2] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def model_folders(names: list[str], scratch: Path) -> dict[str, str]:
    from tiny_models import make_tiny_model

    from studio.core.recipe import BUILTIN_MODEL

    folders = {}
    for name in names:
        folders[name] = (
            BUILTIN_MODEL if name == "builtin" else str(make_tiny_model(scratch / name, name))
        )
    return folders


RUNTIME_PROBE = """
import psutil
import torch, transformers, peft, bitsandbytes, datasets, accelerate
from transformers import AutoModelForCausalLM, Trainer
print(psutil.Process().memory_info().rss)
"""


def measure_cpu_runtime() -> dict:
    """The estimate's cpu_runtime term against the resident memory of a fresh process that has
    imported what the engine imports, before any model."""
    import subprocess

    from studio.core.memory import COEFFICIENTS

    out = subprocess.run(
        [sys.executable, "-c", RUNTIME_PROBE], capture_output=True, text=True, check=True
    )
    return {"estimated": COEFFICIENTS.cpu_runtime_bytes, "measured": int(out.stdout.split()[-1])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="builtin,llama,qwen2,gpt2")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from studio.core.gpu import discover_gpus
    from studio.core.memory import estimate, measure_model_bytes
    from studio.core.models import read_shape, resolve_model
    from studio.core.quant import make_bnb_config, resolve_device
    from studio.core.recipe import Recipe

    device = resolve_device("cpu", discover_gpus())
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, source in model_folders(args.models.split(","), Path(scratch)).items():
            resolved = resolve_model(source)
            shape = read_shape(resolved)
            settings = itertools.product(("nf4", "fp4"), (True, False), ("bfloat16", "float32"))
            for quant_type, double_quant, dtype in settings:
                recipe = Recipe().with_changes(
                    model={"source": source},
                    quantization={
                        "quant_type": quant_type,
                        "double_quant": double_quant,
                        "compute_dtype": dtype,
                    },
                    training={"device": "cpu"},
                )
                model = AutoModelForCausalLM.from_pretrained(
                    resolved.path,
                    quantization_config=make_bnb_config(recipe.quantization, dtype),
                    dtype=getattr(torch, dtype),
                    device_map="cpu",
                )
                est = estimate(shape, recipe, device)
                measured = measure_model_bytes(model)
                rows.append(
                    {
                        "model": name,
                        "term": "weights",
                        "setting": f"{quant_type} dq={'on' if double_quant else 'off'} {dtype}",
                        "estimated": est.weights_bytes,
                        "measured": measured,
                    }
                )
                if quant_type == "nf4" and double_quant and dtype == "bfloat16":
                    for rank in (8, 16, 64):
                        ranked = recipe.with_changes(lora={"r": rank, "dropout": 0.0})
                        lora_term = next(
                            t
                            for t in estimate(shape, ranked, device).terms
                            if t.key == "lora_weights"
                        )
                        peft_model = get_peft_model(
                            model,
                            LoraConfig(r=rank, target_modules="all-linear", task_type="CAUSAL_LM"),
                        )
                        trainable = sum(
                            p.numel() * p.element_size()
                            for p in peft_model.parameters()
                            if p.requires_grad
                        )
                        rows.append(
                            {
                                "model": name,
                                "term": "lora_weights",
                                "setting": f"r={rank}",
                                "estimated": lora_term.bytes,
                                "measured": trainable,
                            }
                        )
                        model = peft_model.unload()
                del model

    print(f"{'model':8} {'term':13} {'setting':26} {'estimated':>13} {'measured':>13} {'error':>8}")
    worst = 0.0
    for row in rows:
        row["error_pct"] = 100.0 * (row["estimated"] - row["measured"]) / row["measured"]
        worst = max(worst, abs(row["error_pct"]))
        print(
            f"{row['model']:8} {row['term']:13} {row['setting']:26} {row['estimated']:13,} "
            f"{row['measured']:13,} {row['error_pct']:+7.3f}%"
        )
    print(f"worst case: {worst:.3f}% over {len(rows)} settings")
    runtime = measure_cpu_runtime()
    print(
        f"cpu_runtime (a model, apart from the exact terms): estimated "
        f"{runtime['estimated']:,} measured {runtime['measured']:,} bytes "
        f"({100.0 * (runtime['estimated'] - runtime['measured']) / runtime['measured']:+.1f}%)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": rows, "worst_pct": worst, "cpu_runtime": runtime}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
