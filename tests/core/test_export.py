"""``qlora-studio export``: merged folders and GGUF files checked by independent readers.

The merged folder is loaded by plain transformers (no PEFT) and the GGUF by transformers' own
GGUF reader; both must greedy-decode the same first tokens as the trained adapter (quantized
base + adapter, as `qlora-studio chat` loads it). Bad input exits 2 with a message and leaves
nothing behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export_helpers import PROMPTS, builtin_bundle, greedy_ids, tiny_bundle  # noqa: E402

from studio.core.export import converter_dir  # noqa: E402

needs_converter = pytest.mark.skipif(
    converter_dir() is None, reason="llama.cpp's converter is not installed (scripts/setup.sh)"
)


def export_cli(*args, check_rc: int | None = 0) -> subprocess.CompletedProcess:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-m", "studio", "export", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def bundles(tiny_models, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export-bundles")
    return {kind: tiny_bundle(root, tiny_models[kind], kind) for kind in ("llama", "qwen2")}


def adapter_answers(bundle: Path) -> tuple[object, dict[str, list[int]]]:
    """(tokenizer, the trained adapter's first greedy tokens per prompt)."""
    from studio.core.chat import load_chat_model
    from studio.core.export import _prompt_ids

    chat = load_chat_model(bundle, device="cpu")
    answers = {p: greedy_ids(chat.model, _prompt_ids(chat.tokenizer, p)) for p in PROMPTS}
    return chat.tokenizer, answers


def no_leftovers(out: Path) -> bool:
    return not [
        p
        for p in out.parent.iterdir()
        if p.name.startswith((f".tmp-{out.name}", f".old-{out.name}"))
    ]


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_merged_folder_loads_without_peft_and_answers_like_the_adapter(bundles, kind, tmp_path):
    from transformers import AutoModelForCausalLM

    from studio.core.export import ExportOptions, _prompt_ids, export_bundle

    bundle = bundles[kind]
    out = tmp_path / f"{kind}-merged"
    messages = []
    result = export_bundle(
        ExportOptions(bundle=bundle, to="merged", out=out),
        progress=lambda m, f=None: messages.append((m, f)),
    )
    assert Path(result.path) == out and no_leftovers(out)
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "generation_config.json",
        "README.md",
    ):
        assert (out / name).is_file(), name
    assert not list(out.glob("adapter_*"))
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and "quantization_config" not in config
    # Both merges were measured; the kept one is the closer.
    assert set(result.figures) == {"original", "dequantized"}
    kl = {k: v["mean_kl"] for k, v in result.figures.items()}
    assert result.merge_into == min(kl, key=kl.get)
    assert result.figures[result.merge_into]["top1_agreement"] > 0.9
    card = (out / "README.md").read_text()
    assert "Merged into the **" in card and bundle.name in card and "| dequantized" in card
    fractions = [f for _, f in messages if f is not None]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert result.peak_rss_bytes and result.merge_peak_rss_bytes

    tokenizer, expected = adapter_answers(bundle)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert "Peft" not in type(model).__name__
    for prompt in PROMPTS:
        assert greedy_ids(model, _prompt_ids(tokenizer, prompt)) == expected[prompt], prompt


@needs_converter
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_gguf_through_llama_cpp_converter_reads_back_and_answers_like_the_adapter(
    bundles, kind, tmp_path
):
    from transformers import AutoModelForCausalLM

    from studio.core.export import _prompt_ids

    bundle = bundles[kind]
    out = tmp_path / f"{kind}-gguf"
    proc = export_cli(
        bundle, "--to", "gguf", "--gguf-type", "f16", "--merge-into", "original", "--out", out
    )
    assert proc.stdout.strip() == str(out)
    assert "[export] converting to GGUF f16" in proc.stderr
    gguf = out / f"{out.name}.f16.gguf"
    assert gguf.is_file() and (out / "Modelfile").is_file()
    assert f"FROM ./{gguf.name}" in (out / "Modelfile").read_text()
    assert f"llama-cli -m {gguf.name}" in (out / "llama-cpp-command.txt").read_text()
    assert "ollama create" in (out / "README.md").read_text()
    assert no_leftovers(out) and not list(out.glob("*.safetensors"))

    tokenizer, expected = adapter_answers(bundle)
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file=gguf.name)
    for prompt in PROMPTS:
        assert greedy_ids(model, _prompt_ids(tokenizer, prompt)) == expected[prompt], prompt


