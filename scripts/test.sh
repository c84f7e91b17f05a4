#!/usr/bin/env bash
# The whole test suite against a real ComfyUI (set COMFYUI_PATH to use your own); sets the test bed up if needed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
