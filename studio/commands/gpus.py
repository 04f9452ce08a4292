"""``qlora-studio gpus [--json]``: list the NVIDIA GPUs (or the simulated ones).

The table shows index, name, VRAM total/free/used in GiB, compute capability, bf16 support
and driver version; ``--json`` prints ``{"gpus": [...], "source": ..., "reason": ...}`` with
memory in bytes. No driver is not an error: it says so and exits 0. A malformed
``QLORA_STUDIO_FAKE_GPUS`` is bad input: a message on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from studio.commands import ExitCode

GIB = 1024**3


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "gpus",
        help="list NVIDIA GPUs: memory, compute capability, bf16 support, driver",
        description="List the NVIDIA GPUs this machine has (through NVML), or the simulated "
        "ones of QLORA_STUDIO_FAKE_GPUS.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON (memory in bytes)")
    return parser


def run(args: argparse.Namespace) -> int:
    from studio.core.gpu import FakeGpuError, discover_gpus

    try:
        discovery = discover_gpus()
    except FakeGpuError as exc:
        print(f"qlora-studio gpus: {exc}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    if args.json:
        print(json.dumps(discovery.to_dict(), indent=2))
    else:
        print(format_table(discovery))
    return ExitCode.OK


def format_table(discovery) -> str:
    """The discovery as a table for people, or the reason no GPU was found."""
    if not discovery.gpus:
        what = "No simulated GPU" if discovery.source == "simulated" else "No NVIDIA GPU"
        return f"{what} found: {discovery.reason}.\nTraining will use the CPU."
    header = ("#", "Name", "Total GiB", "Free GiB", "Used GiB", "CC", "bf16", "Driver")
    rows = [header]
    for gpu in discovery.gpus:
        name = gpu.name + (" (simulated)" if gpu.simulated else "")
        rows.append(
            (
                str(gpu.index),
                name,
                f"{gpu.total_bytes / GIB:.2f}",
                f"{gpu.free_bytes / GIB:.2f}",
                f"{gpu.used_bytes / GIB:.2f}",
                "{}.{}".format(*gpu.compute_capability),
                "yes" if gpu.bf16_supported else "no",
                gpu.driver_version or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    numeric = {0, 2, 3, 4}
    lines = [
        "  ".join(
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
