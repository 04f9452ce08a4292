"""``qlora-studio gui [--recipe FILE]``: open the window (also the default command)."""

from __future__ import annotations

import argparse
import sys

from studio.commands import ExitCode


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "gui",
        help="open the window (the default)",
        description="Open QLoRA Studio's window, with the built-in model and sample dataset "
        "preselected (or the last settings).",
    )
    parser.add_argument("--recipe", metavar="FILE", help="start with this recipe (TOML)")
    return parser


def run(args) -> int:
    from studio.core.recipe import RecipeError

    try:
        from studio.app import run_app

        return run_app(args.recipe)
    except RecipeError as exc:
        print(f"qlora-studio: {exc}", file=sys.stderr)
        return ExitCode.BAD_INPUT
