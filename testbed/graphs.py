"""Small API-format graphs on the test bed's tiny SD1.5 checkpoint (the tiny SD3 one for a patch that needs a DiT),
for server tests that build many variants.

    text_to_image("a", patches=[("SteerCFGSkip", {...})])   # loader → patches → KSampler → decode → SaveImage "a"

Patch inputs not given take the node's defaults from /object_info-independent DEFAULTS below, so a graph states only
what it varies.
"""

from __future__ import annotations

from typing import Any

Graph = dict[str, dict[str, Any]]
Patch = tuple[str, dict[str, Any]]

CHECKPOINT = "steer_tiny_sd15.safetensors"
DIT_CHECKPOINT = "steer_tiny_sd3.safetensors"  # one joint block, double.0; 16-channel latents
DIT_PATCHES = {"SteerSkipLayer"}  # refused on a UNet: their graphs load DIT_CHECKPOINT
POSITIVE = "a red apple on a wooden table, studio light"
NEGATIVE = "blurry, low quality, watermark"

DEFAULTS: dict[str, dict[str, Any]] = {
    "SteerScaleSchedule": {"curve": "linear_down", "cfg_min": 1.0, "switch_at": 0.5, "exponent": 2.0, "custom": ""},
    "SteerDynamicThreshold": {"mode": "latent", "mimic_scale": 7.0, "threshold_percentile": 1.0,
                              "startpoint": "MEAN", "variability": "AD", "interpolate_phi": 1.0},
    "SteerCFGSkip": {"mode": "percent", "start_percent": 0.4, "end_percent": 1.0, "sigma_high": 5.42,
                     "sigma_low": 0.28, "threshold": 0.99},
    "SteerNegative": {"scale": 1.0, "mode": "subtract"},
    "SteerPAG": {"scale": 3.0, "blocks": "middle.0", "start_percent": 0.0, "end_percent": 1.0},
    "SteerSEG": {"scale": 3.0, "blur_sigma": -1.0, "blocks": "middle.0", "start_percent": 0.0, "end_percent": 1.0},
    "SteerSkipLayer": {"scale": 3.0, "blocks": "double.0", "start_percent": 0.0, "end_percent": 1.0},
    "SteerConditionDropout": {"rate": 0.1, "seed": 0},
}
EXTRA_NEGATIVE = "text, signature"


class Builder:
    """Numbers nodes "1", "2", … in the order they are added."""

    def __init__(self) -> None:
        self.graph: Graph = {}

    def add(self, class_type: str, **inputs: Any) -> str:
        key = str(len(self.graph) + 1)
        self.graph[key] = {"class_type": class_type, "inputs": inputs}
        return key


def text_to_image(prefix: str, *, seed: int = 1, steps: int = 4, cfg: float = 6.0, sampler: str = "euler",
                  scheduler: str = "normal", patches: list[Patch] = (), size: int = 64, batch: int = 1,
                  denoise: float = 1.0) -> Graph:
    """CheckpointLoaderSimple → `patches` in order → KSampler → VAEDecode → SaveImage(filename_prefix=prefix).
    A SteerNegative patch gets its own CLIPTextEncode of EXTRA_NEGATIVE, a SteerConditionDropout one of ""; a patch
    in DIT_PATCHES makes it the tiny SD3 checkpoint with its latent."""
    dit = any(class_type in DIT_PATCHES for class_type, _ in patches)
    b = Builder()
    checkpoint = b.add("CheckpointLoaderSimple", ckpt_name=DIT_CHECKPOINT if dit else CHECKPOINT)
    positive = b.add("CLIPTextEncode", text=POSITIVE, clip=[checkpoint, 1])
    negative = b.add("CLIPTextEncode", text=NEGATIVE, clip=[checkpoint, 1])
    model = [checkpoint, 0]
    for class_type, inputs in patches:
        extra = {}
        if class_type == "SteerNegative":
            extra["negative"] = [b.add("CLIPTextEncode", text=EXTRA_NEGATIVE, clip=[checkpoint, 1]), 0]
        if class_type == "SteerConditionDropout":  # SD1.5 needs the empty prompt as its null conditioning
            extra["null_conditioning"] = [b.add("CLIPTextEncode", text="", clip=[checkpoint, 1]), 0]
        model = [b.add(class_type, model=model, **(DEFAULTS.get(class_type, {}) | extra | inputs)), 0]
    latent = b.add("EmptySD3LatentImage" if dit else "EmptyLatentImage", width=size, height=size, batch_size=batch)
    sampled = b.add("KSampler", model=model, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler,
                    scheduler=scheduler, positive=[positive, 0], negative=[negative, 0], latent_image=[latent, 0],
                    denoise=denoise)
    image = b.add("VAEDecode", samples=[sampled, 0], vae=[checkpoint, 2])
    b.add("SaveImage", images=[image, 0], filename_prefix=prefix)
    return b.graph


def node_of(graph: Graph, class_type: str) -> str:
    """The id of the one node of `class_type` in `graph`."""
    (key,) = (key for key, node in graph.items() if node["class_type"] == class_type)
    return key
