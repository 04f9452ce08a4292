"""``qlora-studio train RECIPE.toml [--resume] [--overwrite]``: run a recipe headless.

Progress goes to stderr (phase lines and a tqdm bar: step/max, loss, tokens/s, ETA); the
bundle's path goes to stdout when the run finishes. Ctrl-C asks the job to stop after the
current step and save a checkpoint; a second Ctrl-C kills it. Exit codes: 0 done, 2 bad input,
3 the job failed, 130 stopped with a checkpoint kept.
"""

from __future__ import annotations

import argparse
import signal
import sys

from studio.commands import ExitCode


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="run a recipe headless with a progress bar",
        description=(
            "Fine-tune as RECIPE.toml says and write the adapter bundle to its [output] dir. "
            "Ctrl-C stops after the current step and keeps a checkpoint (--resume continues); "
            "press it twice to kill the job. Exit codes: 0 done, 2 bad input, 3 failed, "
            "130 stopped."
        ),
    )
    parser.add_argument("recipe", metavar="RECIPE.toml", help="the run recipe (TOML)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last checkpoint in <output dir>.checkpoints",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing bundle folder (and start over from earlier checkpoints)",
    )


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _Display:
    """Turns engine events into terminal output: phase lines, messages and a step bar."""

    def __init__(self):
        self.bar = None
        self.phase = None
        self.convert_shown = -1

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            _err(message)

    def _bar(self, total: int):
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                desc="training",
                unit="step",
                file=sys.stderr,
                dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                "[{elapsed}{postfix}]",
            )
        return self.bar

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def show(self, event) -> None:
        from studio.core import events as ev

        if isinstance(event, ev.PhaseChanged):
            if event.phase == "converting" and event.progress is not None:
                tenth = int(event.progress * 10)
                if tenth > self.convert_shown:
                    self.convert_shown = tenth
                    self.write(f"[converting] {event.message} {event.progress:.0%}")
                return
            if event.phase != self.phase or event.message:
                self.write(f"[{event.phase}] {event.message}".rstrip())
            self.phase = event.phase
        elif isinstance(event, ev.StepLogged):
            bar = self._bar(event.max_steps)
            bar.total = event.max_steps
            postfix = f"loss={event.loss:.4f}, {event.tokens_per_second:.0f} tok/s"
            if event.eta_s is not None:
                postfix += f", ETA {_duration(event.eta_s)}"
            bar.set_postfix_str(postfix, refresh=False)
            if event.step > bar.n:
                bar.update(event.step - bar.n)
            else:
                bar.refresh()
        elif isinstance(event, ev.EvalLogged):
            self.write(f"[training] step {event.step}: eval loss {event.eval_loss:.4f}")
        elif isinstance(event, ev.CheckpointSaved):
            self.write(f"[training] checkpoint saved: {event.path}")
        elif isinstance(event, ev.Paused):
            self.write(f"[training] paused after step {event.step}")
        elif isinstance(event, ev.Resumed):
            self.write(f"[training] resumed at step {event.step}")
        elif isinstance(event, ev.LogMessage):
            prefix = "" if event.level == "info" else f"{event.level}: "
            self.write(f"  {prefix}{event.message}")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def run(args: argparse.Namespace) -> int:
    from studio.core.recipe import RecipeError, load_recipe

    try:
        recipe = load_recipe(args.recipe)
    except RecipeError as exc:
        _err(f"error: {exc}")
        return ExitCode.BAD_INPUT
    for note in recipe.notes():
        _err(f"note: {note}")
    from studio.core.engine import EngineRunner
    from studio.core.engine.errors import CheckpointError, OutputExistsError, OutputLockedError
    from studio.core.engine.preflight import preflight
    from studio.core.events import TERMINAL_EVENTS
    from studio.core.models import ModelSourceError

    try:
        preflight(recipe, resume=args.resume, overwrite=args.overwrite)
    except (OutputExistsError, CheckpointError, OutputLockedError, ModelSourceError) as exc:
        _err(f"error: {exc}")
        return ExitCode.BAD_INPUT
    runner = EngineRunner(recipe, resume=args.resume, overwrite=args.overwrite)
    display = _Display()
    interrupts = 0

    def on_sigint(signum, frame):
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            display.write(
                "Stopping after the current step and saving a checkpoint "
                "(press Ctrl-C again to kill the job)..."
            )
            runner.stop()
        else:
            display.write("Killing the job.")
            runner.kill()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        runner.start()
        terminal = None
        while terminal is None:
            for event in runner.poll(timeout=0.5):
                display.show(event)
                if isinstance(event, TERMINAL_EVENTS):
                    terminal = event
        runner.join(timeout=60)
    finally:
        signal.signal(signal.SIGINT, previous)
        display.close()
    return _report(terminal, args, recipe.output.dir)


def _report(terminal, args, output_dir=None) -> int:
    from studio.core import events as ev
    from studio.core.engine.errors import is_bad_input
    from studio.core.units import format_bytes

    if isinstance(terminal, ev.Finished):
        loss = f", final loss {terminal.final_loss:.4f}" if terminal.final_loss is not None else ""
        peak = ""
        if terminal.peak_bytes is not None:
            peak = f", measured peak {format_bytes(terminal.peak_bytes)}"
            if terminal.estimate_bytes:
                peak += f" (estimate {format_bytes(terminal.estimate_bytes)})"
        _err(f"Done: {terminal.step} steps{loss}{peak}.")
        print(terminal.bundle_dir, flush=True)
        return ExitCode.OK
    if isinstance(terminal, ev.Stopped):
        if terminal.checkpoint:
            _err(
                f"Stopped at step {terminal.step}; checkpoint kept in {terminal.checkpoint}. "
                f"Continue with: qlora-studio train {args.recipe} --resume"
            )
        else:
            _err("Stopped before the first checkpoint; nothing to resume from.")
        return ExitCode.STOPPED
    if is_bad_input(terminal):
        _err(f"error: {terminal.message}")
        return ExitCode.BAD_INPUT
    message = terminal.message
    if terminal.details and output_dir is not None:
        # The traceback goes to the run's log file, never to the terminal; the engine has
        # written it there already when its message names the file.
        from studio.core.engine.runlog import LOG_REFERENCE, log_failure, with_log_reference

        if LOG_REFERENCE not in message:
            message = with_log_reference(message, log_failure(output_dir, terminal))
    _err(f"error: the job failed while {terminal.phase} ({terminal.error_type}):\n{message}")
    return ExitCode.FAILED
