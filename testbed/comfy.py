"""Where the test bed's ComfyUI lives, and how to import it in-process on a CPU-only machine."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTBED = ROOT / ".testbed"
BASE = TESTBED / "base"  # isolated --base-directory: models/, custom_nodes/, input/, output/, user/
MODELS = BASE / "models"


def comfyui_path() -> Path:
    """The ComfyUI in use: $COMFYUI_PATH if set, else the one scripts/setup.sh prepared."""
    if os.environ.get("COMFYUI_PATH"):
        return Path(os.environ["COMFYUI_PATH"]).resolve()
    recorded = TESTBED / "comfyui_path"
    if not recorded.exists():
        raise RuntimeError("no ComfyUI prepared: run scripts/setup.sh first")
    return Path(recorded.read_text().strip())


def import_comfy() -> Path:
    """Put ComfyUI on sys.path with CPU-only arguments; must run before anything imports comfy.model_management."""
    path = comfyui_path()
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    args.cpu = True  # the CUDA build of torch raises "Found no NVIDIA driver" otherwise
    args.base_directory = str(BASE)
    return path


def load_core_nodes() -> None:
    """ComfyUI's built-in nodes (comfy_extras/), loaded as ComfyUI loads them at start, so that tests import their
    classes from modules in the state ComfyUI leaves them in. Imported in another order some do not import at all:
    0.33's nodes_latent and nodes_post_processing import each other, which works only in the loader's order."""
    import nodes

    asyncio.run(nodes.init_builtin_extra_nodes())
