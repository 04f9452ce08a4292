"""Datasets: loading, format detection, chat templating and label masking.

Files are read and checked by `studio.core.data_formats` (see there for the file types, the
three formats and how problems are located); every record is checked before anything is
tokenized, and any record that does not fit is an error naming the file, the line or row and
the field. Nothing is silently dropped.

Rendering. ``alpaca`` records become two chat turns: the user says ``instruction`` (plus
``"\\n\\n" + input`` when there is an input) and the assistant answers ``output``. Chat and
alpaca records are rendered with the tokenizer's own chat template; a tokenizer without one
gets `FALLBACK_CHAT_TEMPLATE` (``### User:`` / ``### Assistant:`` blocks, each answer ending
with the EOS token, a leading BOS when the tokenizer has a BOS distinct from EOS).
``prepare_datasets`` installs that fallback on such a tokenizer so a saved adapter bundle
carries the template it was trained with. ``text`` records are the text plus the EOS token.

Labels. By default only the assistant turns are trained (labels are -100 elsewhere): each
assistant turn's span in the rendered text is found by rendering the conversation up to that
turn (with and without it) and checking that these renderings are prefixes of the whole; the
span covers the answer and its end-of-turn token (``<|im_end|>`` for ChatML), not the line
break after it. Token labels follow from the character spans via the tokenizer's offsets, so
the tokens trained are exactly those of the whole text tokenized at once. Templates that are
not prefix-stable fall back to finding the answer text. ``train_on_prompt`` trains on every
token; ``text`` records are always trained on entirely.

Truncation. Token sequences longer than ``max_length`` are cut at the end and counted in
`TokenStats.truncated`. An example whose trained tokens are all cut away would teach nothing
(and could make a batch's loss undefined), so it is an error naming the record, not a silent
drop: raise ``max_length`` or shorten the prompt.

Bounded memory. Text that can never fit in ``max_length`` tokens is cut before the template
and the tokenizer see it: every string field of a record, and then the rendered text, is cut
to ``max_length * MAX_CHARS_PER_TOKEN`` characters (`char_cap`). No tokenizer averages more
characters per token than that over a whole example, so the tokens kept are the same; but a
single 50 MB line no longer makes the tokenizer hold offsets for millions of tokens. Such an
example counts as truncated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from studio.core.data_formats import (
    FORMATS,
    DatasetError,
    RawRecords,
    check_all,
    detect,
    read_source,
    to_messages,
)
from studio.core.recipe import BUILTIN_DATASET

if TYPE_CHECKING:  # pragma: no cover
    import datasets

    from studio.core.recipe import DatasetSection

__all__ = [
    "FALLBACK_CHAT_TEMPLATE",
    "FORMATS",
    "DatasetError",
    "DatasetPreview",
    "PreparedData",
    "RenderedExample",
    "TokenStats",
    "detect_format",
    "ensure_chat_template",
    "load_records",
    "prepare_datasets",
    "preview_dataset",
    "render_example",
    "resolve_dataset_path",
]

BUILTIN_DATASETS = {BUILTIN_DATASET: "sample/sample.jsonl"}
# A generous bound on characters per token, averaged over max_length tokens (real tokenizers
# average 3-5 characters per token on prose, at most ~10-15 on long runs of spaces or symbols).
MAX_CHARS_PER_TOKEN = 32


def char_cap(max_length: int) -> int:
    """The most characters of one field (and of one rendered example) that are tokenized."""
    return max(4096, int(max_length) * MAX_CHARS_PER_TOKEN)


def _cap_value(value, cap: int):
    if isinstance(value, str):
        return (value[:cap], True) if len(value) > cap else (value, False)
    if isinstance(value, list):
        out, cut = [], False
        for item in value:
            item, was = _cap_value(item, cap)
            out.append(item)
            cut = cut or was
        return (out, True) if cut else (value, False)
    if isinstance(value, dict):
        out, cut = {}, False
        for key, item in value.items():
            item, was = _cap_value(item, cap)
            out[key] = item
            cut = cut or was
        return (out, True) if cut else (value, False)
    return value, False


def _cap_rendered(rendered: _Rendered, cap: int) -> _Rendered:
    if len(rendered.text) <= cap:
        return rendered
    spans = tuple((start, min(end, cap)) for start, end in rendered.spans if start < cap)
    return _Rendered(rendered.text[:cap], spans, rendered.add_special_tokens)


FALLBACK_CHAT_TEMPLATE = (
    "{% if bos_token is defined and bos_token and bos_token != eos_token %}{{ bos_token }}"
    "{% endif %}"
    "{% set eos = eos_token if eos_token is defined and eos_token else '' %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### User:\\n' + message['content'] + '\\n\\n' }}"
    "{% else %}{{ '### Assistant:\\n' + message['content'] + eos + '\\n\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class RenderedExample:
    """One example as the model sees it: ``text`` is exactly the joined ``segments``,
    each ``(piece, trained)`` saying whether the loss covers that piece."""

    text: str
    segments: tuple[tuple[str, bool], ...]


@dataclass(frozen=True)
class TokenStats:
    """Token counts per example, measured *before* truncation (so they show how long the
    data really is); ``truncated`` examples were longer than ``max_length`` and were cut."""

    examples: int
    truncated: int
    min_tokens: int
    mean_tokens: float
    max_tokens: int
    p95_tokens: int

    def summary(self) -> str:
        """One line for people."""
        return (
            f"{self.examples} examples, {self.min_tokens}-{self.max_tokens} tokens "
            f"(mean {self.mean_tokens:.0f}, p95 {self.p95_tokens}), {self.truncated} truncated"
        )


@dataclass(frozen=True)
class PreparedData:
    """Tokenized splits with columns ``input_ids``, ``attention_mask`` and ``labels`` (-100 where
    not trained), unpadded: batch them with a collator that pads labels with -100
    (``DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)``)."""

    train: datasets.Dataset
    validation: datasets.Dataset | None
    format: str
    explanation: str
    stats: TokenStats


@dataclass(frozen=True)
class DatasetPreview:
    """What the GUI shows: the detected format, the first examples rendered, the token stats."""

    format: str
    explanation: str
    examples: tuple[RenderedExample, ...]
    stats: TokenStats


# ---------------------------------------------------------------------------------------------
# Loading


def resolve_dataset_path(path: str) -> Path:
    """The file or folder ``path`` names; ``builtin:sample`` is resources/sample/sample.jsonl.

    Raises DatasetError for an unknown ``builtin:`` name or a path that does not exist.
    """
    text = str(path).strip()
    if text.startswith("builtin:"):
        relative = BUILTIN_DATASETS.get(text)
        if relative is None:
            raise DatasetError(
                text, f"unknown built-in dataset; use one of {', '.join(BUILTIN_DATASETS)}"
            )
        from studio.core.paths import resources_dir

        resolved = resources_dir() / relative
        if not resolved.is_file():
            raise DatasetError(
                resolved,
                "the built-in sample dataset is missing from this installation; regenerate it "
                "with `python scripts/make_sample_dataset.py`",
            )
        return resolved
    resolved = Path(text).expanduser()
    if not resolved.exists():
        raise DatasetError(resolved, "no such file or folder; check dataset.path")
    return resolved


def load_records(path: str, fmt: str = "auto") -> datasets.Dataset:
    """Read and check a dataset; returns its records as a ``datasets.Dataset``.

    Every record is checked against ``fmt`` (detected when "auto"); the first problem is
    raised as DatasetError naming the file, line/row and field, with the count of others.
    """
    raw, _, _ = _load_checked(path, fmt)
    return _as_dataset(raw)


def detect_format(ds, *, path: str = "<dataset>") -> tuple[str, str]:
    """("alpaca" | "chat" | "text", an explanation for people) from a dataset's fields.

    ``ds`` is a ``datasets.Dataset`` or a list of record dicts. Raises DatasetError when
    no format fits.
    """
    if isinstance(ds, list):
        raw = RawRecords(Path(path), "record", lambda i: i + 1, records=ds)
    else:
        raw = RawRecords(Path(path), "row", lambda i: i + 1, dataset=ds)
    return detect(raw)


def _load_checked(path: str, fmt: str) -> tuple[RawRecords, str, str]:
    if fmt != "auto" and fmt not in FORMATS:
        raise DatasetError(path, f"unknown format {fmt!r}; use auto, {', '.join(FORMATS)}")
    raw = read_source(resolve_dataset_path(path))
    if fmt == "auto":
        fmt, explanation = detect(raw)
    else:
        n = len(raw)
        explanation = f"{fmt} (set in the recipe), {n} record{'s' if n != 1 else ''}"
    check_all(raw, fmt)
    return raw, fmt, explanation


def _as_dataset(raw: RawRecords):
    if raw.dataset is not None:
        return raw.dataset
    from datasets import Dataset

    try:
        return Dataset.from_list(raw.records)
    except Exception as exc:  # pyarrow refuses a field whose type changes between records
        field, index = _mixed_field(raw.records)
        if field is None:
            raise DatasetError(raw.path, f"cannot be turned into a table ({exc})") from exc
        raise raw.error(
            index,
            f"field {field!r} has a different type here than in the first record; use one "
            "type per field",
            field=field,
        ) from exc


def _mixed_field(records: list[dict]) -> tuple[str | None, int]:
    first: dict[str, type] = {}
    for index, record in enumerate(records):
        for key, value in record.items():
            if value is None:
                continue
            kind = float if isinstance(value, int) and not isinstance(value, bool) else type(value)
            if first.setdefault(key, kind) is not kind:
                return key, index
    return None, 0


# ---------------------------------------------------------------------------------------------
# Rendering


def ensure_chat_template(tokenizer) -> bool:
    """Give ``tokenizer`` `FALLBACK_CHAT_TEMPLATE` if it has no chat template; True if it did."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return True


