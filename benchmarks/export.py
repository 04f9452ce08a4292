"""Export of the built-in model: time, peak memory and how close each merge is to training.

Trains the shipped sample recipe once (or takes ``--bundle``), then runs ``qlora-studio
export`` in its own process, one after another: merged (both merges measured, the closer
kept), and GGUF f16, bf16 and q8_0 (each merging into the weights the merged run kept). For each: wall time of the command, the export's own time, the peak
resident memory of the exporting process (and of llama.cpp's converter child), output size,
and for the merged export the mean KL divergence, max logit difference and top-1 agreement
of each merge (original / dequantized weights) against the quantized base + adapter.

    python benchmarks/export.py [--bundle BUNDLE] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from studio.core.units import format_bytes, format_duration  # noqa: E402

RUNS = (
    ("merged", ["--to", "merged"]),
    ("gguf f16", ["--to", "gguf", "--gguf-type", "f16"]),
    ("gguf bf16", ["--to", "gguf", "--gguf-type", "bf16"]),
    ("gguf q8_0", ["--to", "gguf", "--gguf-type", "q8_0"]),
)


def train_sample(root: Path) -> Path:
    recipe = root / "sample.toml"
    text = (REPO / "recipes" / "smollm2-sample.toml").read_text(encoding="utf-8")
    text = text.replace('dir = "../runs/smollm2-sample"', f'dir = "{root / "bundle"}"')
    recipe.write_text(text, encoding="utf-8")
    subprocess.run(
        [sys.executable, "-m", "studio", "train", str(recipe)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return root / "bundle"


def export(bundle: Path, out: Path, args: list[str]) -> dict:
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "studio",
            "export",
            str(bundle),
            *args,
            "--out",
            str(out),
            "--events",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, TOKENIZERS_PARALLELISM="false"),
    )
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"export {args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = next(
        json.loads(line)["result"]
        for line in proc.stdout.splitlines()
        if line.startswith("{") and json.loads(line).get("event") == "done"
    )
    result["wall_s"] = wall
    result["bytes"] = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="a bundle of the built-in model (default: train one)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qlora-export-bench-") as tmp:
        root = Path(tmp)
        bundle = Path(args.bundle) if args.bundle else train_sample(root)
        results = {}
        for name, extra in RUNS:
            out = root / name.replace(" ", "-")
            if name != "merged":  # the merge the merged run measured and kept
                extra = [*extra, "--merge-into", results["merged"]["merge_into"]]
            results[name] = export(bundle, out, extra)
            print(f"{name}: {format_duration(results[name]['wall_s'])}", file=sys.stderr)
    print(
        "| export | command wall time | export time | peak RSS (exporting process) | converter peak RSS | output size |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(
            f"| {name} | {r['wall_s']:.1f} s | {r['seconds']:.1f} s | "
            f"{format_bytes(r['peak_rss_bytes'])} (merging {format_bytes(r['merge_peak_rss_bytes'])}) | "
            f"{format_bytes(r.get('convert_peak_rss_bytes'))} | {format_bytes(r['bytes'])} |"
        )
    print()
    print("| merged into | mean KL (nats/token) | max logit difference | top-1 agreement |")
    print("| --- | --- | --- | --- |")
    for kind, fig in results["merged"]["figures"].items():
        kept = " (kept)" if kind == results["merged"]["merge_into"] else ""
        print(
            f"| {kind}{kept} | {fig['mean_kl']:.5f} | {fig['max_logit_diff']:.3f} | "
            f"{fig['top1_agreement']:.1%} ({fig['positions']} tokens) |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
