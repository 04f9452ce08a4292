#!/usr/bin/env bash
# Installs everything (see setup.sh) and opens QLoRA Studio. Arguments go to `qlora-studio`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${QLORA_STUDIO_VENV:-.venv}/bin/qlora-studio" "$@"
