#!/usr/bin/env bash
# Installs everything with the test tools (see setup.sh), then runs every check CI runs:
# ruff, the import-linter contracts and the whole pytest suite. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
venv=${QLORA_STUDIO_VENV:-.venv}
export QT_QPA_PLATFORM=${QT_QPA_PLATFORM:-offscreen}
echo "== ruff"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
echo "== import-linter"
"$venv/bin/lint-imports"
echo "== pytest"
exec "$venv/bin/python" -m pytest "$@"
