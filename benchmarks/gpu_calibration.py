"""The whole estimate against a GPU's measured peak: the calibration run for the CUDA terms.

Runs a matrix of short, real engine runs (`EngineRunner` on recipes, as whole_run_accuracy.py
does on the CPU) on the first CUDA GPU and prints, side by side for each: the estimate's
total, torch's peak reserved memory plus the CUDA context (the engine's `measured_peak`:
what the manifest and the window show), torch's peak allocated memory, and NVML's
per-process figure for the engine process (its highest sample, read 20 times a second from
this process; what nvidia-smi shows, paged optimizer state included). The estimate's CUDA
terms (activations, logits, `cuda_context`, `allocator`; memory.COEFFICIENTS) have not been
measured on a GPU yet: this is the run that calibrates them.

Models: the built-in SmolLM2-135M (nothing to download); a local model folder can be added
with ``--model PATH`` (repeatable, 16 more runs each). The matrix is 16 runs of 3 steps:
checkpointing x fp32 upcast, 512 x 4 and 2048 x 1 tokens, r=16 with paged_adamw_8bit and r=64
with adamw_torch. Not timed on a GPU yet: each run is mostly the engine's start-up (imports
and loading, 10-20 s), so about 3-6 minutes in all; ``--quick`` runs the first 8 (about half).

    python benchmarks/gpu_calibration.py [--model PATH]... [--steps 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# (gradient checkpointing, max_length, rank, batch, optimizer, fp32 upcast)
MATRIX = [
    (ckpt, seq, rank, batch, optim, upcast)
    for (ckpt, upcast), (seq, batch), (rank, optim) in itertools.product(
        ((True, True), (True, False), (False, True), (False, False)),
        ((512, 4), (2048, 1)),
        ((16, "paged_adamw_8bit"), (64, "adamw_torch")),
    )
]


class NvmlPeak:
    """The highest NVML per-process figure of ``pid`` on GPU ``index``, sampled on a thread."""

    def __init__(self, index: int, pid: int, period_s: float = 0.05):
        from studio.core.gpu import GpuSampler

        self.sampler = GpuSampler()
        self.index, self.pid, self.period_s = index, pid, period_s
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            sample = self.sampler.sample(self.index, self.pid)
            value = sample.process_memory_bytes if sample is not None else None
            if value is not None:
                self.peak = max(self.peak or 0, value)
            self._stop.wait(self.period_s)

    def stop(self) -> int | None:
        self._stop.set()
        self._thread.join()
        self.sampler.close()
        return self.peak


def run_once(recipe, gpu_index: int) -> dict:
    from studio.core.bundle import read_bundle
    from studio.core.engine.runner import EngineRunner
    from studio.core.events import Failed, Finished, Stopped

    runner = EngineRunner(recipe, overwrite=True)
    began = time.monotonic()
    runner.start()
    nvml = NvmlPeak(gpu_index, runner.pid)
    terminal = None
    while terminal is None:
        for event in runner.poll(timeout=0.5):
            if isinstance(event, (Finished, Failed, Stopped)):
                terminal = event
    runner.join()
    nvml_peak = nvml.stop()
    if not isinstance(terminal, Finished):
        return {"failed": getattr(terminal, "message", str(terminal))}
    manifest = read_bundle(terminal.bundle_dir).manifest
    return {
        "estimate": manifest["estimate"],
        "measured": manifest["measured_peak"],
        "nvml_peak_bytes": nvml_peak,
        "seconds": time.monotonic() - began,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="a local model folder")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--gpu", type=int, default=0, help="NVML / CUDA index (PCI bus order)")
    parser.add_argument("--quick", action="store_true", help="the first 8 settings only")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()

    from whole_run_accuracy import write_long_dataset

    from studio.core.gpu import discover_gpus
    from studio.core.recipe import BUILTIN_MODEL
    from studio.core.units import format_bytes

    discovery = discover_gpus()
    if not discovery.gpus or discovery.source != "nvml":
        print(f"No CUDA GPU: {discovery.reason or 'only simulated GPUs'}", file=sys.stderr)
        return 2
    from studio.core.recipe import Recipe

    rows = []
    sources = [BUILTIN_MODEL, *args.model]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        dataset = write_long_dataset(scratch / "long.jsonl", count=16, words=3000)
        print(
            f"{'model':10} {'ckpt':4} {'seq':>5} {'r':>3} {'b':>2} {'optimizer':16} {'up':3} "
            f"{'estimate':>10} {'reserved+ctx':>12} {'allocated':>10} {'NVML':>10} {'est/meas':>8}"
        )
        for source in sources:
            for ckpt, seq, rank, batch, optim, upcast in MATRIX[: 8 if args.quick else None]:
                recipe = Recipe().with_changes(
                    model={"source": source},
                    quantization={"compute_dtype": "auto", "fp32_upcast": upcast},
                    lora={"r": rank, "alpha": 2 * rank, "dropout": 0.05},
                    dataset={
                        "path": str(dataset),
                        "format": "text",
                        "max_length": seq,
                        "validation_split": 0,
                    },
                    training={
                        "max_steps": args.steps,
                        "batch_size": batch,
                        "optimizer": optim,
                        "gradient_checkpointing": ckpt,
                        "save_steps": args.steps,
                        "logging_steps": 1,
                        "warmup_steps": 0,
                        "device": f"cuda:{args.gpu}",
                    },
                    output={"dir": str(scratch / "out")},
                )
                result = run_once(recipe, args.gpu)
                name = Path(source).name if source != BUILTIN_MODEL else "builtin"
                row = {
                    "model": name,
                    "checkpointing": ckpt,
                    "max_length": seq,
                    "r": rank,
                    "batch": batch,
                    "optimizer": optim,
                    "fp32_upcast": upcast,
                    **result,
                }
                rows.append(row)
                if "failed" in result:
                    print(f"{name:10} failed: {result['failed']}", flush=True)
                    continue
                est = result["estimate"]["total_bytes"]
                measured = result["measured"]
                row["error"] = est / measured["bytes"] - 1
                print(
                    f"{name[:10]:10} {'on' if ckpt else 'off':4} {seq:5} {rank:3} {batch:2} "
                    f"{optim:16} {'on' if upcast else 'off':3} {format_bytes(est):>10} "
                    f"{format_bytes(measured['bytes']):>12} "
                    f"{format_bytes(measured.get('allocated_peak_bytes')):>10} "
                    f"{format_bytes(result['nvml_peak_bytes']):>10} {row['error']:+8.1%}",
                    flush=True,
                )
    done = [r for r in rows if "error" in r]
    if done:
        worst = max(done, key=lambda r: abs(r["error"]))
        print(f"worst case: {worst['error']:+.1%} over {len(done)} runs")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
