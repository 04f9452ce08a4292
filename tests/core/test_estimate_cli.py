"""``qlora-studio estimate`` as a user runs it: a subprocess, its output and exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FAKE_2080TI = (
    '[{"name": "NVIDIA GeForce RTX 2080 Ti", "total_mib": 11264, "free_mib": 10900, '
    '"compute_capability": [7, 5]}]'
)
FAKE_TINY = (
    '[{"name": "Tiny GPU", "total_mib": 600, "free_mib": 520, "compute_capability": [8, 6]}]'
)


def estimate_cli(*args: str, fake_gpus: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "QLORA_STUDIO_FAKE_GPUS"}
    env["PYTHONPATH"] = str(REPO)
    if fake_gpus is not None:
        env["QLORA_STUDIO_FAKE_GPUS"] = fake_gpus
    return subprocess.run(
        [sys.executable, "-m", "studio", "estimate", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )


def test_json_for_a_folder_on_the_cpu(tiny_models):
    out = estimate_cli("--model", str(tiny_models["llama"]), "--json", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    for key in ("total_bytes", "weights_bytes", "terms", "device", "fits"):
        assert key in data
    assert data["device"] == "CPU" and data["fits"] is True
    assert data["total_bytes"] == sum(data["terms"].values())
    assert data["terms"]["quantized_linears"] > 0
    assert "cuda_context" not in data["terms"]


def test_flags_change_the_estimate(tiny_models):
    base = json.loads(
        estimate_cli(
            "--model",
            str(tiny_models["qwen2"]),
            "--json",
            "--r",
            "16",
            "--batch-size",
            "2",
            "--max-length",
            "512",
            "--optimizer",
            "paged_adamw_8bit",
            "--gradient-checkpointing",
        ).stdout
    )
    no_dq = json.loads(
        estimate_cli(
            "--model",
            str(tiny_models["qwen2"]),
            "--json",
            "--no-double-quant",
            "--r",
            "32",
            "--batch-size",
            "4",
            "--max-length",
            "128",
            "--optimizer",
            "adamw_torch",
            "--no-gradient-checkpointing",
        ).stdout
    )
    assert no_dq["terms"]["quant_absmax"] > base["terms"]["quant_absmax"]
    assert no_dq["terms"]["lora_weights"] == 2 * base["terms"]["lora_weights"]
    assert no_dq["terms"]["optimizer"] > base["terms"]["optimizer"]


def test_table_on_a_simulated_gpu(tiny_models):
    out = estimate_cli("--model", str(tiny_models["gpt2"]), fake_gpus=FAKE_2080TI)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "GPT2LMHeadModel" in text
    assert "RTX 2080 Ti (simulated)" in text and "Free GPU memory" in text
    assert "CUDA context" in text and "Total" in text and "Verdict: fits" in text
    assert "compute float16" in text  # no bf16 on capability 7.5


def test_does_not_fit_gives_advice(tiny_models):
    out = estimate_cli(
        "--model",
        str(tiny_models["llama"]),
        "--json",
        "--batch-size",
        "64",
        "--max-length",
        "2048",
        "--no-gradient-checkpointing",
        fake_gpus=FAKE_TINY,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["fits"] is False and data["verdict"] == "does_not_fit"
    assert data["advice"]


def test_recipe_file_with_flag_override(tmp_path, tiny_models):
    recipe = tmp_path / "run.toml"
    recipe.write_text(
        f'schema_version = 1\n[model]\nsource = "{tiny_models["llama"]}"\n'
        '[quantization]\nmode = "8bit"\n[lora]\nr = 8\n'
    )
    data = json.loads(estimate_cli(str(recipe), "--json").stdout)
    assert data["terms"]["quantized_linears"] > 0 and "quant_constants" not in data["terms"]
    overridden = json.loads(estimate_cli(str(recipe), "--json", "--r", "16").stdout)
    assert overridden["terms"]["lora_weights"] == 2 * data["terms"]["lora_weights"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "/no/such/folder"], "No file or folder at /no/such/folder"),
        (["--model", "someone/not-cached"], "not in the local Hugging Face cache"),
        (["--r", "0"], "lora.r"),
        (["--device", "cuda"], "training.device"),
        (["missing-recipe.toml"], "file not found"),
    ],
)
def test_bad_input_exits_2_with_a_message(args, message):
    out = estimate_cli(*args, fake_gpus="[]")  # the same on machines with and without a GPU
    assert out.returncode == 2
    assert message in out.stderr and out.stdout == ""


def test_bf16_refused_on_an_old_gpu(tiny_models):
    out = estimate_cli(
        "--model", str(tiny_models["llama"]), "--compute-dtype", "bfloat16", fake_gpus=FAKE_2080TI
    )
    assert out.returncode == 2
    assert "quantization.compute_dtype" in out.stderr and "float16" in out.stderr


def test_bad_recipe_value_names_the_file_and_key(tmp_path):
    recipe = tmp_path / "bad.toml"
    recipe.write_text('[quantization]\nquant_type = "nf3"\n')
    out = estimate_cli(str(recipe))
    assert out.returncode == 2
    assert str(recipe) in out.stderr and "quantization.quant_type" in out.stderr


def test_unknown_flag_is_bad_input():
    assert estimate_cli("--quant-type", "int3").returncode == 2


@pytest.mark.slow
def test_builtin_model_true_figures():
    out = estimate_cli(
        "--model",
        "builtin:smollm2-135m-instruct",
        "--json",
        "--compute-dtype",
        "bfloat16",
        "--quant-type",
        "nf4",
        "--double-quant",
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["weights_bytes"] == 111_692_152
    table = estimate_cli(
        "--model",
        "builtin:smollm2-135m-instruct",
        "--no-double-quant",
        "--compute-dtype",
        "bfloat16",
    )
    assert table.returncode == 0, table.stderr
    assert "116,426,752 bytes" in table.stdout
    assert "LlamaForCausalLM, 30 layers, 134.5 M params" in table.stdout


def _words(text: str) -> str:
    return " ".join(text.split())


def test_help_comes_from_the_recipe_metadata():
    from studio.core.recipe import field_spec

    out = estimate_cli("--help")
    assert out.returncode == 0, out.stderr
    shown = _words(out.stdout)
    for dotted in (
        "lora.r",
        "dataset.max_length",
        "training.batch_size",
        "training.optimizer",
        "training.gradient_checkpointing",  # its help has a % sign
        "quantization.quant_type",
        "model.source",
    ):
        spec = field_spec(dotted)
        assert _words(spec.help) in shown, dotted
        assert f"Recipe key {dotted}" in shown
    optimizer = field_spec("training.optimizer")
    assert _words(optimizer.choice_help["paged_adamw_8bit"]) in shown
    assert "{" + ",".join(optimizer.choices) + "}" in out.stdout
    assert "{" + ",".join(field_spec("quantization.mode").choices) + "}" in out.stdout


def test_notes_on_settings_without_effect_go_to_stderr(tmp_path, tiny_models):
    recipe = tmp_path / "run.toml"
    recipe.write_text(
        f'schema_version = 1\n[model]\nsource = "{tiny_models["llama"]}"\n'
        '[quantization]\nmode = "8bit"\nquant_type = "fp4"\n'
        "[training]\nepochs = 3.0\n"
    )
    out = estimate_cli(str(recipe), "--json", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    notes = [line for line in out.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 3, out.stderr
    assert any("quantization.quant_type = 'fp4' has no effect" in n for n in notes)
    assert any("quantization.double_quant = true has no effect" in n for n in notes)
    assert any("training.epochs = 3.0 has no effect" in n for n in notes)
    json.loads(out.stdout)  # stdout stays clean JSON
    quiet = estimate_cli(str(recipe), "--json", "--quant-mode", "4bit")
    assert quiet.returncode == 0 and "note: quantization" not in quiet.stderr


def test_the_datasets_longest_example_sets_the_length_unless_no_data(tiny_models, tmp_path):
    data = tmp_path / "short.jsonl"
    rows = [{"instruction": f"Say {i}.", "output": "yes"} for i in range(6)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    common = ["--model", str(tiny_models["llama"]), "--device", "cpu", "--max-length", "512"]
    measured = estimate_cli(*common, "--dataset", str(data), "--json")
    assert measured.returncode == 0, measured.stderr
    counted = json.loads(measured.stdout)
    assert counted["sequence_from_data"] and 0 < counted["sequence_tokens"] < 512
    plain = json.loads(estimate_cli(*common, "--dataset", str(data), "--no-data", "--json").stdout)
    assert (plain["sequence_tokens"], plain["sequence_from_data"]) == (512, False)
    assert counted["total_bytes"] < plain["total_bytes"]
    table = estimate_cli(*common, "--dataset", str(data)).stdout
    assert f"x {counted['sequence_tokens']} tokens (the dataset's longest example)" in table
    # A dataset that cannot be read: max_length, with a note (train reports the error itself).
    broken = estimate_cli(*common, "--dataset", str(tmp_path / "missing.jsonl"), "--json")
    assert broken.returncode == 0 and json.loads(broken.stdout)["sequence_tokens"] == 512
    assert "counted at dataset.max_length" in broken.stderr
