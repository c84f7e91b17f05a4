#!/usr/bin/env bash
# Set the test bed up (idempotent), start the real ComfyUI with Steer loaded, run a workflow end to end and print
# the PNGs it wrote (into ./output/ of the repo unless --output DIR is given).
#   scripts/run.sh                                  the first example workflow, on the tiny models
#   scripts/run.sh my_workflow.json --output out    a UI-format workflow (or an API prompt) of your own
#   COMFYUI_PATH=/path/to/ComfyUI scripts/run.sh    your own ComfyUI instead of the pinned 0.3.75
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh" >&2
# No cd: paths given on the command line stay relative to the caller.
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$root/.venv/bin/python" -m testbed.run_example "$@"
