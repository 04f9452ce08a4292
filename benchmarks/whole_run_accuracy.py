"""The whole estimate against the exact measured peak of real runs (CPU).

Each setting is a real, short run of the engine (`EngineRunner` on a recipe: the spawn child,
loading and quantizing, k-bit preparation, LoRA, tokenizing, the Trainer, a checkpoint and the
bundle), and the figure compared is the whole run's: the estimate's total (what the window and
`qlora-studio estimate` show) against the peak the engine records in the bundle's manifest
(`measured_peak.bytes`: the engine process's VmHWM, the kernel's exact high-water mark of its
resident memory, Python runtime included).

The matrix covers gradient checkpointing on/off, sequence length 64-512, LoRA rank 8/16/64,
batch 1 and 4, adamw_torch and paged_adamw_8bit, the fp32 upcast on/off, on the built-in
SmolLM2-135M (llama) and on a random Qwen2 model big enough that its activations matter
(`QWEN2_CONFIG`). Every example of the dataset is longer than the longest sequence, so every
batch holds exactly batch x max_length tokens, as the estimate assumes.

    python benchmarks/whole_run_accuracy.py [--only 1,4] [--repeat N] [--steps 3] [--json out]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

# A Qwen2 model (biases on q/k/v, tied embeddings, GQA) of ~25 M parameters: 8 layers whose
# activations outweigh its weights at a few hundred tokens, and a 32k vocabulary so the
# logits matter, yet a step takes seconds on two CPU cores.
QWEN2_CONFIG = {
    "hidden_size": 384,
    "intermediate_size": 1024,
    "num_hidden_layers": 8,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "vocab_size": 32000,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
}

# (model, gradient checkpointing, max_length, rank, batch, optimizer, fp32 upcast)
SETTINGS = [
    ("builtin", False, 256, 16, 4, "adamw_torch", True),  # recipes/smollm2-sample.toml
    ("builtin", True, 256, 16, 2, "adamw_torch", True),
    ("builtin", False, 64, 8, 1, "adamw_torch", False),
    ("builtin", True, 512, 64, 1, "paged_adamw_8bit", False),
    ("builtin", False, 512, 8, 1, "paged_adamw_8bit", True),
    ("builtin", True, 128, 8, 4, "adamw_torch", True),
    ("builtin", False, 128, 64, 4, "paged_adamw_8bit", False),
    ("builtin", True, 64, 64, 4, "adamw_torch", False),
    ("qwen2", False, 256, 16, 4, "adamw_torch", True),
    ("qwen2", True, 512, 64, 4, "paged_adamw_8bit", False),
    ("qwen2", False, 512, 8, 1, "adamw_torch", False),
    ("qwen2", True, 128, 8, 1, "adamw_torch", True),
    ("qwen2", False, 64, 64, 4, "paged_adamw_8bit", True),
    ("qwen2", False, 512, 64, 4, "paged_adamw_8bit", True),
]

_WORDS = [
    "the",
    "model",
    "learns",
    "a",
    "habit",
    "from",
    "every",
    "example",
    "and",
    "the",
    "loss",
    "falls",
    "as",
    "the",
    "adapter",
    "grows",
    "quiet",
    "rivers",
    "carry",
    "bright",
    "stones",
    "past",
    "old",
    "mills",
    "while",
    "seven",
    "curious",
    "engineers",
    "measure",
    "memory",
    "pages",
    "arenas",
    "threads",
    "tensors",
    "gradients",
    "checkpoints",
    "logits",
    "tokens",
    "batches",
    "steps",
]


def write_long_dataset(path: Path, count: int = 16, words: int = 900, seed: int = 0) -> Path:
    """Plain-text examples far longer than 512 tokens (every batch is full length)."""
    rng = random.Random(seed)
    rows = [{"text": " ".join(rng.choice(_WORDS) for _ in range(words))} for _ in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_qwen2(folder: Path, config: dict | None = None) -> Path:
    """The random Qwen2 model of `QWEN2_CONFIG` with the tiny test tokenizer."""
    import torch
    from tiny_models import make_tokenizer
    from transformers import AutoModelForCausalLM, Qwen2Config

    tokenizer = make_tokenizer()
    cfg = Qwen2Config(
        **(config or QWEN2_CONFIG),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def recipe_for(setting, source: str, dataset: Path, out: Path, steps: int):
    from studio.core.recipe import Recipe

    _, ckpt, seq, rank, batch, optim, upcast = setting
    return Recipe().with_changes(
        model={"source": source},
        quantization={"compute_dtype": "auto", "fp32_upcast": upcast, "double_quant": True},
        lora={"r": rank, "alpha": 2 * rank, "dropout": 0.05, "target_modules": "all-linear"},
        dataset={"path": str(dataset), "format": "text", "max_length": seq, "validation_split": 0},
        training={
            "max_steps": steps,
            "batch_size": batch,
            "grad_accum": 1,
            "optimizer": optim,
            "gradient_checkpointing": ckpt,
            "save_steps": steps,
            "logging_steps": 1,
            "warmup_steps": 0,
            "device": "cpu",
        },
        output={"dir": str(out)},
    )


def run_once(recipe) -> dict:
    """One engine run; the manifest's estimate and measured peak, and the sampled RSS."""
    import resource

    from studio.core.bundle import read_bundle
    from studio.core.engine.runner import EngineRunner
    from studio.core.events import Failed, Finished, StepLogged, Stopped

    runner = EngineRunner(recipe, overwrite=True)
    began = time.monotonic()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    runner.start()
    rss: list[int] = []
    terminal = None
    while terminal is None:
        for event in runner.poll(timeout=0.5):
            if isinstance(event, StepLogged) and event.process_rss_bytes:
                rss.append(event.process_rss_bytes)
            if isinstance(event, (Finished, Failed, Stopped)):
                terminal = event
    runner.join()
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if not isinstance(terminal, Finished):
        raise RuntimeError(f"run failed: {terminal}")
    manifest = read_bundle(terminal.bundle_dir).manifest
    return {
        "estimate": manifest["estimate"],
        "measured": manifest["measured_peak"],
        "finished_peak_bytes": terminal.peak_bytes,
        "sampled_rss_max": max(rss) if rss else None,
        "seconds": time.monotonic() - began,
        "cpu_seconds": (cpu_after.ru_utime - cpu_before.ru_utime)
        + (cpu_after.ru_stime - cpu_before.ru_stime),
        "sys_seconds": cpu_after.ru_stime - cpu_before.ru_stime,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated 1-based setting numbers")
    parser.add_argument("--repeat", type=int, default=1, help="runs per setting")
    parser.add_argument("--steps", type=int, default=2, help="training steps per run")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()

    from studio.core.recipe import BUILTIN_MODEL
    from studio.core.units import format_bytes

    chosen = [int(x) for x in args.only.split(",")] if args.only else range(1, len(SETTINGS) + 1)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        dataset = write_long_dataset(scratch / "long.jsonl")
        sources = {"builtin": BUILTIN_MODEL}
        if any(SETTINGS[n - 1][0] == "qwen2" for n in chosen):
            sources["qwen2"] = str(make_qwen2(scratch / "qwen2"))
        for number in chosen:
            setting = SETTINGS[number - 1]
            model, ckpt, seq, rank, batch, optim, upcast = setting
            recipe = recipe_for(setting, sources[model], dataset, scratch / "out", args.steps)
            for attempt in range(args.repeat):
                result = run_once(recipe)
                estimated = result["estimate"]["total_bytes"]
                measured = result["measured"]["bytes"]
                row = {
                    "n": number,
                    "model": model,
                    "checkpointing": ckpt,
                    "max_length": seq,
                    "r": rank,
                    "batch": batch,
                    "optimizer": optim,
                    "fp32_upcast": upcast,
                    "attempt": attempt,
                    "estimated_bytes": estimated,
                    "measured_bytes": measured,
                    "error": estimated / measured - 1,
                    "terms": result["estimate"]["terms"],
                    "off_peak_terms": result["estimate"]["off_peak_terms"],
                    "measured": result["measured"],
                    "sampled_rss_max": result["sampled_rss_max"],
                    "seconds": result["seconds"],
                    "cpu_seconds": result["cpu_seconds"],
                    "sys_seconds": result["sys_seconds"],
                }
                rows.append(row)
                print(
                    f"{number:2} {model:7} ckpt={'on ' if ckpt else 'off'} s={seq:3} r={rank:2} "
                    f"b={batch} {optim:16} upcast={'on ' if upcast else 'off'} "
                    f"est {format_bytes(estimated):>10} peak {format_bytes(measured):>10} "
                    f"{row['error']:+6.1%}  ({row['seconds']:.0f} s, cpu {row['cpu_seconds']:.0f} s)",
                    flush=True,
                )
    worst = max(rows, key=lambda r: abs(r["error"]))
    print(f"worst case: {worst['error']:+.1%} (setting {worst['n']})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
