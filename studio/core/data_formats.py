"""Reading dataset files into records, telling their format apart and checking every record.

The public entry points live in `studio.core.data`; this module holds the file readers and the
per-format checks behind them.

Supported sources: ``.jsonl``/``.ndjson`` (one JSON object per line), ``.json`` (an array of
objects, or JSON lines), ``.csv``/``.tsv`` (a header row; every cell is read as text), ``.parquet``
and folders written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (the ``train``
split, or the only split).

Where a problem is reported:
- JSON lines: the 1-based line in the file (blank lines are allowed and skipped);
- a JSON array: the 1-based record number in the array;
- CSV, Parquet and saved folders: the 1-based row number (the CSV header is not counted).

Formats (the ``[dataset] format`` key):
- ``alpaca``: ``instruction`` (text), optional ``input`` (text or null), ``output`` (text).
  ``response`` is accepted instead of ``output`` when a dataset has no ``output`` field (a
  common variant); a dataset with both uses ``output``.
- ``chat``: ``messages``, a list of ``{"role", "content"}`` with role ``system``/``user``/
  ``assistant``; or ShareGPT's ``conversations``, a list of ``{"from", "value"}`` with from
  ``system``/``human``/``gpt`` (``user``/``assistant`` are accepted too). At least one
  assistant turn is needed: it is what the model learns.
- ``text``: ``text``, trained on entirely.
Nothing is dropped: every record that does not fit is an error naming where it is.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

FORMATS = ("alpaca", "chat", "text")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}
_MAX_LISTED = 5


class DatasetError(ValueError):
    """A dataset cannot be used as it is; the message says where and what to do.

    ``path`` is the file or folder, ``line`` the 1-based line (JSON lines), record (JSON
    array) or row (CSV, Parquet, saved folder) where the first problem is, or None when the
    problem is the whole file; ``field`` the field concerned, if any; ``unit`` says what
    ``line`` counts ("line", "record" or "row"); ``others`` how many more records have
    problems.
    """

    def __init__(
        self,
        path: str | Path,
        message: str,
        *,
        line: int | None = None,
        field: str | None = None,
        unit: str = "line",
        others: int = 0,
    ):
        self.path = str(path)
        self.line = line
        self.field = field
        self.unit = unit
        self.others = others
        where = f"{self.path}, {unit} {line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


Locate = Callable[[int], int]  # 0-based record index -> the number people see


class RawRecords:
    """Records read from a source, before any format check.

    ``records`` are plain dicts (JSON files) or None when ``dataset`` already holds them
    (CSV, Parquet, saved folders); ``locate(i)`` gives record i's line/record/row number.
    """

    def __init__(self, path: Path, unit: str, locate: Locate, records=None, dataset=None):
        self.path = path
        self.unit = unit
        self.locate = locate
        self.records: list[dict] | None = records
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.records) if self.records is not None else len(self.dataset)

    def columns(self) -> list[str]:
        if self.records is None:
            return list(self.dataset.column_names)
        seen: dict[str, None] = {}
        for record in self.records:
            seen.update(dict.fromkeys(record))
        return list(seen)

    def iter_records(self) -> Iterable[dict]:
        return iter(self.records) if self.records is not None else iter(self.dataset)

    def error(self, index: int | None, message: str, *, field: str | None = None, others=0):
        line = None if index is None else self.locate(index)
        return DatasetError(
            self.path, message, line=line, field=field, unit=self.unit, others=others
        )


# ---------------------------------------------------------------------------------------------
# Reading files


def read_source(path: Path) -> RawRecords:
    """Read a dataset file or saved folder; raise DatasetError for anything unreadable."""
    if path.is_dir():
        return _read_saved(path)
    if not path.is_file():
        raise DatasetError(path, "no such file or folder; check the path")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        text = _read_text(path)
        if not text.strip():
            raise DatasetError(path, "the file is empty; it needs at least one record")
        if suffix == ".json" and text.lstrip().startswith("["):
            return _read_json_array(path, text)
        return _read_json_lines(path, text)
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, "\t" if suffix == ".tsv" else ",")
    if suffix in (".parquet", ".pq"):
        return _read_parquet(path)
    raise DatasetError(
        path,
        f"unsupported file type {suffix or '(no extension)'!r}; use .jsonl, .json, .csv, "
        ".tsv or .parquet, or a folder saved with Dataset.save_to_disk",
    )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DatasetError(
            path, "is not UTF-8 text; save it as UTF-8", line=line, unit="line"
        ) from exc
    except OSError as exc:
        raise DatasetError(path, f"cannot be read ({exc.strerror or exc})") from exc


def _read_json_lines(path: Path, text: str) -> RawRecords:
    records: list[dict] = []
    lines: list[int] = []
    bad: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append((number, f"not valid JSON ({_json_reason(exc)})"))
            continue
        if not isinstance(value, dict):
            bad.append((number, f"a JSON {_kind(value)}, not an object with named fields"))
            continue
        records.append(value)
        lines.append(number)
    if bad:
        if len(bad) > 1 and text.lstrip().startswith("{"):
            _refuse_whole_file_object(path, text)
        number, why = bad[0]
        raise DatasetError(
            path,
            f"{why}: fix or remove the line{_more(len(bad) - 1, [n for n, _ in bad[1:]], 'line')}",
            line=number,
            unit="line",
            others=len(bad) - 1,
        )
    if not records:
        raise DatasetError(path, "the file holds no records; it needs at least one")
    return RawRecords(path, "line", lines.__getitem__, records=records)


def _refuse_whole_file_object(path: Path, text: str) -> None:
    """Raise a clear error when the whole file is one pretty-printed JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return
    if not isinstance(value, dict):
        return
    lists = [k for k, v in value.items() if isinstance(v, list)]
    hint = f" (the records seem to be under {lists[0]!r})" if lists else ""
    raise DatasetError(
        path,
        f"holds a single JSON object spread over several lines{hint}; write one record per "
        "line (JSON lines) or a JSON array of records",
    )


