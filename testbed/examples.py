"""The pack's example workflows, defined once: the Steer side as an API graph for a real model of its family, plus
the card title, the Note and what plain CFG is compared with; or, for a training example, the LoRA training graph.

`python -m testbed.examples` writes each one to example_workflows/<title>.json in UI format (what ComfyUI lists under
Templates) with the same-seed plain-CFG comparison, the Note, groups and the `models` download entries added by
testbed/showcase.py, and a thumbnail beside it (testbed/thumbnails.py). The files are for people: real checkpoint
names, 512² / 1024², 20–25 steps. Tests swap in the tiny models, 64² and 8 steps (testbed/swap.py).

Adding an example: write a builder `(family) -> Graph` whose graph saves one image with SaveImage(filename_prefix=key)
and add an `Example` to EXAMPLES; the position in EXAMPLES is the card's number. A training example (kind
"training") saves a LoRA with SaveLoRA(prefix="loras/<key>") instead: no image, so no plain-CFG comparison.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.comfy import ROOT

EXAMPLES_DIR = ROOT / "example_workflows"

SEED = 42
POSITIVE = "a lighthouse on a rocky coast at sunset, dramatic clouds, oil painting"
NEGATIVE = "blurry, low quality, watermark, text"

Graph = dict[str, dict[str, Any]]
Link = list[Any]  # [node id, output slot]


@dataclass(frozen=True)
class Family:
    """A model family as its users run it: the usual checkpoint file, where to get it, native size and steps."""

    name: str
    checkpoint: str
    url: str
    size: int
    steps: int
    scheduler: str = "normal"
    latent: str = "EmptyLatentImage"
    testbed_checkpoint: str = "steer_tiny_sd15.safetensors"  # what testbed/swap.py puts in its place
    # What testbed/swap.py puts in a perturbation node's `blocks` on the tiny model, when the real model's blocks are
    # not all there (None: the example's blocks exist in the tiny model too).
    testbed_blocks: str | None = None
    flow: bool = False  # samples by flow matching (SD3's sgm_uniform sigmas 1 → 0), as the card draws its steps


SD15 = Family("SD1.5", "v1-5-pruned-emaonly-fp16.safetensors",
              "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"
              "v1-5-pruned-emaonly-fp16.safetensors?download=true", 512, 20)
SDXL = Family("SDXL", "sd_xl_base_1.0.safetensors",
              "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/"
              "sd_xl_base_1.0.safetensors?download=true", 1024, 25)
SD35 = Family("SD3.5", "sd3.5_large_fp8_scaled.safetensors",
              "https://huggingface.co/Comfy-Org/stable-diffusion-3.5-fp8/resolve/main/"
              "sd3.5_large_fp8_scaled.safetensors?download=true", 1024, 20, scheduler="sgm_uniform",
              latent="EmptySD3LatentImage", testbed_checkpoint="steer_tiny_sd3.safetensors", testbed_blocks="double.0",
              flow=True)
# Stability's settings for SD3.5 Medium (model card: 40 steps, cfg 4.5), the model skip-layer guidance was made for.
SD35_MEDIUM = Family("SD3.5 Medium", "sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors",
                     "https://huggingface.co/Comfy-Org/stable-diffusion-3.5-fp8/resolve/main/"
                     "sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors?download=true", 1024, 40,
                     scheduler="sgm_uniform", latent="EmptySD3LatentImage",
                     testbed_checkpoint="steer_tiny_sd3.safetensors", testbed_blocks="double.0", flow=True)
FAMILIES = (SD15, SDXL, SD35, SD35_MEDIUM)


@dataclass(frozen=True)
class Example:
    """One example workflow. `key` names its saved images and its tests; `title` is its file name and so the title
    of its Templates card (front end 1.32 shows custom templates by file name, in no set order: the number makes
    the intended order visible and lets "sort alphabetically" follow it)."""

    key: str
    title: str
    family: Family
    note: str
    build: Callable[[Family], Graph]
    plain: dict[str, Any] = field(default_factory=dict)  # plain-CFG side: "cfg", "sampler_name" overrides
    kind: str = "image"  # "image": saves an image, shown beside plain CFG; "training": saves a LoRA; "grid": a
    # grid that compares by itself (SteerSweep)

    @property
    def training(self) -> bool:
        return self.kind == "training"

    @property
    def compare(self) -> bool:
        """Whether the showcase adds a same-seed plain-CFG side."""
        return self.kind == "image"

    @property
    def path(self) -> Path:
        return EXAMPLES_DIR / f"{self.title}.json"


def _node(class_type: str, title: str | None = None, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, **({"_meta": {"title": title}} if title else {}), "inputs": inputs}


class Builder:
    """Numbers nodes "1", "2", ... in the order they are added (api_to_ui needs numeric ids)."""

    def __init__(self, graph: Graph | None = None) -> None:
        self.graph: Graph = graph if graph is not None else {}

    def add(self, class_type: str, title: str | None = None, **inputs: Any) -> str:
        key = str(max(map(int, self.graph), default=0) + 1)
        self.graph[key] = _node(class_type, title, **inputs)
        return key


Patches = Callable[[Builder, Link, Link], Link]  # (builder, model, clip) -> patched model


def _loaded(b: Builder, family: Family, negative: str) -> tuple[str, str, str, str]:
    """Checkpoint, positive and negative prompts, empty latent: (checkpoint, positive, negative, latent) ids."""
    ckpt = b.add("CheckpointLoaderSimple", ckpt_name=family.checkpoint)
    pos = b.add("CLIPTextEncode", "Positive prompt", text=POSITIVE, clip=[ckpt, 1])
    neg = b.add("CLIPTextEncode", "Negative prompt", text=negative, clip=[ckpt, 1])
    latent = b.add(family.latent, width=family.size, height=family.size, batch_size=1)
    return ckpt, pos, neg, latent


def custom_sampler(key: str, family: Family, cfg: float, patches: Patches, negative: str = NEGATIVE,
                   sampler: Callable[[Builder], str] | None = None) -> Graph:
    """CheckpointLoaderSimple → `patches` on its MODEL → SteerGuider → SamplerCustomAdvanced (euler unless `sampler`
    adds another SAMPLER node; the family's scheduler) → VAEDecode → SaveImage(filename_prefix=key)."""
    b = Builder()
    ckpt, pos, neg, latent = _loaded(b, family, negative)
    model = patches(b, [ckpt, 0], [ckpt, 1])
    guider = b.add("SteerGuider", model=model, positive=[pos, 0], negative=[neg, 0], cfg=cfg)
    noise = b.add("RandomNoise", noise_seed=SEED)
    sampler_id = sampler(b) if sampler else b.add("KSamplerSelect", sampler_name="euler")
    sigmas = b.add("BasicScheduler", model=model, scheduler=family.scheduler, steps=family.steps, denoise=1.0)
    sampled = b.add("SamplerCustomAdvanced", noise=[noise, 0], guider=[guider, 0], sampler=[sampler_id, 0],
                    sigmas=[sigmas, 0], latent_image=[latent, 0])
    image = b.add("VAEDecode", samples=[sampled, 0], vae=[ckpt, 2])
    b.add("SaveImage", images=[image, 0], filename_prefix=key)
    return b.graph


def ksampler(key: str, family: Family, cfg: float, patches: Patches, negative: str = NEGATIVE,
             sampler_name: str = "euler") -> Graph:
    """CheckpointLoaderSimple → `patches` → KSampler (the family's steps and scheduler) → VAEDecode → SaveImage."""
    b = Builder()
    ckpt, pos, neg, latent = _loaded(b, family, negative)
    model = patches(b, [ckpt, 0], [ckpt, 1])
    sampled = b.add("KSampler", model=model, seed=SEED, steps=family.steps, cfg=cfg, sampler_name=sampler_name,
                    scheduler=family.scheduler, positive=[pos, 0], negative=[neg, 0], latent_image=[latent, 0],
                    denoise=1.0)
    image = b.add("VAEDecode", samples=[sampled, 0], vae=[ckpt, 2])
    b.add("SaveImage", images=[image, 0], filename_prefix=key)
    return b.graph


def _no_patches(b: Builder, model: Link, clip: Link) -> Link:
    return model


def _scale_schedule(b: Builder, model: Link, **settings: Any) -> Link:
    return [b.add("SteerScaleSchedule", model=model, **{"curve": "linear_down", "cfg_min": 4.0, "switch_at": 0.5,
                                                         "exponent": 2.0, "custom": "", "cycles": 1.0, **settings}), 0]


def _dynamic_threshold(b: Builder, model: Link, **settings: Any) -> Link:
    return [b.add("SteerDynamicThreshold", model=model, **{
        "mode": "latent", "mimic_scale": 7.0, "threshold_percentile": 1.0, "startpoint": "MEAN",
        "variability": "AD", "interpolate_phi": 1.0, "mimic_curve": "constant", "mimic_scale_min": 1.0,
        "mimic_curve_value": 1.0, "separate_feature_channels": True, **settings}), 0]


def _cfg_skip(b: Builder, model: Link, **settings: Any) -> Link:
    return [b.add("SteerCFGSkip", model=model, **{
        "mode": "percent", "start_percent": 0.4, "end_percent": 1.0, "sigma_high": 5.42, "sigma_low": 0.28,
        "threshold": 0.99, **settings}), 0]


def _extra_negative(b: Builder, model: Link, clip: Link, text: str = "watermark, text, signature",
                    **settings: Any) -> Link:
    prompt = b.add("CLIPTextEncode", "Extra negative prompt", text=text, clip=clip)
    return [b.add("SteerNegative", model=model, negative=[prompt, 0],
                  **{"scale": 0.8, "mode": "perpendicular", **settings}), 0]


WINDOW = {"start_percent": 0.0, "end_percent": 1.0, "sigma_start": -1.0, "sigma_end": -1.0, "adaptive_scale": 0.0,
          "rescale": 0.0}


def _pag(b: Builder, model: Link, **settings: Any) -> Link:
    return [b.add("SteerPAG", model=model, **{"scale": 3.0, "blocks": "auto", **WINDOW, **settings}), 0]


def _seg(b: Builder, model: Link, **settings: Any) -> Link:
    return [b.add("SteerSEG", model=model, **{"scale": 3.0, "blur_sigma": -1.0, "blocks": "auto", **WINDOW,
                                              **settings}), 0]


def _skip_layer(b: Builder, model: Link, **settings: Any) -> Link:
    return [b.add("SteerSkipLayer", model=model, **{"scale": 3.0, "blocks": "auto", **WINDOW, "start_percent": 0.01,
                                                    "end_percent": 0.15, **settings}), 0]


def _all_four(b: Builder, model: Link, clip: Link) -> Link:
    model = _scale_schedule(b, model, curve="cosine_down", cfg_min=5.0)
    model = _dynamic_threshold(b, model, mimic_scale=7.0)
    model = _cfg_skip(b, model, mode="percent", start_percent=0.0, end_percent=0.8)
    return _extra_negative(b, model, clip, scale=0.8, mode="perpendicular")


def _ksampler_patches(b: Builder, model: Link, clip: Link) -> Link:
    model = _scale_schedule(b, model, curve="cosine_down", cfg_min=4.0)
    model = _dynamic_threshold(b, model, mimic_scale=6.0)
    return _extra_negative(b, model, clip)


def _sd3_patches(b: Builder, model: Link, clip: Link) -> Link:
    model = _scale_schedule(b, model, curve="cosine_down", cfg_min=1.5)
    return _cfg_skip(b, model, mode="percent", start_percent=0.0, end_percent=0.8)


LOW_QUALITY = "blurry, low quality, jpeg artifacts"
TRY = "\n\n**Try:** "


def steer_sweep(family: Family) -> Graph:
    """CheckpointLoaderSimple → SteerDynamicThreshold (mimic 7) → SteerSweep over cfg 4, 8, 12, 16 from one seed,
    with the Steer patches (top row) and without them (bottom row) → SaveImage of the labelled grid."""
    b = Builder()
    ckpt, pos, neg, latent = _loaded(b, family, NEGATIVE)
    model = _dynamic_threshold(b, [ckpt, 0], mimic_scale=7.0)
    grid = b.add("SteerSweep", model=model, seed=SEED, steps=family.steps, sampler_name="euler",
                 scheduler=family.scheduler, positive=[pos, 0], negative=[neg, 0], latent_image=[latent, 0],
                 vae=[ckpt, 2], denoise=1.0, scales="4, 8, 12, 16", compare_without_steer=True)
    b.add("SaveImage", images=[grid, 0], filename_prefix="steer_sweep")
    return b.graph


DATASET = "steer_dropout_dataset"  # a folder of ComfyUI's input/: images with same-name .txt captions
TRAIN_STEPS = 500
DROPOUT_RATE, DROPOUT_SEED = 0.1, 0


def condition_dropout(key: str, family: Family) -> Graph:
    """LoRA training that keeps CFG working: CheckpointLoaderSimple + a captioned image folder → MakeTrainingDataset;
    the MODEL through SteerConditionDropout (null = the empty prompt) → TrainLoraNode → SaveLoRA(prefix=loras/key)."""
    b = Builder()
    ckpt = b.add("CheckpointLoaderSimple", ckpt_name=family.checkpoint)
    data = b.add("LoadImageTextDataSetFromFolder", folder=DATASET)
    dataset = b.add("MakeTrainingDataset", images=[data, 0], vae=[ckpt, 2], clip=[ckpt, 1], texts=[data, 1])
    null = b.add("CLIPTextEncode", "Empty prompt", text="", clip=[ckpt, 1])
    model = b.add("SteerConditionDropout", model=[ckpt, 0], rate=DROPOUT_RATE, seed=DROPOUT_SEED,
                  null_conditioning=[null, 0])
    train = b.add("TrainLoraNode", model=[model, 0], latents=[dataset, 0], positive=[dataset, 1], batch_size=1,
                  grad_accumulation_steps=1, steps=TRAIN_STEPS, learning_rate=0.0005, rank=8, optimizer="AdamW",
                  loss_function="MSE", seed=SEED, training_dtype="bf16", lora_dtype="bf16", algorithm="LoRA",
                  gradient_checkpointing=True, existing_lora="[None]")
    b.add("SaveLoRA", lora=[train, 1], prefix=f"loras/{key}", steps=[train, 3])
    return b.graph


def write_dataset(input_dir: Path, images: int = 2, size: int = 64) -> Path:
    """A tiny captioned dataset for the training example: `images` size×size PNGs with .txt captions, in
    input_dir/DATASET."""
    from PIL import Image

    folder = input_dir / DATASET
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(images):
        colour = (40 + 90 * index, 120, 200 - 80 * index)
        # Written beside and renamed over: a server in another test worker may be reading the same files.
        scratch = folder / f".{index}.{os.getpid()}"
        Image.new("RGB", (size, size), colour).save(scratch, format="PNG")
        os.replace(scratch, folder / f"{index}.png")
        scratch.write_text(f"a flat colour swatch, number {index}")
        os.replace(scratch, folder / f"{index}.txt")
    return folder


EXAMPLES: dict[str, Example] = {example.key: example for example in (
    Example(
        "steer_cfg", "Steer 01 - Guider vs core CFG (SD1.5)", SD15,
        "## SteerGuider is core CFG, bit for bit\nThe bottom image comes from **Steer Guider**, the top one from "
        "ComfyUI's own **CFGGuider**, same seed, cfg 7: they are identical. Steer only changes what you ask it to "
        "change; every other Steer example starts from here." + TRY + "add a Steer patch (right-click › Add Node › "
        "sampling › steer) between the checkpoint and Steer Guider.",
        lambda f: custom_sampler("steer_cfg", f, 7.0, _no_patches)),
    Example(
        "steer_scale_schedule", "Steer 02 - Scale schedule (SDXL)", SDXL,
        "## A guidance scale that changes over the run\nStrong guidance while the composition forms, gentle while "
        "details are drawn: **Steer Scale Schedule** takes the scale from cfg 12 at the first step down to "
        "`cfg_min` 4 at the last (the node draws the curve). Top: constant cfg 12." + TRY + "`cosine_down`, or "
        "`linear_up` with cfg_min 1 (Wang et al. 2024 found rising schedules help); the `custom` curve takes one "
        "scale per step.",
        lambda f: custom_sampler("steer_scale_schedule", f, 12.0,
                                 lambda b, model, clip: _scale_schedule(b, model, curve="linear_down", cfg_min=4.0))),
    Example(
        "steer_dynamic_threshold", "Steer 03 - High cfg, no burn (SD1.5)", SD15,
        "## High cfg without burnt colours\nTop: cfg 15 as is, over-saturated. Bottom: the same cfg 15 with "
        "**Steer Dynamic Threshold** (latent mode) rescaling each step's result to the spread cfg 7 would give, so "
        "the prompt is followed as at 15 and the colours stay as at 7." + TRY + "mimic_scale 5–9; "
        "threshold_percentile 0.95 for a softer clamp.",
        lambda f: custom_sampler("steer_dynamic_threshold", f, 15.0,
                                 lambda b, model, clip: _dynamic_threshold(b, model, mimic_scale=7.0))),
    Example(
        "steer_cfg_skip", "Steer 04 - CFG skip (SDXL)", SDXL,
        "## Guide only where it helps, and skip the negative elsewhere\n**Steer CFG Skip** in `sigma` mode: "
        "guidance only for sigma in (0.28, 5.42], the SDXL interval of Kynkäänniemi et al. 2024; the other steps "
        "compute the positive alone (half the work). Top: cfg 7 on every step." + TRY + "`percent` mode with "
        "start 0.4 (skip the first 40 %), or `adaptive` (stop guiding once positive and negative agree).",
        lambda f: custom_sampler("steer_cfg_skip", f, 7.0, lambda b, model, clip: _cfg_skip(
            b, model, mode="sigma", sigma_high=5.42, sigma_low=0.28))),
    Example(
        "steer_negative", "Steer 05 - Extra negative (SD1.5)", SD15,
        "## A second negative prompt, in the same model call\n**Steer Extra Negative** adds \"watermark, text, "
        "signature\" at 0.8, taking only the part that does not fight the positive (perpendicular). Top: the first "
        "negative prompt alone." + TRY + "mode `subtract` (plain extra CFG term); scale 0.5–1.5; chain several "
        "Steer Extra Negative nodes.",
        lambda f: custom_sampler("steer_negative", f, 7.0, lambda b, model, clip: _extra_negative(b, model, clip),
                                 negative=LOW_QUALITY)),
    Example(
        "steer_pag", "Steer 06 - PAG (SDXL)", SDXL,
        "## PAG in the same batch as CFG\n**Steer Perturbed-Attention Guidance** (Ahn et al. 2024) also runs the "
        "positive with self-attention replaced by the identity in the middle block (`auto`: the family's default, "
        "`middle.0` on SD1.5 and SDXL) and steers away from that blurred guess: sharper structure at a low cfg. "
        "Computed in the same model call as positive and negative. Top: cfg 4 alone." + TRY + "scale 2–5; a "
        "preset or blocks `input.8, middle.0`; end_percent 0.7 with ancestral samplers; adaptive_scale 0.2 fades "
        "the term to 0 by timestep 375, as pamparamm's PAG node.",
        lambda f: custom_sampler("steer_pag", f, 4.0, lambda b, model, clip: _pag(b, model))),
    Example(
        "steer_cfg_pp", "Steer 07 - CFG++ sampler (SD1.5)", SD15,
        "## CFG++: guidance that stays on the image manifold\nWith **Steer CFG++ Sampler** (dpmpp_2m) the guider's "
        "cfg is CFG++'s λ in 0–1: here 0.8. Top: plain CFG 7 with the ordinary dpmpp_2m, for comparison."
        + TRY + "λ 0.4–1.0; euler_ancestral for more variety.",
        lambda f: custom_sampler("steer_cfg_pp", f, 0.8, _no_patches, sampler=lambda b: b.add(
            "SteerCFGPPSampler", sampler_name="dpmpp_2m", eta=1.0, s_noise=1.0)),
        plain={"cfg": 7.0, "sampler_name": "dpmpp_2m"}),
    Example(
        "steer_ksampler", "Steer 08 - With KSampler (SD1.5)", SD15,
        "## Steer from the KSampler you already use\nSteer's patches sit on the MODEL, so any sampler node uses "
        "them: cfg 10 easing to 4 (cosine), thresholded to cfg 6's spread, and an extra negative. Top: the same "
        "KSampler on the unpatched model." + TRY + "drop the patches into your own workflow between the loader "
        "(or LoRA) and the KSampler.",
        lambda f: ksampler("steer_ksampler", f, 10.0, _ksampler_patches, negative=LOW_QUALITY)),
    Example(
        "steer_cfg_pp_ksampler", "Steer 09 - CFG++ in KSampler (SDXL)", SDXL,
        "## CFG++ without changing your sampler node\nPick a `steer_*_cfg_pp` sampler in the KSampler and set cfg "
        "to λ (1.0 here); a scale schedule eases λ to 0.6. Top: euler_ancestral at cfg 7." + TRY
        + "`steer_dpmpp_2m_cfg_pp`; λ 0.6–1.0.",
        lambda f: ksampler("steer_cfg_pp_ksampler", f, 1.0, lambda b, model, clip: _scale_schedule(
            b, model, curve="linear_down", cfg_min=0.6), sampler_name="steer_euler_ancestral_cfg_pp"),
        plain={"cfg": 7.0, "sampler_name": "euler_ancestral"}),
    Example(
        "steer_pag_cfg_skip", "Steer 10 - PAG early, CFG late (SDXL)", SDXL,
        "## Fewer model rows: each method only where it pays\nPAG until 70 % of the run, CFG only from 30 % on: "
        "early steps compute positive + perturbed, late ones positive + negative, the middle all three in one "
        "call. Top: cfg 5 on every step." + TRY + "move the two windows; watch the bars the nodes draw.",
        lambda f: custom_sampler("steer_pag_cfg_skip", f, 5.0, lambda b, model, clip: _cfg_skip(
            b, _pag(b, model, end_percent=0.7), mode="percent", start_percent=0.3, end_percent=1.0))),
    Example(
        "steer_all_four", "Steer 11 - Four patches (SDXL)", SDXL,
        "## Four patches on one model\ncfg 12 easing to 5 (cosine), thresholded to cfg 7's spread, the last "
        "fifth of the steps unguided, and an extra perpendicular negative — all in one batched call per step. "
        "Top: constant cfg 12." + TRY + "bypass one patch at a time (Ctrl+B) to see what each adds.",
        lambda f: custom_sampler("steer_all_four", f, 12.0, _all_four, negative=LOW_QUALITY)),
    Example(
        "steer_sd3_flow", "Steer 12 - Flow model (SD3.5)", SD35,
        "## Steer on a flow model (SD3.5)\nKSampler at cfg 5 easing to 1.5 (cosine), and the last fifth of the "
        "steps unguided (positive only). Top: constant cfg 5. Flux dev is guidance-distilled (no negative pass), "
        "so CFG methods do not apply to it." + TRY + "SD3.5 medium; cfg 3.5–5.",
        lambda f: ksampler("steer_sd3_flow", f, 5.0, _sd3_patches)),
    Example(
        "steer_condition_dropout", "Steer 13 - Train a LoRA for CFG (SD1.5)", SD15,
        "## Train a LoRA that keeps CFG working\n**Steer Condition Dropout** (Ho & Salimans 2022) gives each "
        "training sample, with probability `rate` (0.1 here), the empty prompt's encoding instead of its caption, "
        "so the LoRA also learns the unconditional prediction that CFG subtracts; without it a LoRA moves only the "
        "conditional one and the guidance direction drifts. Sampling with the same MODEL is not affected.\n\n"
        f"Put your images with same-name .txt captions into `ComfyUI/input/<folder>` and pick the folder in the "
        f"dataset loader. {TRAIN_STEPS} steps here; the LoRA lands in `output/loras`. No image and no plain-CFG "
        "comparison: this workflow saves a LoRA." + TRY + "rate 0.1–0.2; the empty prompt must be encoded by the "
        "model's own CLIP (SDXL and SD3 models may leave null_conditioning unconnected: zeros).",
        lambda f: condition_dropout("steer_condition_dropout", f), kind="training"),
    Example(
        "steer_sweep", "Steer 14 - Cfg sweep (SD1.5)", SD15,
        "## Find the cfg: one seed, several scales, with and without Steer\n**Steer Sweep** samples cfg 4, 8, 12 "
        "and 16 from the same seed, once through the Steer patches on its model (top row: Steer Dynamic Threshold "
        "to cfg 7's spread) and once without them (bottom row: plain CFG), and saves one labelled grid. The grid "
        "is its own same-seed comparison." + TRY + "up to 16 scales of your own (0–100); "
        "compare_without_steer off for one row; any Steer patch chain on the model.",
        steer_sweep, kind="grid"),
    Example(
        "steer_seg", "Steer 15 - SEG (SDXL)", SDXL,
        "## Smoothed energy guidance: structure without a high cfg\n**Steer Smoothed Energy Guidance** (Hong "
        "2024) also runs the positive with the self-attention queries of the middle block blurred (`blur_sigma` "
        "−1: infinitely, every query the mean) and steers away from that smoothed prediction, in the same model "
        "call as positive and negative. Top: cfg 4 alone." + TRY + "blur_sigma 1, 4, 16 for a milder blur; scale "
        "1–5; SEG alone at cfg 1 (no negative pass at all).",
        lambda f: custom_sampler("steer_seg", f, 4.0, lambda b, model, clip: _seg(b, model))),
    Example(
        "steer_skip_layer", "Steer 16 - Skip-layer (SD3.5 Medium)", SD35_MEDIUM,
        "## Skip-layer guidance in one model call\n**Steer Skip-Layer Guidance** also runs the positive with "
        "joint blocks 7–9 passed through (`double.7-9`: core SkipLayerGuidanceSD3's and Stability's layers for "
        "SD3.5 Medium) from 1 % to 15 % of the run, and steers away from it: better anatomy and structure. "
        "Unlike core's node it adds a row to the same batched call instead of a second model call, and rescales "
        "per image. Top: the same KSampler without it." + TRY + "scale 2–4; end_percent 0.2 (Stability's); "
        "rescale 0.5 if colours burn; blocks `auto` (= double.7-9 here).",
        lambda f: ksampler("steer_skip_layer", f, 4.5, lambda b, model, clip: _skip_layer(
            b, model, blocks="double.7-9"))),
)}


def cannot_load_here(key: str, object_info: dict[str, Any]) -> str | None:
    """Why example `key` cannot load on the running ComfyUI (its `/object_info`), or None. Saved widget values are
    positional: the training example is saved for the TrainLoraNode of ComfyUI 0.3.75–0.8 (MODEL output); ComfyUI
    0.33 inserted five widgets into it and dropped that output (README, "ComfyUI versions")."""
    if EXAMPLES[key].training and "MODEL" not in object_info.get("TrainLoraNode", {}).get("output", ["MODEL"]):
        return "this ComfyUI's TrainLoraNode has other widgets and no MODEL output; the example is saved for 0.3.75–0.8"
    return None


def main() -> None:
    """Regenerate example_workflows/: every example's UI file and thumbnail; files of examples gone are removed."""
    from testbed.server import ComfyServer
    from testbed.showcase import showcase
    from testbed.thumbnails import write_thumbnail

    with tempfile.TemporaryDirectory() as scratch, ComfyServer(Path(scratch)) as server:
        object_info = server.object_info()
    EXAMPLES_DIR.mkdir(exist_ok=True)
    wanted = {example.path.name for example in EXAMPLES.values()}
    for stale in EXAMPLES_DIR.iterdir():
        if stale.suffix in (".json", ".jpg") and stale.with_suffix(".json").name not in wanted:
            stale.unlink()
    for example in EXAMPLES.values():
        example.path.write_text(json.dumps(showcase(example, object_info), indent=2, ensure_ascii=False) + "\n")
        write_thumbnail(example, example.path.with_suffix(".jpg"))
        print(example.path)


if __name__ == "__main__":
    main()
