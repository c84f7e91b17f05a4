"""The pack's example workflows, defined once as API graphs.

`python -m testbed.examples` writes each one to example_workflows/<name>.json in UI format (what ComfyUI lists under
Templates), laid out by `api_to_ui` with the node definitions of a freshly started ComfyUI.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from testbed.comfy import ROOT
from testbed.server import ComfyServer
from testbed.workflow import api_to_ui

EXAMPLES_DIR = ROOT / "example_workflows"
CHECKPOINT = "steer_tiny_sd15.safetensors"  # the test bed's tiny SD1.5; users pick their own in the UI


def steer_cfg() -> dict[str, Any]:
    """Text to image with SteerGuider at cfg 7 driving SamplerCustomAdvanced (euler, 8 steps, 64×64)."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": {"class_type": "CLIPTextEncode", "_meta": {"title": "Positive prompt"},
              "inputs": {"text": "a lighthouse on a rocky coast at sunset, dramatic clouds, oil painting",
                         "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "_meta": {"title": "Negative prompt"},
              "inputs": {"text": "blurry, low quality, watermark, text", "clip": ["1", 1]}},
        "4": {"class_type": "SteerGuider",
              "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "cfg": 7.0}},
        "5": {"class_type": "RandomNoise", "inputs": {"noise_seed": 42}},
        "6": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "7": {"class_type": "BasicScheduler",
              "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 8, "denoise": 1.0}},
        "8": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "9": {"class_type": "SamplerCustomAdvanced",
              "inputs": {"noise": ["5", 0], "guider": ["4", 0], "sampler": ["6", 0], "sigmas": ["7", 0],
                         "latent_image": ["8", 0]}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "steer_cfg"}},
    }


EXAMPLES = {"steer_cfg": steer_cfg}


def main() -> None:
    """Regenerate every file in example_workflows/ from EXAMPLES."""
    with tempfile.TemporaryDirectory() as scratch, ComfyServer(Path(scratch)) as server:
        object_info = server.object_info()
    EXAMPLES_DIR.mkdir(exist_ok=True)
    for name, build in EXAMPLES.items():
        path = EXAMPLES_DIR / f"{name}.json"
        path.write_text(json.dumps(api_to_ui(build(), object_info), indent=2, ensure_ascii=False) + "\n")
        print(path)


if __name__ == "__main__":
    main()
