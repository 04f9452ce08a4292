"""Engine overhead: training steps per second of the studio's engine against a plain
transformers + PEFT script (benchmarks/plain_qlora.py) with the same model, data and settings.

Both run in their own fresh process on the CPU: the built-in model in NF4 with double
quantization and bf16 compute, LoRA r=16 on all linears, batch 2, the sample dataset cut to
128 tokens, paged AdamW 8-bit, gradient checkpointing, no evaluation and no checkpoint inside
the timed steps. Each round runs both, and the order flips from round to round (plain then
studio, studio then plain, ...) so drift in the machine's speed hits both alike. Per-step wall
times leave out the first two steps (warm-up). Besides the pooled figures it reports each
round's ratio, because on a shared machine one process can run 15 % faster than the next for
no reason of its own.

Wall-clock ratios on a shared machine cannot resolve a few per cent, so ``--profile`` adds
one more studio run, after the timed ones and left out of their figures (the sampler itself
takes CPU), sampled with py-spy (``pip install -e .[bench]``). It reports the share of the
training-loop samples (stacks under ``Trainer.train``) that sit in the studio's own code (its
callback, event sending, metrics file): the engine's overhead measured directly, whatever the
machine's speed does meanwhile.

    python benchmarks/engine_overhead.py [--steps 16] [--rounds 4] [--profile] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WARMUP = 2


def studio_recipe(steps: int, out: Path):
    from studio.core.recipe import Recipe

    return Recipe().with_changes(
        quantization={"compute_dtype": "bfloat16"},
        lora={"r": 16, "alpha": 32, "dropout": 0.05},
        dataset={"max_length": 128, "validation_split": 0.0},
        training={
            "max_steps": steps,
            "batch_size": 2,
            "save_steps": 10 * steps,
            "device": "cpu",
            "optimizer": "paged_adamw_8bit",
            "gradient_checkpointing": True,
        },
        output={"dir": str(out)},
    )


def run_studio(
    steps: int, out: Path, profile_to: Path | None = None
) -> tuple[list[float], list[float]]:
    """Per-step wall times and non-padding tokens of a studio engine run; with
    ``profile_to``, py-spy samples the engine process into that file (raw format)."""
    from studio.core.engine.runner import EngineRunner
    from studio.core.events import TERMINAL_EVENTS, Failed, StepLogged

    runner = EngineRunner(studio_recipe(steps, out), overwrite=True)
    runner.start()
    spy = None
    if profile_to is not None:
        spy = subprocess.Popen(
            [py_spy(), "record", "--pid", str(runner.pid), "--rate", "100", "--nonblocking"]
            + ["--format", "raw", "--output", str(profile_to)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    logged: list[StepLogged] = []
    while True:
        events = runner.poll(1.0)
        logged += [e for e in events if isinstance(e, StepLogged)]
        ends = [e for e in events if isinstance(e, TERMINAL_EVENTS)]
        if ends:
            if isinstance(ends[0], Failed):
                raise RuntimeError(f"studio run failed: {ends[0].message}")
            break
    runner.join(120)
    if spy is not None:
        spy.wait(60)  # py-spy writes its file when the process it samples has exited
    elapsed = [e.elapsed_s for e in logged]
    times = [b - a for a, b in zip([0.0, *elapsed], elapsed, strict=False)]
    tokens = [e.tokens_per_second * t for e, t in zip(logged, times, strict=True)]
    return times, tokens


def py_spy() -> str:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit("--profile needs py-spy: pip install -e .[bench]")
    return found


def engine_share(raw_profile: Path) -> dict:
    """From py-spy's raw output: how many training-loop samples there were, and how many of
    them were inside the studio's own code below ``Trainer.train`` (with the top frames)."""
    loop = ours = 0
    frames: dict[str, int] = {}
    for line in raw_profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        names = stack.split(";")
        below = [i for i, name in enumerate(names) if name.startswith("Trainer.train (")]
        if not below:
            continue
        loop += int(count)
        studio = [n for n in names[below[0] + 1 :] if "(studio/" in n]
        if studio:
            ours += int(count)
            frames[studio[-1]] = frames.get(studio[-1], 0) + int(count)
    top = sorted(frames.items(), key=lambda kv: -kv[1])[:5]
    return {"loop_samples": loop, "studio_samples": ours, "top_studio_frames": top}


