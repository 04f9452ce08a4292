"""``qlora-studio runs``: the run library (`studio.core.runs`) on the command line.

- ``qlora-studio runs [--json]`` lists every run: name, date, model, quantization, rank,
  steps, final training and evaluation loss, estimate, measured peak, duration and status.
- ``qlora-studio runs compare RUN RUN… [--json] [--png FILE] [--x step|tokens|time]`` prints
  the recipe keys that differ and each run's final figures; ``--png`` writes the loss and
  memory curves overlaid.
- ``qlora-studio runs add FOLDER…`` adds bundles (or run folders) made elsewhere.

A RUN is a folder, or the name of a run in the library. Exit codes: 0 done, 2 bad input (a run
that cannot be found, fewer than two runs to compare).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from studio.commands import ExitCode
from studio.core.phases import RunState


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "runs",
        help="list past runs; compare two or more (recipe differences, final figures, curves)",
        description="The run library: every run the studio started (the window or `train`), "
        "recorded under the runs root (QLORA_STUDIO_RUNS_ROOT, default ~/qlora-studio/runs). "
        "Without a subcommand, lists them.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON (bytes, seconds)")
    parser.add_argument("--root", metavar="DIR", help="another runs root than the default")
    sub = parser.add_subparsers(dest="runs_command", metavar="SUBCOMMAND")
    compare = sub.add_parser(
        "compare",
        help="the recipe keys that differ, the final figures, and (--png) the curves",
        description="Compare two or more runs: the recipe keys whose values differ (the "
        "output folder, which names each run, left out), each run's final figures, and with "
        "--png the loss and memory curves overlaid in one image.",
    )
    compare.add_argument("runs", nargs="+", metavar="RUN", help="a run folder or a run's name")
    compare.add_argument("--json", action="store_true", help="print JSON")
    compare.add_argument("--png", metavar="FILE", help="write the overlaid curves to FILE")
    compare.add_argument(
        "--x",
        choices=("step", "tokens", "time"),
        default="step",
        help="the loss curves' x axis: step (default), tokens seen, or training time",
    )
    add = sub.add_parser("add", help="add bundles or run folders made elsewhere")
    add.add_argument("folders", nargs="+", metavar="FOLDER")
    return parser


def _root(args):
    return Path(args.root).expanduser() if getattr(args, "root", None) else None


def run(args: argparse.Namespace) -> int:
    command = getattr(args, "runs_command", None)
    if command == "compare":
        return _compare(args)
    if command == "add":
        return _add(args)
    return _list(args)


# ----------------------------------------------------------------------------- list
def _list(args) -> int:
    from studio.core.runs import index_path, list_runs

    runs = list_runs(_root(args))
    if args.json:
        print(json.dumps({"runs": [r.to_json() for r in runs]}, indent=2))
        return ExitCode.OK
    if not runs:
        print(f"No runs yet in {index_path(_root(args)).parent}.")
        return ExitCode.OK
    print(_table([_row(r) for r in runs], HEADERS))
    for r in runs:
        for problem in r.problems:
            print(f"note: {r.name}: {problem}", file=sys.stderr)
    return ExitCode.OK


HEADERS = (
    "name",
    "date",
    "model",
    "quant",
    "rank",
    "steps",
    "loss",
    "eval loss",
    "estimate",
    "peak",
    "duration",
    "status",
)


def _row(r) -> list[str]:
    from studio.core.units import format_bytes, format_duration

    return [
        r.name,
        _date(r.started),
        _short_model(r.model),
        r.quantization or "—",
        _text(r.rank),
        f"{r.steps}/{r.max_steps}" if r.steps and r.max_steps else _text(r.steps),
        _loss(r.final_loss),
        _loss(r.final_eval_loss),
        format_bytes(r.estimate_bytes) if r.estimate_bytes else "—",
        format_bytes(r.peak_bytes) if r.peak_bytes else "—",
        format_duration(r.duration_s) if r.duration_s is not None else "—",
        r.status_text,
    ]


def _date(stamp) -> str:
    if stamp is None:
        return "—"
    return dt.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M")


def _short_model(source) -> str:
    if not source:
        return "—"
    text = str(source)
    return Path(text).name if "/" in text and Path(text).is_absolute() else text


def _text(value) -> str:
    return "—" if value is None else str(value)


def _loss(value) -> str:
    from studio.core.runs import finite

    return f"{float(value):.4f}" if finite(value) else "—"


def _table(rows: list[list[str]], headers) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


# -------------------------------------------------------------------------- compare
def _compare(args) -> int:
    from studio.core.runs import compare_png, find_run, recipe_diff

    if len(args.runs) < 2:
        print("qlora-studio runs compare: give two or more runs", file=sys.stderr)
        return ExitCode.BAD_INPUT
    try:
        runs = [find_run(ref, _root(args)) for ref in args.runs]
    except LookupError as exc:
        print(f"qlora-studio runs compare: {exc}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    diff = recipe_diff([r.recipe for r in runs])
    if args.png:
        target = Path(args.png).expanduser()
        from studio.core.atomic import atomic_write_bytes

        atomic_write_bytes(target, compare_png(runs, x=args.x))
    if args.json:
        print(
            json.dumps(
                {
                    "runs": [r.to_json() for r in runs],
                    "differences": [{"key": key, "values": values} for key, values in diff],
                    "png": str(Path(args.png).expanduser()) if args.png else None,
                },
                indent=2,
            )
        )
        return ExitCode.OK
    names = [r.name for r in runs]
    if diff:
        print("Recipe keys that differ:")
        print(
            _table([[key, *(_value(v) for v in values)] for key, values in diff], ["key", *names])
        )
    else:
        print("The recipes are the same (apart from the output folder).")
    print()
    print("Final figures:")
    figures = [_row(r) for r in runs]
    print(_table(figures, HEADERS))
    for r in runs:
        for problem in r.problems:
            print(f"note: {r.name}: {problem}", file=sys.stderr)
        if r.state is RunState.MISSING:
            print(f"note: {r.name}: {r.message}", file=sys.stderr)
    if args.png:
        print(f"\nCurves written to {Path(args.png).expanduser()}")
    return ExitCode.OK


def _value(value) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


# ------------------------------------------------------------------------------ add
def _add(args) -> int:
    from studio.core.runs import read_run, register

    status = ExitCode.OK
    for folder in args.folders:
        path = Path(folder).expanduser().absolute()
        summary = read_run(path)
        if summary.state is RunState.MISSING:
            print(f"qlora-studio runs add: {path} is not a run or bundle folder", file=sys.stderr)
            status = ExitCode.BAD_INPUT
            continue
        register(path, how="added", root=_root(args))
        print(f"Added {path} ({summary.status_text})")
    return status
