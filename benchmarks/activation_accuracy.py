"""The estimator's training-step terms against what one training step really allocates (CPU).

For each setting the built-in model is loaded and prepared exactly as the engine does (NF4
with double quantization, bf16 compute, PEFT's k-bit preparation with or without the fp32
upcast, LoRA on all linears with dropout 0.05, gradient checkpointing on or off). One
training step (forward and backward on a batch of 2 x seq_len tokens, after one warm-up step)
runs under torch's profiler with memory profiling; `export_memory_timeline` gives every
tensor allocation on the CPU by category over time. Measured: the peak of all live bytes
during the step minus the bytes live when it began (the loaded model and its LoRA weights).
Estimated: what the estimate's step terms count at the peak (saved activations, plus the
larger of the loss phase, logits and loss, and the backward phase, LoRA gradients, the
recomputed layer and the dequantized weight).

This is the CPU path: no autocast (the engine trains without it on the CPU), PyTorch's CPU
attention kernels. On a GPU the same terms meet bf16 autocast, CUDA attention kernels and the
caching allocator, so these figures do not carry over unmeasured (docs/benchmarks.md).

    python benchmarks/activation_accuracy.py [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import tempfile
from pathlib import Path

STEP_TERMS = ("activations", "logits", "lora_grads", "recompute", "dequant")
BATCH = 2


def measure_step_peak(model, batch, scratch: Path) -> dict:
    """Peak bytes above the step's starting level, and the categories at that peak."""
    from torch.profiler import ProfilerActivity, profile

    model(**batch).loss.backward()  # warm-up: lazily created state is not a step's cost
    model.zero_grad(set_to_none=True)
    gc.collect()
    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)
    timeline = scratch / "timeline.json"
    prof.export_memory_timeline(str(timeline), device="cpu")
    _times, sizes = json.loads(timeline.read_text())
    totals = [sum(row) for row in sizes]
    peak_at = max(range(len(totals)), key=totals.__getitem__)
    names = ("parameter", "optimizer_state", "input", "temporary", "activation", "gradient")
    names += ("autograd_detail", "unknown")
    at_peak = dict(zip(names, sizes[peak_at][1:], strict=True))
    start = dict(zip(names, sizes[0][1:], strict=True))
    return {
        "step_peak_bytes": totals[peak_at] - totals[0],
        "by_category_above_start": {k: at_peak[k] - start[k] for k in names},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from studio.core.engine.building import (
        apply_lora,
        keep_4bit_weights_trainable,
        prepare_for_training,
    )
    from studio.core.gpu import discover_gpus
    from studio.core.memory import estimate
    from studio.core.models import read_shape, resolve_model
    from studio.core.quant import make_bnb_config, resolve_device
    from studio.core.recipe import BUILTIN_MODEL, Recipe
    from studio.core.units import format_bytes

    resolved = resolve_model(BUILTIN_MODEL)
    shape = read_shape(resolved)
    device = resolve_device("cpu", discover_gpus())
    rows = []
    settings = itertools.product((True, False), (64, 256), (8, 64), (True, False))
    with tempfile.TemporaryDirectory() as scratch:
        for checkpointing, seq_len, rank, upcast in settings:
            recipe = Recipe().with_changes(
                quantization={"compute_dtype": "bfloat16", "fp32_upcast": upcast},
                lora={"r": rank, "alpha": 2 * rank, "dropout": 0.05},
                dataset={"max_length": seq_len},
                training={
                    "device": "cpu",
                    "batch_size": BATCH,
                    "gradient_checkpointing": checkpointing,
                },
            )
            est = estimate(shape, recipe, device)
            estimated = sum(est.term(key).bytes for key in STEP_TERMS)
            model = AutoModelForCausalLM.from_pretrained(
                resolved.path,
                quantization_config=make_bnb_config(recipe.quantization, "bfloat16"),
                dtype=torch.bfloat16,
                device_map="cpu",
            )
            model.config.use_cache = False
            keep_4bit_weights_trainable(model)
            model = prepare_for_training(
                model, quantized=True, upcast=upcast, gradient_checkpointing=checkpointing
            )
            torch.manual_seed(0)
            model = apply_lora(model, recipe.lora)
            model.train()
            ids = torch.randint(0, shape.vocab_size, (BATCH, seq_len))
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
            measured = measure_step_peak(model, batch, Path(scratch))
            row = {
                "checkpointing": checkpointing,
                "seq_len": seq_len,
                "r": rank,
                "fp32_upcast": upcast,
                "estimated_bytes": estimated,
                "estimated_terms": {key: est.term(key).bytes for key in STEP_TERMS},
                "off_peak_terms": {key: est.term(key).off_peak_bytes for key in STEP_TERMS},
                "measured_bytes": measured["step_peak_bytes"],
                "measured_by_category": measured["by_category_above_start"],
            }
            row["error"] = estimated / row["measured_bytes"] - 1
            rows.append(row)
            print(
                f"ckpt={'on ' if checkpointing else 'off'} seq={seq_len:4} r={rank:3} "
                f"upcast={'on ' if upcast else 'off'}  estimated {format_bytes(estimated):>10}"
                f"  measured {format_bytes(row['measured_bytes']):>10}  {row['error']:+.1%}",
                flush=True,
            )
            del model, batch
            gc.collect()
    worst = max(rows, key=lambda r: abs(r["error"]))
    print(f"worst case: {worst['error']:+.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
