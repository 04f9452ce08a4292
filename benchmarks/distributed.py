"""One process against two (DDP through accelerate, gloo) on the CPU, same global batch.

A random Llama of 3.1M parameters (hidden 256, 4 layers, intermediate 688, GQA 8/4 heads, the
test tokenizer; ``--model builtin`` takes the built-in SmolLM2-135M instead) in NF4 with
double quantization and float32 compute (``--dtype``), LoRA r=16 on all linears without
dropout, the sample dataset at up to 160 tokens (``--max-length``), no evaluation, AdamW,
constant learning rate. Three runs at the same global batch of 4, each through `EngineRunner`
as ``qlora-studio train`` runs it: one process at batch 4 with torch's own thread count (two
on two cores), the same with one thread (``OMP_NUM_THREADS=1``), and two processes at batch 2
(accelerate gives each one thread). Reported: time from start to the first step, the whole
run, per-step wall time after two warm-up steps, tokens per second, the largest relative
difference of a step's loss from the one-process run, and the measured peak (for two
processes, each process's VmHWM). ``--rounds`` repeats the three.

    python benchmarks/distributed.py [--steps 8] [--model random|builtin] [--dtype float32]
        [--max-length 160] [--rounds 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

WARMUP = 2


def make_llama(folder: Path) -> Path:
    """The random Llama of the docstring, with the tiny test tokenizer."""
    import torch
    from tiny_models import make_tokenizer
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def recipe(steps: int, processes: int, out: Path, dtype: str, length: int, source: str):
    from studio.core.recipe import Recipe

    return Recipe().with_changes(
        model={"source": source},
        quantization={"compute_dtype": dtype},
        lora={"r": 16, "alpha": 32, "dropout": 0.0},
        dataset={"max_length": length, "validation_split": 0.0},
        training={
            "max_steps": steps,
            "batch_size": 4 // processes,
            "save_steps": 10 * steps,
            "device": "cpu",
            "optimizer": "adamw_torch",
            "lr_scheduler": "constant",
            "warmup_steps": 0,
        },
        output={"dir": str(out)},
        distributed={"num_processes": processes},
    )


def run(steps: int, processes: int, out: Path, dtype: str, length: int, source: str) -> dict:
    from studio.core.engine import EngineRunner
    from studio.core.events import TERMINAL_EVENTS, Finished, StepLogged

    runner = EngineRunner(recipe(steps, processes, out, dtype, length, source), overwrite=True)
    started = time.monotonic()
    runner.start()
    events, first_step_s = [], None
    while True:
        batch = runner.poll(timeout=0.5)
        for event in batch:
            events.append(event)
            if isinstance(event, StepLogged) and first_step_s is None:
                first_step_s = time.monotonic() - started
        if events and isinstance(events[-1], TERMINAL_EVENTS):
            break
    runner.join()
    total_s = time.monotonic() - started
    end = events[-1]
    if not isinstance(end, Finished):
        raise SystemExit(f"{processes} process(es): {end}")
    steps_ = [e for e in events if isinstance(e, StepLogged)]
    step_s = [b.elapsed_s - a.elapsed_s for a, b in zip(steps_, steps_[1:], strict=False)]
    timed = step_s[WARMUP:]
    from studio.core.bundle import read_bundle

    measured = read_bundle(end.bundle_dir).manifest.get("measured_peak") or {}
    return {
        "processes": processes,
        "batch_per_process": 4 // processes,
        "first_step_s": first_step_s,
        "total_s": total_s,
        "step_s_median": statistics.median(timed),
        "tokens_per_s_median": statistics.median(e.tokens_per_second for e in steps_[WARMUP:]),
        "losses": {e.step: e.loss for e in steps_},
        "peak_bytes": measured.get("bytes"),
        "per_process_bytes": measured.get("per_process_bytes"),
        "estimate_bytes": end.estimate_bytes,
    }


def _with_threads(threads: int | None, call):
    """Run ``call`` with the engine's torch threads capped (OMP_NUM_THREADS) or as they are."""
    saved = os.environ.get("OMP_NUM_THREADS")
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        return call()
    finally:
        if threads is not None:
            if saved is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--model", choices=("random", "builtin"), default="random")
    parser.add_argument("--dtype", default="float32", help="compute dtype (default float32)")
    parser.add_argument("--max-length", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"1p": [], "1p1t": [], "2p": []}
    with tempfile.TemporaryDirectory() as tmp:
        source = "builtin:smollm2-135m-instruct"
        if args.model == "random":
            source = str(make_llama(Path(tmp) / "llama"))
        common = (args.dtype, args.max_length, source)
        out = Path(tmp)
        for _ in range(args.rounds):
            results["1p"].append(run(args.steps, 1, out / "one", *common))
            results["2p"].append(run(args.steps, 2, out / "two", *common))
            one_thread = _with_threads(1, lambda: run(args.steps, 1, out / "one1t", *common))
            results["1p1t"].append(one_thread)
    one, two, one1 = results["1p"][-1], results["2p"][-1], results["1p1t"][-1]
    worst = max(
        abs(r["losses"][s] - one["losses"][s]) / abs(one["losses"][s])
        for r in results["2p"] + results["1p1t"]
        for s in one["losses"]
    )
    gib = 2**30
    names = (("1p", "1 process"), ("1p1t", "1 proc, 1 thr"), ("2p", "2 processes"))
    print(f"{'':26}" + "".join(f" {label:>14}" for _, label in names))
    for label, key, fmt in (
        ("start to first step (s)", "first_step_s", "{:.1f}"),
        ("whole run (s)", "total_s", "{:.1f}"),
        ("step, median (s)", "step_s_median", "{:.2f}"),
        ("tokens/s, median", "tokens_per_s_median", "{:.0f}"),
    ):
        cells = ["/".join(fmt.format(r[key]) for r in results[name]) for name, _ in names]
        print(f"{label:26}" + "".join(f" {c:>14}" for c in cells))
    per = two["per_process_bytes"] or []
    peaks = [f"{one['peak_bytes'] / gib:.2f}", f"{one1['peak_bytes'] / gib:.2f}"]
    peaks.append(" + ".join(f"{b / gib:.2f}" for b in per))
    print(f"{'peak (GiB)':26}" + "".join(f" {c:>14}" for c in peaks))
    print(f"largest relative loss difference against 1 process: {worst:.2e}")
    if args.json:
        args.json.write_text(json.dumps({**results, "worst_rel_loss_diff": worst}))


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(root), str(root / "tests")]
    main()