def prepare_plain_inputs(scratch: Path) -> tuple[str, str]:
    """The model folder and the tokenized sample data, written once for the plain script."""
    from transformers import AutoTokenizer

    from studio.core.data import prepare_datasets
    from studio.core.models import resolve_model

    recipe = studio_recipe(1, scratch / "unused")
    model = resolve_model(recipe.model.source)
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    data = prepare_datasets(recipe.dataset, tokenizer, seed=recipe.training.seed)
    folder = scratch / "plain-data"
    data.train.select_columns(["input_ids", "attention_mask", "labels"]).save_to_disk(folder)
    return str(model.path), str(folder)


def run_plain(model: str, data: str, steps: int) -> tuple[list[float], list[float]]:
    script = Path(__file__).with_name("plain_qlora.py")
    done = subprocess.run(
        [sys.executable, str(script), model, data, str(steps)],
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("STEP_TIMES "))
    measured = json.loads(line.removeprefix("STEP_TIMES "))
    return measured["times"], measured["tokens"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--profile", action="store_true", help="sample the engine with py-spy (see above)"
    )
    args = parser.parse_args()
    times = {"plain": [], "studio": []}
    tokens = {"plain": [], "studio": []}
    round_ratios = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model, data = prepare_plain_inputs(scratch)
        for round_ in range(args.rounds):
            runs = [
                ("plain", lambda: run_plain(model, data, args.steps)),
                ("studio", lambda r=round_: run_studio(args.steps, scratch / f"studio-{r}")),
            ]
            medians = {}
            for kind, run in runs if round_ % 2 == 0 else runs[::-1]:
                step_times, step_tokens = run()
                times[kind] += step_times[WARMUP:]
                tokens[kind] += step_tokens[WARMUP:]
                medians[kind] = statistics.median(step_times[WARMUP:])
            round_ratios.append(medians["plain"] / medians["studio"])
            print(
                f"round {round_ + 1}/{args.rounds}: plain {medians['plain']:.3f} s/step, "
                f"studio {medians['studio']:.3f} s/step, studio/plain steps per second "
                f"{round_ratios[-1]:.3f}",
                file=sys.stderr,
                flush=True,
            )
        if args.profile:
            run_studio(args.steps, scratch / "studio-profiled", scratch / "profile.txt")
            profile = engine_share(scratch / "profile.txt")
    results = {
        kind: {
            "steps_timed": len(t),
            "median_step_s": statistics.median(t),
            "mean_step_s": statistics.fmean(t),
            "steps_per_s": 1 / statistics.median(t),
            "tokens_per_s": sum(tokens[kind]) / sum(t),
            "step_times_s": t,
            "step_tokens": tokens[kind],
        }
        for kind, t in times.items()
    }
    for unit in ("steps_per_s", "tokens_per_s"):
        results[f"ratio_studio_to_plain_{unit}"] = results["studio"][unit] / results["plain"][unit]
    if args.profile:
        loop, ours = profile["loop_samples"], profile["studio_samples"]
        results["profile"] = {**profile, "studio_share": ours / loop if loop else None}
    results["round_ratios_steps_per_s"] = round_ratios
    results["median_round_ratio_steps_per_s"] = statistics.median(round_ratios)
    print(
        f"{'runner':7} {'steps':>6} {'median s/step':>14} {'mean s/step':>12} {'steps/s':>8} "
        f"{'tokens/s':>9}"
    )
    for kind in ("plain", "studio"):
        r = results[kind]
        print(
            f"{kind:7} {r['steps_timed']:6} {r['median_step_s']:14.3f} "
            f"{r['mean_step_s']:12.3f} {r['steps_per_s']:8.3f} {r['tokens_per_s']:9.1f}"
        )
    print(f"studio / plain steps per second: {results['ratio_studio_to_plain_steps_per_s']:.3f}")
    print(f"studio / plain tokens per second: {results['ratio_studio_to_plain_tokens_per_s']:.3f}")
    print(
        "per-round studio / plain steps per second: "
        + ", ".join(f"{r:.3f}" for r in round_ratios)
        + f" (median {results['median_round_ratio_steps_per_s']:.3f})"
    )
    if args.profile:
        prof = results["profile"]
        print(
            f"engine profile: {prof['studio_samples']} of {prof['loop_samples']} training-loop "
            f"samples in studio code ({100 * (prof['studio_share'] or 0):.3f} %)"
        )
        for frame, count in prof["top_studio_frames"]:
            print(f"  {count:5}  {frame}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