class _SpanError(ValueError):
    pass


@dataclass(frozen=True)
class _Rendered:
    text: str
    spans: tuple[tuple[int, int], ...]  # trained character ranges, sorted, disjoint
    add_special_tokens: bool

    def segments(self) -> tuple[tuple[str, bool], ...]:
        pieces: list[tuple[str, bool]] = []
        cursor = 0
        for start, end in self.spans:
            if start > cursor:
                pieces.append((self.text[cursor:start], False))
            if end > start:
                pieces.append((self.text[start:end], True))
            cursor = end
        if cursor < len(self.text):
            pieces.append((self.text[cursor:], False))
        return tuple(pieces)


def _render(record: dict, fmt: str, tokenizer, train_on_prompt: bool) -> _Rendered:
    if fmt == "text":
        text = record["text"] + (tokenizer.eos_token or "")
        return _Rendered(text, ((0, len(text)),), add_special_tokens=True)
    messages = to_messages(record, fmt)
    template = None if getattr(tokenizer, "chat_template", None) else FALLBACK_CHAT_TEMPLATE

    def render(msgs: list[dict], generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=generation_prompt, chat_template=template
        )

    text = render(messages, False)
    if train_on_prompt:
        return _Rendered(text, ((0, len(text)),), add_special_tokens=False)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start, end = _prefix_span(render, messages, k, text, cursor)
        if start is None:
            start, end = _search_span(message["content"], text, cursor, tokenizer.eos_token)
            if start is None:
                raise _SpanError(
                    f"the chat template does not show assistant turn {k + 1} as written, so "
                    "its tokens cannot be found; set dataset.train_on_prompt = true or use a "
                    "model whose chat template keeps the answer text"
                )
        end = start + len(text[start:end].rstrip())
        spans.append((start, end))
        cursor = max(cursor, end)
    return _Rendered(text, tuple(spans), add_special_tokens=False)


