"""The pack's example workflows, defined once as API graphs.

`python -m testbed.examples` writes each one to example_workflows/<name>.json in UI format (what ComfyUI lists under
Templates), laid out by `api_to_ui` with the node definitions of a freshly started ComfyUI.

Every example renders 64×64 in a few steps so that the test suite can run them all on the test bed's tiny models;
a user loading one picks their own model in the loader and raises the size and steps.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testbed.comfy import ROOT
from testbed.server import ComfyServer
from testbed.workflow import api_to_ui

EXAMPLES_DIR = ROOT / "example_workflows"
# The test bed's tiny models; users pick their own in the UI.
CHECKPOINT = "steer_tiny_sd15.safetensors"
SD3_UNET = "steer_tiny_sd3.safetensors"
SD3_CLIP = "steer_tiny_clip_l.safetensors"
SD3_VAE = "steer_tiny_taesd3.safetensors"

SIZE = 64
STEPS = 8
SEED = 42
POSITIVE = "a lighthouse on a rocky coast at sunset, dramatic clouds, oil painting"
NEGATIVE = "blurry, low quality, watermark, text"

Graph = dict[str, dict[str, Any]]
Link = list[Any]  # [node id, output slot]


def _node(class_type: str, title: str | None = None, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, **({"_meta": {"title": title}} if title else {}), "inputs": inputs}


class _Builder:
    """Numbers nodes "1", "2", ... in the order they are added (api_to_ui needs numeric ids)."""

    def __init__(self) -> None:
        self.graph: Graph = {}

    def add(self, class_type: str, title: str | None = None, **inputs: Any) -> str:
        key = str(len(self.graph) + 1)
        self.graph[key] = _node(class_type, title, **inputs)
        return key


def _sd15_custom_sampler(name: str, cfg: float, patches: Callable[[_Builder, Link, Link], Link],
                         positive: str = POSITIVE, negative: str = NEGATIVE,
                         sampler: Callable[[_Builder], str] | None = None) -> Graph:
    """CheckpointLoaderSimple → `patches` on its MODEL → SteerGuider → SamplerCustomAdvanced (euler unless `sampler`
    adds another SAMPLER node, normal) → VAEDecode → SaveImage(filename_prefix=name). `patches(builder, model, clip)`
    adds Steer patch nodes and returns the patched MODEL."""
    b = _Builder()
    ckpt = b.add("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    pos = b.add("CLIPTextEncode", "Positive prompt", text=positive, clip=[ckpt, 1])
    neg = b.add("CLIPTextEncode", "Negative prompt", text=negative, clip=[ckpt, 1])
    model = patches(b, [ckpt, 0], [ckpt, 1])
    guider = b.add("SteerGuider", model=model, positive=[pos, 0], negative=[neg, 0], cfg=cfg)
    noise = b.add("RandomNoise", noise_seed=SEED)
    sampler = sampler(b) if sampler else b.add("KSamplerSelect", sampler_name="euler")
    sigmas = b.add("BasicScheduler", model=model, scheduler="normal", steps=STEPS, denoise=1.0)
    latent = b.add("EmptyLatentImage", width=SIZE, height=SIZE, batch_size=1)
    sampled = b.add("SamplerCustomAdvanced", noise=[noise, 0], guider=[guider, 0], sampler=[sampler, 0],
                    sigmas=[sigmas, 0], latent_image=[latent, 0])
    image = b.add("VAEDecode", samples=[sampled, 0], vae=[ckpt, 2])
    b.add("SaveImage", images=[image, 0], filename_prefix=name)
    return b.graph


def _no_patches(b: _Builder, model: Link, clip: Link) -> Link:
    return model


def _scale_schedule(b: _Builder, model: Link, **settings: Any) -> Link:
    return [b.add("SteerScaleSchedule", model=model, **{"curve": "linear_down", "cfg_min": 4.0, "switch_at": 0.5,
                                                         "exponent": 2.0, "custom": "", "cycles": 1.0, **settings}), 0]


def _dynamic_threshold(b: _Builder, model: Link, **settings: Any) -> Link:
    return [b.add("SteerDynamicThreshold", model=model, **{
        "mode": "latent", "mimic_scale": 7.0, "threshold_percentile": 1.0, "startpoint": "MEAN",
        "variability": "AD", "interpolate_phi": 1.0, "mimic_curve": "constant", "mimic_scale_min": 1.0,
        "mimic_curve_value": 1.0, "separate_feature_channels": True, **settings}), 0]


def _cfg_skip(b: _Builder, model: Link, **settings: Any) -> Link:
    return [b.add("SteerCFGSkip", model=model, **{
        "mode": "percent", "start_percent": 0.4, "end_percent": 1.0, "sigma_high": 5.42, "sigma_low": 0.28,
        "threshold": 0.99, **settings}), 0]


def _extra_negative(b: _Builder, model: Link, clip: Link, text: str = "watermark, text, signature",
                    **settings: Any) -> Link:
    prompt = b.add("CLIPTextEncode", "Extra negative prompt", text=text, clip=clip)
    return [b.add("SteerNegative", model=model, negative=[prompt, 0],
                  **{"scale": 0.8, "mode": "perpendicular", **settings}), 0]


def _pag(b: _Builder, model: Link, **settings: Any) -> Link:
    return [b.add("SteerPAG", model=model, **{"scale": 3.0, "blocks": "middle.0", "start_percent": 0.0,
                                              "end_percent": 1.0, **settings}), 0]


def _ksample_and_save(b: _Builder, name: str, model: Link, positive: str, negative: str, latent: str, vae: Link,
                      cfg: float, sampler_name: str = "euler", scheduler: str = "normal") -> Graph:
    """KSampler → VAEDecode → SaveImage(filename_prefix=name): the tail of every KSampler example."""
    sampled = b.add("KSampler", model=model, seed=SEED, steps=STEPS, cfg=cfg, sampler_name=sampler_name,
                    scheduler=scheduler, positive=[positive, 0], negative=[negative, 0], latent_image=[latent, 0],
                    denoise=1.0)
    image = b.add("VAEDecode", samples=[sampled, 0], vae=vae)
    b.add("SaveImage", images=[image, 0], filename_prefix=name)
    return b.graph


def steer_cfg() -> Graph:
    """Text to image with SteerGuider at cfg 7 driving SamplerCustomAdvanced (euler, 8 steps, 64×64)."""
    return _sd15_custom_sampler("steer_cfg", 7.0, _no_patches)


def steer_scale_schedule() -> Graph:
    """Strong guidance for the composition, relaxing for the details: cfg 12 falling linearly to 4."""
    return _sd15_custom_sampler("steer_scale_schedule", 12.0,
                                lambda b, model, clip: _scale_schedule(b, model, curve="linear_down", cfg_min=4.0))


def steer_dynamic_threshold() -> Graph:
    """cfg 15 for prompt adherence, with the spread of cfg 7 so that the image does not burn."""
    return _sd15_custom_sampler("steer_dynamic_threshold", 15.0,
                                lambda b, model, clip: _dynamic_threshold(b, model, mimic_scale=7.0))


def steer_cfg_skip() -> Graph:
    """Guidance only inside the paper's sigma interval (0.28, 5.42]; other steps run the positive alone."""
    return _sd15_custom_sampler("steer_cfg_skip", 7.0, lambda b, model, clip: _cfg_skip(
        b, model, mode="sigma", sigma_high=5.42, sigma_low=0.28))


