#!/usr/bin/env bash
# The whole test suite against a real ComfyUI (set COMFYUI_PATH to use your own); sets the test bed up if needed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
.venv/bin/ruff check .
# What the Comfy Registry checks before publishing (pyproject.toml, and exec/eval/one-line statements as warnings,
# which fail here). Offline: it reads pyproject.toml and runs ruff.
validate="$(.venv/bin/comfy --skip-prompt --no-enable-telemetry node validate 2>&1)" || { echo "$validate"; exit 1; }
echo "$validate"
if grep -q "Security warnings" <<<"$validate"; then exit 1; fi
# One pytest worker per core (at most 4; STEER_TEST_WORKERS overrides, 0 runs in this process), each taking whole
# test files so a file's server, browser and loaded models are set up once. Arguments after the command come last
# and win, e.g. `bash scripts/test.sh -n 0 tests/engine`.
workers="${STEER_TEST_WORKERS:-$(( $(nproc) < 4 ? $(nproc) : 4 ))}"
# One OpenMP thread per process, waiting passively: the test bed's tiny models gain nothing from intra-op threads,
# and the workers, the ComfyUI servers they start and the browser share the cores; OpenMP threads spinning in one
# process starve the others (the whole suite took over twice as long with torch's default of one per core).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec .venv/bin/python -m pytest -n "$workers" --dist loadfile "$@"