def _read_json_array(path: Path, text: str) -> RawRecords:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            path,
            f"not valid JSON ({_json_reason(exc)}); fix the file",
            line=exc.lineno,
            unit="line",
        ) from exc
    if not value:
        raise DatasetError(path, "the JSON array is empty; it needs at least one record")
    bad = [i for i, item in enumerate(value) if not isinstance(item, dict)]
    if bad:
        first = value[bad[0]]
        raise DatasetError(
            path,
            f"is a JSON {_kind(first)}, not an object with named fields"
            f"{_more(len(bad) - 1, [i + 1 for i in bad[1:]], 'record')}",
            line=bad[0] + 1,
            unit="record",
            others=len(bad) - 1,
        )
    return RawRecords(path, "record", lambda i: i + 1, records=value)


def _read_csv(path: Path, sep: str) -> RawRecords:
    text = _read_text(path)
    if not text.strip():
        raise DatasetError(path, "the file is empty; it needs a header row and at least one row")
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        raise DatasetError(path, "has a header row but no data rows; it needs at least one row")
    header = next(csv.reader([lines[0]], delimiter=sep))
    if len(set(header)) != len(header) or not all(h.strip() for h in header):
        raise DatasetError(
            path,
            f"the header row {header!r} has empty or repeated column names; name every column once",
            line=1,
            unit="line",
        )
    from datasets import Dataset, Features, Value

    features = Features({name: Value("string") for name in header})
    try:
        ds = Dataset.from_csv(
            str(path), sep=sep, features=features, keep_default_na=False, keep_in_memory=True
        )
    except Exception as exc:  # pandas' ParserError and friends name the line; pass them on
        raise DatasetError(
            path, f"cannot be read as CSV ({_first_line(exc)}); fix the file"
        ) from exc
    if len(ds) == 0:
        raise DatasetError(path, "has a header row but no data rows; it needs at least one row")
    return RawRecords(path, "row", lambda i: i + 1, dataset=ds)


