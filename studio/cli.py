"""The command line: ``qlora-studio [gui|gpus|estimate|plan|train|chat] ...``.

Each subcommand lives in ``studio.commands.<name>`` with ``add_parser(subparsers)`` and
``run(args) -> int``; this module only wires them up, so ``qlora-studio --help`` and
``qlora-studio gpus`` never import torch. Exit codes are those of docs/architecture.md (see
`studio.commands.ExitCode`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from studio import __version__

COMMANDS = ("gui", "gpus", "estimate", "plan", "train", "chat", "export", "runs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qlora-studio",
        description="Point-and-click QLoRA fine-tuning. Without a command, opens the window.",
    )
    parser.add_argument("--version", action="version", version=f"qlora-studio {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"studio.commands.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    name = args.command or "gui"
    if args.command is None:
        args = build_parser().parse_args(["gui", *(argv if argv is not None else sys.argv[1:])])
    try:
        return importlib.import_module(f"studio.commands.{name}").run(args)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # a failure no command expected: no traceback on the terminal
        return _unexpected(name, exc)


def _unexpected(name: str, exc: Exception) -> int:
    """Write the traceback to a log file in the cache and say where it is (exit code 3)."""
    import traceback

    from studio.core.engine.runlog import append_log

    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    from studio.core.paths import cache_dir

    path = append_log(cache_dir() / "logs" / name, f"qlora-studio {name} failed", details)
    where = f" The traceback is in {path}." if path else ""
    text = str(exc).strip() or type(exc).__name__
    print(
        f"error: qlora-studio {name} failed: {type(exc).__name__}: {text}.{where}",
        file=sys.stderr,
        flush=True,
    )
    return 3


def gui_main() -> int:
    """Entry point of the ``qlora-studio-gui`` launcher: always the window."""
    return main(["gui"])


if __name__ == "__main__":
    raise SystemExit(main())
