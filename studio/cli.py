"""The command line: ``qlora-studio [gui|gpus|estimate|train|chat] ...``.

Each subcommand lives in ``studio.commands.<name>`` with ``add_parser(subparsers)`` and
``run(args) -> int``; this module only wires them up, so ``qlora-studio --help`` and
``qlora-studio gpus`` never import torch. Exit codes are those of DESIGN.md (see
`studio.commands.ExitCode`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from studio import __version__

COMMANDS = ("gui", "gpus", "estimate", "train", "chat")


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
    return importlib.import_module(f"studio.commands.{name}").run(args)


def gui_main() -> int:
    """Entry point of the ``qlora-studio-gui`` launcher: always the window."""
    return main(["gui"])


if __name__ == "__main__":
    raise SystemExit(main())