def _read_parquet(path: Path) -> RawRecords:
    from datasets import Dataset

    try:
        ds = Dataset.from_parquet(str(path), keep_in_memory=True)
    except Exception as exc:
        raise DatasetError(
            path, f"cannot be read as Parquet ({_first_line(exc)}); check the file"
        ) from exc
    if len(ds) == 0:
        raise DatasetError(path, "holds no rows; it needs at least one")
    return RawRecords(path, "row", lambda i: i + 1, dataset=ds)


def _read_saved(path: Path) -> RawRecords:
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    if not any((path / m).exists() for m in markers):
        raise DatasetError(
            path,
            "is a folder but not a saved dataset (no dataset_dict.json or state.json); give a "
            "folder written by Dataset.save_to_disk, or a .jsonl/.json/.csv/.parquet file",
        )
    from datasets import DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(path))
    except Exception as exc:
        raise DatasetError(path, f"cannot be loaded ({_first_line(exc)})") from exc
    if isinstance(loaded, DatasetDict):
        if "train" in loaded:
            loaded = loaded["train"]
        elif len(loaded) == 1:
            loaded = next(iter(loaded.values()))
        else:
            raise DatasetError(
                path,
                f"holds the splits {sorted(loaded)} and none is called 'train'; save the split "
                "to train on by itself or name it 'train'",
            )
    if len(loaded) == 0:
        raise DatasetError(path, "holds no rows; it needs at least one")
    return RawRecords(path, "row", lambda i: i + 1, dataset=loaded)


# ---------------------------------------------------------------------------------------------
# Format detection


def detect(raw: RawRecords) -> tuple[str, str]:
    """(format, explanation) from the field names; DatasetError when none fits."""
    cols = raw.columns()
    n = len(raw)
    noun = "record" if n == 1 else "records"
    if "messages" in cols:
        fmt, why = "chat", "'messages' with role/content"
    elif "conversations" in cols:
        fmt, why = "chat", "ShareGPT 'conversations' with from/value"
    elif "instruction" in cols:
        fields = ["instruction"] + (["input"] if "input" in cols else [])
        fields.append(alpaca_output_field(cols))
        fmt, why = "alpaca", "/".join(fields)
    elif "text" in cols:
        fmt, why = "text", "'text' field"
    else:
        raise DatasetError(
            raw.path,
            f"cannot tell the format from the fields {cols}: chat data needs 'messages' (or "
            "ShareGPT 'conversations'), alpaca data 'instruction' and 'output', plain text "
            "'text'; rename the fields or set dataset.format",
        )
    return fmt, f"detected {fmt} ({why}), {n} {noun}"


def alpaca_output_field(columns: list[str]) -> str:
    """'output', or 'response' for datasets that use that name and have no 'output'."""
    return "response" if "response" in columns and "output" not in columns else "output"


# ---------------------------------------------------------------------------------------------
# Record checks: each returns (field, problem) or None, and normalizes the record