def _prefix_span(render, messages, k, text, cursor) -> tuple[int | None, int]:
    try:
        before = render(messages[:k], True) if k else None
        after = render(messages[: k + 1], False)
    except Exception:  # templates may refuse partial conversations
        return None, 0
    if before is None or not (text.startswith(before) and text.startswith(after)):
        return None, 0
    if not cursor <= len(before) <= len(after):
        return None, 0
    return len(before), len(after)


def _search_span(content: str, text: str, cursor: int, eos: str | None):
    stripped = content.strip()
    if not stripped:
        return None, 0
    start = text.find(stripped, cursor)
    if start < 0:
        return None, 0
    end = start + len(stripped)
    if eos and text.startswith(eos, end):
        end += len(eos)
    return start, end


def render_example(
    record: dict, fmt: str, tokenizer, *, train_on_prompt: bool = False
) -> RenderedExample:
    """One record as the model will see it, split into trained and untrained pieces.

    ``fmt`` is "alpaca", "chat", "text" or "auto" (detected from the record's fields). Raises
    DatasetError if the record does not fit the format.
    """
    raw = RawRecords(Path("<record>"), "record", lambda i: i + 1, records=[record])
    if fmt == "auto":
        fmt, _ = detect(raw)
    check_all(raw, fmt)
    try:
        rendered = _render(record, fmt, tokenizer, train_on_prompt)
    except _SpanError as exc:
        raise DatasetError("<record>", str(exc)) from exc
    return RenderedExample(rendered.text, rendered.segments())


# ---------------------------------------------------------------------------------------------
# Tokenization