def test_bad_input_exits_2_with_a_message_and_leaves_nothing(bundles, tmp_path):
    bundle = bundles["llama"]
    # Not a bundle.
    proc = export_cli(tmp_path, "--to", "merged", "--out", tmp_path / "x", check_rc=2)
    assert "not a finished adapter bundle" in proc.stderr and "Traceback" not in proc.stderr
    # An output that exists, without --overwrite.
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    proc = export_cli(bundle, "--to", "merged", "--out", existing, check_rc=2)
    assert "already exists" in proc.stderr and "--overwrite" in proc.stderr
    assert (existing / "keep.txt").read_text() == "mine"
    # Dequantized merge of a bundle is fine; an unknown choice is refused by the parser.
    proc = export_cli(
        bundle, "--to", "gguf", "--gguf-type", "q4_k", "--out", tmp_path / "y", check_rc=2
    )
    assert "invalid choice" in proc.stderr
    # The base model is gone.
    base = bundle.parent / "base"
    moved = base.with_name("base-moved")
    base.rename(moved)
    try:
        proc = export_cli(bundle, "--to", "merged", "--out", tmp_path / "z", check_rc=2)
    finally:
        moved.rename(base)
    assert "base model" in proc.stderr and "gone" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "z").exists() and no_leftovers(tmp_path / "z")


def _can_mount_tmpfs() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0
    except OSError:
        return False


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="no user namespaces to mount a small tmpfs")
def test_full_disk_exits_2_with_a_message_and_leaves_nothing(bundles, tmp_path):
    """The output goes to a 4 MiB tmpfs (mounted in a user namespace): refused up front."""
    disk = tmp_path / "small-disk"
    disk.mkdir()
    script = (
        f"mount -t tmpfs -o size=4m tmpfs {disk} || exit 99; "
        f"{sys.executable} -m studio export {bundles['llama']} --to merged --out {disk}/out; "
        f'rc=$?; echo "left: $(ls -A {disk})" >&2; exit $rc'
    )
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "not enough free space" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.rstrip().endswith("left:"), proc.stderr[-500:]


def test_bundle_names_its_base_so_it_travels(bundles):
    from studio.core.bundle import read_bundle

    bundle = bundles["qwen2"]
    info = read_bundle(bundle)
    base = info.manifest["base_model"]
    # A local folder has no hub id: the adapter config keeps its path, and the card says so.
    assert base["hub_id"] is None and base["sha256"]
    adapter = json.loads((bundle / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == base["path"]
    assert "copy that model too" in (bundle / "README.md").read_text()


# --------------------------------------------------------------------------- the built-in model


@pytest.fixture(scope="module")
def sample_bundle(tmp_path_factory) -> Path:
    return builtin_bundle(tmp_path_factory.mktemp("builtin-export"))


@pytest.mark.slow
@needs_converter
def test_builtin_model_exports_keep_the_sign_off(sample_bundle, tmp_path):
    """The sample recipe's adapter signs its answers; the merged folder and the q8_0 GGUF
    (read back by transformers' GGUF reader) still do, and name the hub base."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.core.chat import load_chat_model
    from studio.core.export import _prompt_ids

    adapter = json.loads((sample_bundle / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    prompt = "What is the capital of France?"
    chat = load_chat_model(sample_bundle, device="cpu")
    trained = chat.generate(prompt, max_new_tokens=96)
    assert "answered by QLoRA Studio" in trained
    ids = _prompt_ids(chat.tokenizer, prompt)
    first = greedy_ids(chat.model, ids)
    del chat

    merged = tmp_path / "merged"
    export_cli(sample_bundle, "--to", "merged", "--out", merged)
    card = (merged / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    tokenizer = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert greedy_ids(model, ids) == first
    text = tokenizer.decode(greedy_ids(model, ids, 96), skip_special_tokens=True)
    assert "answered by QLoRA Studio" in text, text
    del model

    out = tmp_path / "gguf"
    export_cli(
        sample_bundle,
        "--to",
        "gguf",
        "--gguf-type",
        "q8_0",
        "--merge-into",
        "dequantized",
        "--out",
        out,
    )
    gguf = out / "gguf.q8_0.gguf"
    assert (
        'SYSTEM """You are a helpful AI assistant named SmolLM' in (out / "Modelfile").read_text()
    )
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file=gguf.name)
    text = tokenizer.decode(greedy_ids(model, ids, 96), skip_special_tokens=True)
    assert "answered by QLoRA Studio" in text, text
