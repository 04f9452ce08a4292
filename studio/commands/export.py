"""``qlora-studio export BUNDLE --to merged|gguf --out DIR [options]``.

Writes a merged model folder (plain transformers, vLLM) or a GGUF file made by llama.cpp's
converter (llama.cpp, Ollama) from an adapter bundle; see `studio.core.export`. Progress goes
to stderr, the output folder to stdout. ``--events`` writes JSON lines to stdout instead (the
window's Export dialog runs this command and reads them). Exit codes: 0 done, 2 bad input,
3 the export failed, 130 cancelled (Ctrl-C or SIGTERM); nothing partial is left behind.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from studio.commands import ExitCode

FORMATS = ("merged", "gguf")
DTYPES = ("bfloat16", "float16")
GGUF_TYPES = ("f16", "bf16", "q8_0")
MERGE_INTO = ("auto", "original", "dequantized")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a merged model (transformers, vLLM) or a GGUF (llama.cpp, Ollama)",
        description=(
            "Export an adapter bundle as a standalone model: --to merged writes a Hugging Face "
            "folder that transformers and vLLM load without PEFT; --to gguf converts it with "
            "llama.cpp's converter and writes an Ollama Modelfile and the llama.cpp command "
            "beside the .gguf. Exit codes: 0 done, 2 bad input, 3 failed, 130 cancelled."
        ),
    )
    parser.add_argument("bundle", metavar="BUNDLE", help="a bundle folder written by train")
    parser.add_argument("--to", required=True, choices=FORMATS, help="merged or gguf")
    parser.add_argument("--out", required=True, metavar="DIR", help="the output folder")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="dtype of the merged weights (default: the bundle's compute dtype, else bfloat16)",
    )
    parser.add_argument(
        "--gguf-type",
        choices=GGUF_TYPES,
        default="q8_0",
        help="GGUF tensor type for --to gguf (default q8_0)",
    )
    parser.add_argument(
        "--merge-into",
        choices=MERGE_INTO,
        default="auto",
        help="merge into the original 16-bit weights or the dequantized 4-bit ones; auto "
        "(default) measures both against the trained model and keeps the closer one",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing output folder"
    )
    parser.add_argument("--events", action="store_true", help=argparse.SUPPRESS)


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _Terminated(BaseException):
    """SIGTERM: stop like Ctrl-C, cleaning up on the way out."""


def run(args: argparse.Namespace) -> int:
    import warnings

    from studio.core.export import (
        ExportCancelled,
        ExportError,
        ExportFailed,
        ExportOptions,
        export_bundle,
    )
    from studio.core.units import format_bytes, format_duration

    events = args.events
    last = {"message": "", "shown": -1}

    def emit(payload: dict) -> None:
        print(json.dumps(payload), flush=True)

    def progress(message, fraction=None) -> None:
        if events:
            emit({"event": "progress", "message": message, "fraction": fraction})
            return
        if message:
            last["message"] = message
            pct = f" ({fraction:.0%})" if fraction is not None else ""
            _err(f"[export] {message}{pct}")
            last["shown"] = int((fraction or 0) * 10)
        elif fraction is not None and int(fraction * 10) > last["shown"]:
            last["shown"] = int(fraction * 10)
            _err(f"[export] {last['message']} ({fraction:.0%})")

    def fail(code: int, message: str) -> int:
        if events:
            emit({"event": "error", "code": int(code), "message": message})
        _err(f"error: {message}")
        return code

    def on_term(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, on_term)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        result = export_bundle(
            ExportOptions(
                bundle=args.bundle,
                to=args.to,
                out=args.out,
                dtype=args.dtype,
                gguf_type=args.gguf_type,
                merge_into=args.merge_into,
                overwrite=args.overwrite,
            ),
            progress=progress,
        )
    except ExportError as exc:
        return fail(ExitCode.BAD_INPUT, str(exc))
    except ExportFailed as exc:
        return fail(ExitCode.FAILED, f"the export failed: {exc}")
    except (ExportCancelled, KeyboardInterrupt, _Terminated):
        return fail(ExitCode.STOPPED, "the export was cancelled; nothing was written")
    finally:
        signal.signal(signal.SIGTERM, previous)
    if events:
        emit({"event": "done", "result": result.to_dict()})
        return ExitCode.OK
    for kind, fig in result.figures.items():
        kept = " (kept)" if kind == result.merge_into else ""
        _err(
            f"  merged into {kind}{kept}: mean KL {fig['mean_kl']:.2e} nats/token, max logit "
            f"difference {fig['max_logit_diff']:.3f}, top-1 agreement "
            f"{fig['top1_agreement']:.1%}"
        )
    _err(
        f"  took {format_duration(result.seconds)}; peak memory {format_bytes(result.peak_rss_bytes)}"
        f" (merging {format_bytes(result.merge_peak_rss_bytes)}"
        + (
            f", converter {format_bytes(result.convert_peak_rss_bytes)}"
            if result.convert_peak_rss_bytes
            else ""
        )
        + ")"
    )
    print(result.path, flush=True)
    return ExitCode.OK