def _tokenize(rendered: _Rendered, tokenizer) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of the whole text; labels are -100 outside the trained spans."""
    add_special = rendered.add_special_tokens
    if rendered.spans == ((0, len(rendered.text)),):
        ids = list(tokenizer(rendered.text, add_special_tokens=add_special)["input_ids"])
        return ids, list(ids)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(rendered.text, add_special_tokens=add_special, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        offsets = enc["offset_mapping"]
        labels = [
            tid if _overlaps(offset, rendered.spans) else -100
            for tid, offset in zip(ids, offsets, strict=True)
        ]
        return ids, labels
    # Slow tokenizers have no offsets: tokenize piece by piece (may differ at the seams).
    ids, labels = [], []
    for piece, trained in rendered.segments():
        piece_ids = list(tokenizer(piece, add_special_tokens=False)["input_ids"])
        ids += piece_ids
        labels += piece_ids if trained else [-100] * len(piece_ids)
    return ids, labels


def _overlaps(offset, spans) -> bool:
    start, end = offset
    if end <= start:
        return False
    return any(start < span_end and span_start < end for span_start, span_end in spans)


def _stats(lengths: list[int], max_length: int) -> TokenStats:
    ordered = sorted(lengths)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
    return TokenStats(
        examples=len(ordered),
        truncated=sum(1 for n in ordered if n > max_length),
        min_tokens=ordered[0],
        mean_tokens=sum(ordered) / len(ordered),
        max_tokens=ordered[-1],
        p95_tokens=p95,
    )


def _tokenize_all(raw: RawRecords, fmt: str, tokenizer, section) -> tuple[dict, TokenStats]:
    columns: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    lengths: list[int] = []
    emptied: list[int] = []
    max_length = section.max_length
    cap = char_cap(max_length)
    for index, record in enumerate(raw.iter_records()):
        record, capped = _cap_value(record, cap)
        try:
            rendered = _render(record, fmt, tokenizer, section.train_on_prompt)
        except _SpanError as exc:
            raise raw.error(index, str(exc)) from exc
        capped = capped or len(rendered.text) > cap
        ids, labels = _tokenize(_cap_rendered(rendered, cap), tokenizer)
        # An example cut before tokenizing is longer than max_length whatever it counts now.
        lengths.append(max(len(ids), max_length + 1) if capped else len(ids))
        ids, labels = ids[:max_length], labels[:max_length]
        if all(label == -100 for label in labels):
            emptied.append(index)
        columns["input_ids"].append(ids)
        columns["attention_mask"].append([1] * len(ids))
        columns["labels"].append(labels)
    if emptied:
        rest = len(emptied) - 1
        more = f" ({rest} more like it)" if rest else ""
        raise raw.error(
            emptied[0],
            f"the prompt fills all of max_length = {max_length} tokens, so none of the answer "
            f"is left to train on{more}; raise dataset.max_length (the longest example has "
            f"{max(lengths)} tokens) or shorten the prompt",
            others=rest,
        )
    return columns, _stats(lengths, max_length)


def _split(columns: dict, fraction: float, seed: int, path: str):
    from datasets import Dataset

    data = Dataset.from_dict(columns)
    if fraction <= 0:
        return data, None
    n = len(data)
    n_val = max(1, round(fraction * n))
    if n - n_val < 1:
        raise DatasetError(
            path,
            f"has {n} example{'s' if n != 1 else ''}, too few to hold back "
            f"validation_split = {fraction} for evaluation and still train; add examples or "
            "set dataset.validation_split = 0",
        )
    parts = data.train_test_split(test_size=n_val, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def prepare_datasets(section: DatasetSection, tokenizer, *, seed: int = 42) -> PreparedData:
    """Load, check, render, tokenize, mask and split the recipe's dataset.

    The validation split holds ``round(validation_split * n)`` examples (at least 1 when the
    fraction is above 0), drawn with ``seed``; None when the fraction is 0. For chat and
    alpaca data a tokenizer without a chat template gets `FALLBACK_CHAT_TEMPLATE` set on it.
    Raises DatasetError for any bad record or too little data.
    """
    raw, fmt, explanation = _load_checked(section.path, section.format)
    if fmt != "text":
        ensure_chat_template(tokenizer)
    columns, stats = _tokenize_all(raw, fmt, tokenizer, section)
    train, validation = _split(columns, section.validation_split, seed, str(raw.path))
    return PreparedData(train, validation, fmt, explanation, stats)


def preview_dataset(section: DatasetSection, tokenizer, *, count: int = 3) -> DatasetPreview:
    """The first ``count`` examples rendered, and token stats over the whole dataset.

    Checks every record exactly as `prepare_datasets` does, so a preview that succeeds means
    training will accept the data. The tokenizer is not modified.
    """
    raw, fmt, explanation = _load_checked(section.path, section.format)
    examples: list[RenderedExample] = []
    for index, record in enumerate(raw.iter_records()):
        if index >= count:
            break
        record, _ = _cap_value(record, char_cap(section.max_length))
        try:
            rendered = _render(record, fmt, tokenizer, section.train_on_prompt)
        except _SpanError as exc:
            raise raw.error(index, str(exc)) from exc
        examples.append(RenderedExample(rendered.text, rendered.segments()))
    _, stats = _tokenize_all(raw, fmt, tokenizer, section)
    return DatasetPreview(fmt, explanation, tuple(examples), stats)