def steer_negative() -> Graph:
    """A second negative prompt ("watermark, text, signature") at 0.8, perpendicular to what the positive asks for."""
    return _sd15_custom_sampler("steer_negative", 7.0, lambda b, model, clip: _extra_negative(b, model, clip),
                                negative="blurry, low quality, jpeg artifacts")


def _all_four(b: _Builder, model: Link, clip: Link) -> Link:
    model = _scale_schedule(b, model, curve="cosine_down", cfg_min=5.0)
    model = _dynamic_threshold(b, model, mimic_scale=7.0)
    model = _cfg_skip(b, model, mode="percent", start_percent=0.0, end_percent=0.8)
    return _extra_negative(b, model, clip, scale=0.8, mode="perpendicular")


def steer_all_four() -> Graph:
    """All four patches on one model: cfg 12 easing to 5 (cosine), thresholded to cfg 7's spread, the last fifth of
    the steps unguided, and an extra perpendicular negative."""
    return _sd15_custom_sampler("steer_all_four", 12.0, _all_four, negative="blurry, low quality, jpeg artifacts")


def steer_ksampler() -> Graph:
    """The patches with the plain KSampler: CheckpointLoaderSimple → schedule → threshold → extra negative →
    KSampler (cfg 10, euler, normal) → VAEDecode → SaveImage."""
    b = _Builder()
    ckpt = b.add("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    pos = b.add("CLIPTextEncode", "Positive prompt", text=POSITIVE, clip=[ckpt, 1])
    neg = b.add("CLIPTextEncode", "Negative prompt", text="blurry, low quality, jpeg artifacts", clip=[ckpt, 1])
    model = _scale_schedule(b, [ckpt, 0], curve="cosine_down", cfg_min=4.0)
    model = _dynamic_threshold(b, model, mimic_scale=6.0)
    model = _extra_negative(b, model, [ckpt, 1])
    latent = b.add("EmptyLatentImage", width=SIZE, height=SIZE, batch_size=1)
    return _ksample_and_save(b, "steer_ksampler", model, pos, neg, latent, [ckpt, 2], cfg=10.0)


def steer_sd3_flow() -> Graph:
    """A flow model (SD3-type, separate diffusion model / text encoder / VAE files) with KSampler: cfg 5 easing to 1.5
    (cosine) and the last fifth of the steps unguided, which only costs positive passes."""
    b = _Builder()
    unet = b.add("UNETLoader", unet_name=SD3_UNET, weight_dtype="default")
    clip = b.add("CLIPLoader", clip_name=SD3_CLIP, type="sd3", device="default")
    vae = b.add("VAELoader", vae_name=SD3_VAE)
    pos = b.add("CLIPTextEncode", "Positive prompt", text=POSITIVE, clip=[clip, 0])
    neg = b.add("CLIPTextEncode", "Negative prompt", text=NEGATIVE, clip=[clip, 0])
    model = _scale_schedule(b, [unet, 0], curve="cosine_down", cfg_min=1.5)
    model = _cfg_skip(b, model, mode="percent", start_percent=0.0, end_percent=0.8)
    latent = b.add("EmptySD3LatentImage", width=SIZE, height=SIZE, batch_size=1)
    return _ksample_and_save(b, "steer_sd3_flow", model, pos, neg, latent, [vae, 0], cfg=5.0, scheduler="simple")


def steer_pag() -> Graph:
    """Perturbed-attention guidance as in the paper (scale 3 on the middle block, with cfg 4), computed in the same
    model call as the positive and negative."""
    return _sd15_custom_sampler("steer_pag", 4.0, lambda b, model, clip: _pag(b, model))


def steer_pag_cfg_skip() -> Graph:
    """PAG until 70 % of the run (later it stripes ancestral samplers), CFG only from 30 % on: early steps compute
    the positive and its perturbed copy, late ones the positive and negative, the middle all three in one call."""
    return _sd15_custom_sampler("steer_pag_cfg_skip", 5.0, lambda b, model, clip: _cfg_skip(
        b, _pag(b, model, end_percent=0.7), mode="percent", start_percent=0.3, end_percent=1.0))


def steer_cfg_pp() -> Graph:
    """CFG++ through SteerGuider: the SteerCFGPPSampler (dpmpp_2m) renoises with the unconditional prediction, so the
    guider's cfg is CFG++'s λ — 0.8 here, where plain CFG would need about 6–12."""
    return _sd15_custom_sampler("steer_cfg_pp", 0.8, _no_patches, sampler=lambda b: b.add(
        "SteerCFGPPSampler", sampler_name="dpmpp_2m", eta=1.0, s_noise=1.0))


def steer_cfg_pp_ksampler() -> Graph:
    """CFG++ from the plain KSampler: pick a steer_*_cfg_pp sampler (here euler ancestral) and set cfg to λ (1.0);
    a scale schedule on the model eases λ from 1.0 to 0.6."""
    b = _Builder()
    ckpt = b.add("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    pos = b.add("CLIPTextEncode", "Positive prompt", text=POSITIVE, clip=[ckpt, 1])
    neg = b.add("CLIPTextEncode", "Negative prompt", text=NEGATIVE, clip=[ckpt, 1])
    model = _scale_schedule(b, [ckpt, 0], curve="linear_down", cfg_min=0.6)
    latent = b.add("EmptyLatentImage", width=SIZE, height=SIZE, batch_size=1)
    return _ksample_and_save(b, "steer_cfg_pp_ksampler", model, pos, neg, latent, [ckpt, 2], cfg=1.0,
                             sampler_name="steer_euler_ancestral_cfg_pp")


def steer_sweep() -> Graph:
    """cfg 4, 8, 12 and 16 from one seed, with dynamic thresholding (mimic 7) and without it: the grid shows where
    plain CFG starts to burn and what thresholding keeps of it."""
    b = _Builder()
    ckpt = b.add("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    pos = b.add("CLIPTextEncode", "Positive prompt", text=POSITIVE, clip=[ckpt, 1])
    neg = b.add("CLIPTextEncode", "Negative prompt", text=NEGATIVE, clip=[ckpt, 1])
    model = _dynamic_threshold(b, [ckpt, 0], mimic_scale=7.0)
    latent = b.add("EmptyLatentImage", width=SIZE, height=SIZE, batch_size=1)
    grid = b.add("SteerSweep", model=model, seed=SEED, steps=STEPS, sampler_name="euler", scheduler="normal",
                 positive=[pos, 0], negative=[neg, 0], latent_image=[latent, 0], vae=[ckpt, 2], denoise=1.0,
                 scales="4, 8, 12, 16", compare_without_steer=True)
    b.add("SaveImage", images=[grid, 0], filename_prefix="steer_sweep")
    return b.graph


EXAMPLES: dict[str, Callable[[], Graph]] = {build.__name__: build for build in (
    steer_cfg, steer_scale_schedule, steer_dynamic_threshold, steer_cfg_skip, steer_negative, steer_all_four,
    steer_ksampler, steer_sd3_flow, steer_pag, steer_pag_cfg_skip, steer_cfg_pp, steer_cfg_pp_ksampler, steer_sweep)}


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
