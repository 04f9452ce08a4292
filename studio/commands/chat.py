"""``qlora-studio chat BUNDLE [--prompt TEXT] [--compare] [--max-new-tokens N]``.

Loads the bundle's base model as it was trained, applies the adapter and answers greedily.
With ``--compare`` each prompt is also answered with the adapter disabled (the bare base
model), and both answers are printed, labelled, side by side when the terminal is wide enough
and one after the other otherwise. Without ``--prompt`` it reads prompts from stdin until an
empty line, ``exit`` or end of input.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import textwrap

from studio.commands import ExitCode


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="generate with a trained adapter bundle (and compare with the base model)",
        description="Generate with an adapter bundle; --compare also answers with the base model.",
    )
    parser.add_argument("bundle", metavar="BUNDLE", help="a bundle folder written by train")
    parser.add_argument("--prompt", help="answer this prompt and exit (default: interactive)")
    parser.add_argument(
        "--compare", action="store_true", help="also answer with the adapter disabled"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=128, metavar="N", help="reply length (default 128)"
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def format_side_by_side(left: tuple[str, str], right: tuple[str, str], width: int) -> str:
    """Two labelled texts in two columns of ``width`` characters in all."""
    column = (width - 3) // 2

    def lines(text: str) -> list[str]:
        out: list[str] = []
        for paragraph in text.splitlines() or [""]:
            out.extend(textwrap.wrap(paragraph, column) or [""])
        return out

    a = [left[0], "-" * min(column, len(left[0]))] + lines(left[1])
    b = [right[0], "-" * min(column, len(right[0]))] + lines(right[1])
    rows = max(len(a), len(b))
    a += [""] * (rows - len(a))
    b += [""] * (rows - len(b))
    return "\n".join(f"{x:<{column}} | {y}".rstrip() for x, y in zip(a, b, strict=False))


def _answer(chat, prompt: str, args) -> str:
    adapter_label = f"with adapter ({os.path.basename(os.path.normpath(args.bundle))})"
    with_adapter = chat.generate(prompt, max_new_tokens=args.max_new_tokens)
    if not args.compare:
        return with_adapter
    base = chat.generate(prompt, max_new_tokens=args.max_new_tokens, adapter=False)
    base_label = "base model (adapter disabled)"
    width = shutil.get_terminal_size((0, 0)).columns
    if sys.stdout.isatty() and width >= 100:
        return format_side_by_side((adapter_label, with_adapter), (base_label, base), width)
    return f"=== {adapter_label} ===\n{with_adapter}\n\n=== {base_label} ===\n{base}"


def run(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 1:
        _err("error: --max-new-tokens must be 1 or more")
        return ExitCode.BAD_INPUT
    import warnings

    from transformers.utils import logging as hf_logging

    from studio.core.bundle import BundleError
    from studio.core.chat import load_chat_model
    from studio.core.models import ModelSourceError
    from studio.core.quant import QuantError

    hf_logging.disable_progress_bar()  # our own progress lines say what is happening
    warnings.filterwarnings("ignore", category=FutureWarning)  # library API renames
    try:
        chat = load_chat_model(
            args.bundle, device=args.device, progress=lambda m: _err(f"[chat] {m}")
        )
    except (BundleError, ModelSourceError, QuantError) as exc:
        _err(f"error: {exc}")
        return ExitCode.BAD_INPUT
    limit = chat.context_length
    if limit and args.max_new_tokens > limit:
        _err(
            f"error: --max-new-tokens {args.max_new_tokens} is more than the base model's "
            f"context of {limit} tokens (prompt and reply together); use at most {limit}"
        )
        return ExitCode.BAD_INPUT
    if args.prompt is not None:
        print(_answer(chat, args.prompt, args), flush=True)
        return ExitCode.OK
    _err("Type a prompt and press Enter; an empty line, 'exit' or Ctrl-D ends.")
    while True:
        try:
            prompt = input("you> " if sys.stdin.isatty() else "")
        except (EOFError, KeyboardInterrupt):
            break
        if not prompt.strip() or prompt.strip() in ("exit", "quit"):
            break
        print(_answer(chat, prompt, args), flush=True)
        print(flush=True)
    return ExitCode.OK