def to_messages(record: dict, fmt: str) -> list[dict[str, str]]:
    """The record as chat messages (alpaca and chat formats); assumes it passed `check`."""
    if fmt == "alpaca":
        output = record.get("output")
        if output is None:
            output = record.get("response")
        prompt = record["instruction"]
        if record.get("input"):
            prompt = f"{prompt}\n\n{record['input']}"
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    if record.get("messages") is not None:
        return [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    return [
        {"role": SHAREGPT_ROLES[m["from"]], "content": m["value"]} for m in record["conversations"]
    ]


def check_all(raw: RawRecords, fmt: str) -> None:
    """Raise DatasetError for the first record that does not fit ``fmt`` (counting the rest)."""
    cols = raw.columns()
    if fmt == "alpaca":
        checker = _alpaca_checker(alpaca_output_field(cols))
    else:
        checker = {"chat": _check_chat, "text": _check_text}[fmt]
    problems: list[tuple[int, str, str]] = []
    for index, record in enumerate(raw.iter_records()):
        found = checker(record)
        if found:
            problems.append((index, *found))
    if problems:
        index, field, message = problems[0]
        rest = [raw.locate(i) for i, _, _ in problems[1:]]
        raise raw.error(
            index,
            f"{message}{_more(len(rest), rest, raw.unit)}",
            field=field,
            others=len(rest),
        )


def _alpaca_checker(out: str):
    need = f"alpaca records need instruction and {out}"

    def check(record: dict):
        for key in ("instruction", out):
            value = record.get(key)
            if key not in record or value is None:
                return key, f"field {key!r} is missing ({need})"
            if not isinstance(value, str):
                return key, f"field {key!r} is a {_kind(value)}; it must be text ({need})"
            if not value.strip():
                return key, f"field {key!r} is empty ({need})"
        value = record.get("input")
        if value is not None and not isinstance(value, str):
            return "input", f"field 'input' is a {_kind(value)}; it must be text, empty or absent"
        return None

    return check


def _check_text(record: dict):
    value = record.get("text")
    if value is None:
        return "text", "field 'text' is missing (text records need a 'text' field)"
    if not isinstance(value, str):
        return "text", f"field 'text' is a {_kind(value)}; it must be text"
    if not value.strip():
        return "text", "field 'text' is empty"
    return None


def _check_chat(record: dict):
    if record.get("messages") is not None:
        return _check_turns(record["messages"], "messages", "role", "content", ROLES)
    if record.get("conversations") is not None:
        roles = tuple(SHAREGPT_ROLES)
        return _check_turns(record["conversations"], "conversations", "from", "value", roles)
    return (
        "messages",
        "field 'messages' is missing (chat records need 'messages', a list of "
        "{role, content}, or ShareGPT 'conversations', a list of {from, value})",
    )


def _check_turns(turns: Any, field: str, role_key: str, text_key: str, roles: tuple[str, ...]):
    if not isinstance(turns, list):
        return field, f"field {field!r} is a {_kind(turns)}; it must be a list of turns"
    if not turns:
        return field, f"field {field!r} is an empty list; it needs at least one turn"
    assistant = False
    for number, turn in enumerate(turns, start=1):
        where = f"{field}[{number}]"
        if not isinstance(turn, dict):
            return field, f"{where} is a {_kind(turn)}; each turn must be an object"
        role = turn.get(role_key)
        if role is None:
            return f"{field}.{role_key}", f"{where} has no {role_key!r}"
        if role not in roles:
            return (
                f"{field}.{role_key}",
                f"{where} has {role_key} {role!r}; use one of {', '.join(roles)}",
            )
        text = turn.get(text_key)
        if text is None:
            return f"{field}.{text_key}", f"{where} has no {text_key!r}"
        if not isinstance(text, str):
            return f"{field}.{text_key}", f"{where}.{text_key} is a {_kind(text)}; it must be text"
        assistant = assistant or role in ("assistant", "gpt")
    if not assistant:
        return field, (
            f"field {field!r} has no assistant turn, so there is nothing to learn; add the "
            "answer the model should give"
        )
    return None


# ---------------------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _more(count: int, where: list[int], unit: str) -> str:
    if not count:
        return ""
    shown = ", ".join(str(n) for n in where[:_MAX_LISTED])
    tail = ", ..." if count > _MAX_LISTED else ""
    units = unit + ("s" if count > 1 else "")
    return f" ({count} more with problems: {units} {shown}{tail})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _json_reason(exc) -> str:
    """``Unterminated string starting at column 12`` (json's own message ends in "at" for some
    errors, which would read "at at column")."""
    return f"{exc.msg.removesuffix(' at')} at column {exc.colno}"
