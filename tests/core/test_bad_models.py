"""Model folders the libraries would reject are refused when the source is resolved: bad input
(exit 2) naming the file and what to do, never a traceback from deep inside transformers."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from studio.core.models import (
    ModelSourceError,
    check_model_folder,
    check_safetensors_file,
    read_shape,
    resolve_model,
)

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("QLORA_STUDIO_FAKE_GPUS", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "studio", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=timeout,
    )


def _copy(tiny_models, tmp_path, kind: str = "llama") -> Path:
    folder = tmp_path / f"model-{kind}"
    shutil.copytree(tiny_models[kind], folder)
    return folder


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_intact_tiny_models_pass(tiny_models):
    for folder in tiny_models.values():
        check_model_folder(folder, trust_remote_code=False)


def test_unknown_model_type_names_the_config(tiny_models, tmp_path):
    folder = _copy(tiny_models, tmp_path)
    _edit_config(folder, model_type="llamazoid")
    with pytest.raises(ModelSourceError, match=r"config\.json says model_type 'llamazoid'"):
        resolve_model(str(folder))
    with pytest.raises(ModelSourceError, match="does not know"):
        read_shape(folder)


def test_remote_code_needs_trust_remote_code(tiny_models, tmp_path):
    folder = _copy(tiny_models, tmp_path)
    _edit_config(
        folder,
        model_type="custom_llama",
        auto_map={"AutoConfig": "configuration_custom.CustomConfig"},
    )
    with pytest.raises(ModelSourceError, match="trust_remote_code = true"):
        resolve_model(str(folder), trust_remote_code=False)
    # Trusted, but the code the auto_map names is not there.
    with pytest.raises(ModelSourceError, match=r"configuration_custom\.py is\s+not in the folder"):
        resolve_model(str(folder), trust_remote_code=True)


def test_folder_without_tokenizer_files(tiny_models, tmp_path):
    folder = _copy(tiny_models, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(ModelSourceError, match="has no tokenizer files"):
        resolve_model(str(folder))


def test_truncated_tokenizer_json(tiny_models, tmp_path):
    folder = _copy(tiny_models, tmp_path)
    path = folder / "tokenizer.json"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ModelSourceError, match=r"tokenizer\.json is not valid JSON"):
        resolve_model(str(folder))


def test_truncated_safetensors_names_the_file(tiny_models, tmp_path):
    folder = _copy(tiny_models, tmp_path)
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as handle:
        handle.truncate(size - 1000)
    with pytest.raises(ModelSourceError, match=r"model\.safetensors is not a complete") as info:
        resolve_model(str(folder))
    assert "cut short" in str(info.value)


def test_corrupt_safetensors_header(tiny_models, tmp_path):
    folder = _copy(tiny_models, tmp_path)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[0:8] = struct.pack("<Q", 1 << 40)  # a header length no file has
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelSourceError, match="header claims"):
        check_safetensors_file(weights)
    header_len = 64
    data[0:8] = struct.pack("<Q", header_len)
    data[8 : 8 + header_len] = b"{" + b"x" * (header_len - 1)
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelSourceError, match="header is not valid JSON"):
        check_safetensors_file(weights)


def test_estimate_refuses_broken_folders_with_exit_2(tiny_models, tmp_path):
    truncated = _copy(tiny_models, tmp_path, "qwen2")
    weights = truncated / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)
    done = cli("estimate", "--model", str(truncated))
    assert done.returncode == 2, done.stderr
    assert "model.safetensors" in done.stderr and "Traceback" not in done.stderr

    unknown = _copy(tiny_models, tmp_path, "gpt2")
    _edit_config(unknown, model_type="gpt9")
    done = cli("estimate", "--model", str(unknown))
    assert done.returncode == 2, done.stderr
    assert "gpt9" in done.stderr and "Traceback" not in done.stderr


def test_train_refuses_a_broken_folder_before_spawning(tiny_models, tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from engine_helpers import tiny_recipe

    from studio.core.recipe import save_recipe

    folder = _copy(tiny_models, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink(missing_ok=True)
    recipe = save_recipe(tiny_recipe(tmp_path, folder), tmp_path / "recipe.toml")
    done = cli("train", str(recipe))
    assert done.returncode == 2, done.stderr
    assert str(folder) in done.stderr and "tokenizer" in done.stderr
    assert "Traceback" not in done.stderr
    assert "[checking]" not in done.stderr  # refused before any engine process started


def test_an_adapter_given_as_the_base_model_says_what_it_is(tmp_path):
    adapter = tmp_path / "my-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ModelSourceError, match="is a LoRA adapter") as info:
        resolve_model(str(adapter))
    assert f"qlora-studio chat {adapter}" in str(info.value)


def test_a_conversion_killed_mid_way_leaves_nothing_behind(tmp_path, monkeypatch):
    from tiny_gguf import make_tiny_gguf

    from studio.core.models import gguf_cache_key

    cache = tmp_path / "cache"
    monkeypatch.setenv("QLORA_STUDIO_CACHE", str(cache))
    gguf = tmp_path / "tiny.gguf"
    make_tiny_gguf(gguf)
    target = cache / "models" / gguf_cache_key(gguf)
    # A converter killed (-9) while it wrote its temporary folder.
    code = (
        "import os, sys; from pathlib import Path; "
        "from studio.core.atomic import temporary_sibling_dir; "
        "d = temporary_sibling_dir(Path(sys.argv[1])); (d / 'model.safetensors')"
        ".write_bytes(b'half'); print(d, flush=True); os.kill(os.getpid(), 9)"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    killed = subprocess.run(
        [sys.executable, "-c", code, str(target)], capture_output=True, text=True, env=env
    )
    assert killed.returncode == -9
    leftover = Path(killed.stdout.strip())
    assert leftover.is_dir()

    resolved = resolve_model(str(gguf))
    assert not leftover.exists()
    assert list((cache / "models").iterdir()) == [resolved.path]
