"""One module per ``qlora-studio`` subcommand: ``add_parser(subparsers)`` and ``run(args)``."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """The exit codes promised in docs/architecture.md."""

    OK = 0
    BAD_INPUT = 2  # a message names the file, field or line and what to do
    FAILED = 3  # the job failed (out of memory and the like), with phase and suggestion
    STOPPED = 130  # stopped by the user, checkpoint kept
