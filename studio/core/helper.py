"""A helper process for the window's heavy work: a model's shape, a dataset preview, chat.

Reading a shape imports torch and transformers; a preview loads the model's tokenizer; the
chat tab loads a base model with its adapter and generates. Done on
a thread of the window's own process, that work holds the GIL for up to hundreds of
milliseconds at a time (C-extension imports, the tokenizer's Rust parser) and the window
stalls (docs/benchmarks.md, GUI responsiveness). `Helper.call` runs it in one long-lived
spawn child instead; the calling thread only waits on a queue, which releases the GIL.

Calls run one at a time, in order. ``fn`` must be a module-level function (it is pickled by
name); it receives the arguments and a ``progress(message, fraction)`` callable whose reports
reach the caller's ``progress``. Any failure in the child comes back as `HelperError` with
the child's message and traceback; a child that died is started afresh on the next call.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import traceback
from collections.abc import Callable

_PARENT_CHECK_S = 1.0


class HelperError(Exception):
    """A helper call failed: ``message`` as the child saw it, ``details`` its traceback."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message, details)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message


class Helper:
    """The parent side: `call` from any thread but the GUI's, `shutdown` when quitting."""

    def __init__(self) -> None:
        import multiprocessing

        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._process = None
        self._requests = self._replies = None

    def _ensure_started(self) -> None:
        if self._process is not None and self._process.is_alive():
            return
        self._requests = self._ctx.Queue()
        self._replies = self._ctx.Queue()
        self._process = self._ctx.Process(
            target=_serve,
            args=(self._requests, self._replies, os.getpid()),
            name="qlora-studio-helper",
            daemon=True,  # ends with the window's process
        )
        self._process.start()

    def call(self, fn: Callable, *args, progress: Callable | None = None):
        """``fn(*args, progress)`` in the helper process; blocks until it returns."""
        with self._lock:
            self._ensure_started()
            process, replies = self._process, self._replies
            self._requests.put((fn, args))
            while True:
                try:
                    kind, *payload = replies.get(timeout=0.5)
                except queue.Empty:
                    if not process.is_alive():  # died, or ended by `shutdown`
                        code = process.exitcode
                        if self._process is process:
                            self._process = None
                        raise HelperError(
                            f"the helper process ended unexpectedly (exit code {code}); try again"
                        ) from None
                    continue
                if kind == "progress":
                    if progress is not None:
                        progress(*payload)
                elif kind == "result":
                    return payload[0]
                else:
                    raise HelperError(*payload)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def shutdown(self) -> None:
        """End the helper process now (a call in progress is abandoned)."""
        process, self._process = self._process, None
        if process is not None and process.is_alive():
            process.terminate()
            process.join(5)


def _serve(requests, replies, parent_pid: int) -> None:
    """The helper process: answer requests until told to stop or the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the window's to handle
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def report(message: str, fraction: float | None = None) -> None:
        replies.put(("progress", message, fraction))

    while True:
        try:
            request = requests.get(timeout=_PARENT_CHECK_S)
        except queue.Empty:
            if os.getppid() != parent_pid:
                return
            continue
        if request is None:
            return
        fn, args = request
        try:
            result = fn(*args, report)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller
            replies.put(("error", str(exc) or type(exc).__name__, traceback.format_exc()))
        else:
            replies.put(("result", result))


# ------------------------------------------------------------------- the window's reads

_tokenizers: dict[str, object] = {}
_chat_models: dict[str, object] = {}


def read_model(source: str, progress):
    """Resolve (maybe convert) a model source and read its shape: (ResolvedModel, ModelShape).

    A ``catalog:<name>`` source or a folder with only config.json resolves to a plan
    (``resolved.plan``, its display name ends in "(plan)"): estimated, never trained.
    """
    from studio.core.models import read_shape, resolve_model

    progress("Resolving the model source…", None)
    resolved = resolve_model(source, progress=progress, allow_plan=True)
    progress("Reading the model's shape (no weights loaded)…", None)
    if resolved.kind == "catalog":
        from studio.core.catalog import catalog_shape

        return resolved, catalog_shape(resolved.source)
    return resolved, read_shape(resolved)


def load_tokenizer(model_path: str):
    """The model's tokenizer, loaded once per folder in this process."""
    tokenizer = _tokenizers.get(model_path)
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_path)
        _tokenizers[model_path] = tokenizer
    return tokenizer


def preview_dataset(section, model_path: str, progress, count: int = 3):
    """`studio.core.data.preview_dataset` of ``section`` with the tokenizer of ``model_path``."""
    from studio.core.data import preview_dataset as preview

    progress("Loading the tokenizer…", None)
    tokenizer = load_tokenizer(model_path)
    progress("Formatting examples…", None)
    return preview(section, tokenizer, count=count)


def chat_pair(bundle: str, prompt: str, max_new_tokens: int, device: str, report):
    """(answer with the adapter, answer of the bare base model) to ``prompt``.

    ``report(kind, payload)``: ("status", text) while loading, ("adapter" | "base", piece) for
    each piece of text as it is generated. The loaded model is kept for the next prompt.
    """
    from studio.core.chat import load_chat_model

    model = _chat_models.get(bundle)
    if model is None:
        _chat_models.clear()
        report("status", "Loading the base model and the adapter…")
        model = load_chat_model(
            bundle, device=device, progress=lambda message: report("status", message)
        )
        _chat_models[bundle] = model
    answers = []
    for kind, label in (("adapter", "the adapter"), ("base", "the base model")):
        report("status", f"Generating with {label}…")
        answers.append(
            model.generate(
                prompt,
                max_new_tokens=max_new_tokens,
                adapter=kind == "adapter",
                on_text=lambda piece, kind=kind: report(kind, piece),
            )
        )
    return tuple(answers)


def plan_models(device, recipe, progress):
    """`studio.core.plan.plan_table` for the window: every catalog model against ``device``."""
    from studio.core.plan import plan_table

    progress("Estimating every catalog model on this device…", None)
    return plan_table(device, recipe)
