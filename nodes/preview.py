"""Read-only routes for the node previews drawn by js/steer.js, computed with the same code the nodes run.

  GET  /steer/model_info?folder=checkpoints&name=F  the family of a model file and its perturbable block names, read
                                                    from the safetensors header (no weights are loaded)
  GET  /steer/presets  the block presets of SteerPAG, SteerSEG and SteerSkipLayer: "auto", then each family's
                       default (nodes/perturbing.py DEFAULT_BLOCKS)
  POST /steer/preview  {"node", "values", "cfg", "steps", "scheduler", "flow", "model": {"folder", "name"}}
                       → the scale per step (or a smooth curve when the steps are unknown) and which steps the node
                         acts on; for a perturbation node on a known model file also the blocks "auto" stands for
                         and the node's own refusal of blocks the model lacks; or {"error": message}

Nothing is written or cached; unknown files, folders and nodes are refused.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import fields
from typing import Any

import folder_paths

from ..guiders.perturbation import Perturbation, format_block, parse_blocks
from ..guiders.schedule import ScaleSchedule, parse_custom
from ..guiders.skip import CFGSkip
from .architectures import SUPPORTED, Architecture
from .perturbing import AUTO, DEFAULT_BLOCKS, resolved_text, window

MODEL_FOLDERS = ("checkpoints", "diffusion_models", "unet")
PERTURBATION_NODES = {"SteerPAG": "pag", "SteerSEG": "seg", "SteerSkipLayer": "skip"}
CURVE_POINTS = 64
FLOW_SHIFT = 3.0  # SD3's; other flow families shift differently, but a window only needs the order of sigmas
# input_blocks.4.1.transformer_blocks.0…, middle_block.1.transformer_blocks.0…, output_blocks.2.1.transformer_blocks.0…
UNET_BLOCK = re.compile(r"(input_blocks|output_blocks|middle_block)\.(\d+)(?:\.\d+)?\.transformer_blocks\.(\d+)\."
                        r"attn1\.to_q\.weight")
UNET_KINDS = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}
# Each family as ComfyUI's model detection tells it (comfy/model_detection.py), first match wins: (family, key that
# marks it, architecture name as nodes/architectures.py names it, its blocks: (key pattern, Steer's kind)).
TWO_STREAM = ((re.compile(r"double_blocks\.(\d+)\."), "double"), (re.compile(r"single_blocks\.(\d+)\."), "single"))
DIT_FAMILIES: tuple[tuple[str, str, str, tuple[tuple[re.Pattern[str], str], ...]], ...] = (
    ("HunyuanVideo", "txt_in.individual_token_refiner.blocks.0.norm1.weight", "HunyuanVideo", TWO_STREAM),
    ("Chroma", "distilled_guidance_layer.", "Chroma", TWO_STREAM),
    # Its QK-norm gain ends in .scale in checkpoints, in .weight as ComfyUI 0.33 names it; detection takes both.
    ("Flux", "double_blocks.0.img_attn.norm.key_norm.", "Flux", TWO_STREAM),
    ("SD3", "joint_blocks.0.context_block.attn.qkv.weight", "SD3 MMDiT",
     ((re.compile(r"joint_blocks\.(\d+)\."), "double"),)),
    ("Wan", "head.modulation", "Wan", ((re.compile(r"blocks\.(\d+)\."), "double"),)),
    ("Qwen-Image", "txt_norm.weight", "Qwen-Image", ((re.compile(r"transformer_blocks\.(\d+)\."), "double"),)),
    ("Lumina 2", "cap_embedder.1.weight", "Lumina 2", ((re.compile(r"layers\.(\d+)\."), "double"),)),
)
# Lumina 2's layers have no hook: nodes/architectures.py counts attention calls, from after its refiners' ones.
REFINER = re.compile(r"(context_refiner|noise_refiner)\.(\d+)\.")


def safetensors_keys(path: str) -> list[str]:
    """The tensor names in a .safetensors file's header."""
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(length))
    return [key for key in header if key != "__metadata__"]


def _prefix(keys: list[str], marker: str) -> str | None:
    """The diffusion model's key prefix ("", "model.diffusion_model.", …) of the key that has `marker` at its end or,
    for a marker ending in ".", in it; None without such a key."""
    for key in keys:
        at = key.find(marker) if marker.endswith(".") else (len(key) - len(marker) if key.endswith(marker) else -1)
        if at >= 0 and (at == 0 or key[at - 1] == "."):
            return key[:at]
    return None


def architecture_of_keys(keys: list[str]) -> tuple[str, Architecture | None]:
    """(family, architecture) of a state dict from its key names: the same block names and counts
    nodes/architectures.py reads from the loaded model, so its checks and defaults apply unchanged."""
    for family, marker, name, patterns in DIT_FAMILIES:
        prefix = _prefix(keys, marker)
        if prefix is None:
            continue
        blocks = {(kind, int(match[1])): 1 for key in keys if key.startswith(prefix)
                  for pattern, kind in patterns if (match := pattern.match(key, len(prefix)))}
        refiners = {match.groups() for key in keys
                    if key.startswith(prefix) and (match := REFINER.match(key, len(prefix)))}
        return family, Architecture(name, blocks, counted_from=len(refiners) if family == "Lumina 2" else None)
    prefix = _prefix(keys, "input_blocks.0.0.weight")
    if prefix is None:
        return "unknown", None
    transformers: dict[tuple[str, int], int] = {}
    for key in keys:
        if key.startswith(prefix) and (match := UNET_BLOCK.match(key, len(prefix))):
            block = (UNET_KINDS[match[1]], 0 if match[1] == "middle_block" else int(match[2]))
            transformers[block] = max(transformers.get(block, 0), int(match[3]) + 1)
    family = "SDXL" if f"{prefix}label_emb.0.0.weight" in keys else "SD1.5"
    return family, Architecture("UNet", transformers, unet=True, joint=False)


def model_info(keys: list[str]) -> dict[str, Any]:
    """Family, whether it samples by flow, the architecture name of nodes/perturbing.py's defaults and the block names
    ("input.4", "middle.0", "output.0.0–9"; "double.0–18", "single.0–37"), from state-dict keys."""
    return _info(*architecture_of_keys(keys))


def _info(family: str, architecture: Architecture | None) -> dict[str, Any]:
    if architecture is None:
        return {"family": family, "flow": False, "architecture": None, "blocks": []}
    return {"family": family, "flow": not architecture.unet, "architecture": architecture.name,
            "blocks": architecture.describe().split(", ") if architecture.blocks else []}


def presets() -> dict[str, list[list[str]]]:
    """Per perturbation node, [label, blocks] pairs: "auto" first, then each family's default, families with the same
    default on one line."""
    result = {}
    for node, kind in PERTURBATION_NODES.items():
        families: dict[str, list[str]] = {}
        for family, defaults in DEFAULT_BLOCKS.items():
            if kind in defaults:
                families.setdefault(defaults[kind], []).append(family)
        result[node] = [["auto: the model's family default", AUTO]] + [
            [f"{', '.join(names)}: {blocks}", blocks] for blocks, names in families.items()]
    return result


def _settings(cls: type, values: dict[str, Any]) -> Any:
    """A guiders dataclass from a node's widget values (those it does not know are ignored)."""
    return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


def _sampling(flow: bool):
    import comfy.model_sampling

    if flow:
        sampling = comfy.model_sampling.ModelSamplingDiscreteFlow()
        sampling.set_parameters(shift=FLOW_SHIFT)
        return sampling
    return comfy.model_sampling.ModelSamplingDiscrete()


def _sigmas(scheduler: str, steps: int, flow: bool) -> list[float]:
    import comfy.samplers

    return comfy.samplers.calculate_sigmas(_sampling(flow), scheduler, steps).tolist()[:steps]


def preview(node: str, values: dict[str, Any], cfg: float | None, steps: int | None, scheduler: str | None,
            flow: bool = False, keys: list[str] | None = None) -> dict[str, Any]:
    """What the node does over the run: `scales` ([progress, scale] pairs: per step when `steps` is known, else a
    smooth curve) for SteerScaleSchedule, `active` (per step) and `window` (progress) for SteerCFGSkip and the
    perturbation nodes (SteerPAG, SteerSEG, SteerSkipLayer; `keys`: the model file's tensor names, when known)."""
    if node == "SteerScaleSchedule":
        custom = values.get("custom", "") or ""
        scales = parse_custom(custom) if values.get("curve") == "custom" else ()
        schedule = _settings(ScaleSchedule, {**values, "custom": scales})
        cfg = 1.0 if cfg is None else cfg
        n = steps or (len(scales) if scales else CURVE_POINTS)
        points = [[i / (n - 1) if n > 1 else 0.0, schedule.scale(cfg, i, n)] for i in range(n)]
        return {"scales": points, "per_step": bool(steps or scales), "cfg": cfg}
    if node == "SteerCFGSkip":
        skip = _settings(CFGSkip, values)
        if skip.mode == "adaptive" or not steps:
            span = [skip.start_percent, skip.end_percent] if skip.mode == "percent" else None
            return {"active": None, "window": span}
        sigmas = _sigmas(scheduler or "normal", steps, flow) if skip.mode == "sigma" else [0.0] * steps
        return {"active": [skip.guides_step(i, steps, sigmas[i]) for i in range(steps)],
                "window": [skip.start_percent, skip.end_percent] if skip.mode == "percent" else None,
                "sigmas": sigmas if skip.mode == "sigma" else None}
    if node in PERTURBATION_NODES:
        return _perturbation(PERTURBATION_NODES[node], values, steps, scheduler, flow, keys)
    raise ValueError(f"no preview for node {node!r}")


def _perturbation(kind: str, values: dict[str, Any], steps: int | None, scheduler: str | None, flow: bool,
                  keys: list[str] | None) -> dict[str, Any]:
    """The steps a perturbation acts on (its σ window and adaptive fading, as the node converts and applies them) and
    its blocks: on a known model file, what "auto" stands for and the node's own refusal (`problem`) of blocks the
    model lacks or of a kind its family cannot take."""
    import torch

    text = values.get("blocks") or AUTO
    blocks_text = None if text.strip() == AUTO else text
    problem, info = None, None
    if keys is not None:
        family, architecture = architecture_of_keys(keys)
        info = _info(family, architecture)
        if architecture is None:
            problem = f"not a family perturbation guidance reaches; it works on {', '.join(SUPPORTED)}"
        else:
            flow = not architecture.unet
            try:
                blocks_text = resolved_text(kind, architecture, text)
                architecture.check(parse_blocks(blocks_text))
            except ValueError as error:
                problem = str(error)
    window_values = {"start_percent": 0.0, "end_percent": 1.0, "sigma_start": -1.0, "sigma_end": -1.0} | {
        k: values[k] for k in ("start_percent", "end_percent", "sigma_start", "sigma_end") if k in values}
    sampling = _sampling(flow)
    high, low = window(sampling, window_values)
    perturbation = Perturbation(kind, values.get("scale", 0.0), sigma_high=high, sigma_low=low,
                                adaptive_scale=values.get("adaptive_scale", 0.0))
    sigmas = _sigmas(scheduler or "normal", steps, flow) if steps else None
    active = None if sigmas is None else [
        perturbation.active(sigma, float(sampling.timestep(torch.tensor(sigma)))) for sigma in sigmas]
    span = [window_values["start_percent"], window_values["end_percent"]]
    return {"active": active, "sigmas": sigmas, "window": span,
            "blocks": [format_block(b) for b in parse_blocks(blocks_text)] if blocks_text else [],
            "auto": text.strip() == AUTO, "problem": problem, "model": info, "flow": flow}


def _model_keys(folder: str, name: str) -> list[str] | None:
    """The tensor names of a model file ComfyUI lists in `folder`; None for anything else (not listed, not
    .safetensors)."""
    if folder not in MODEL_FOLDERS or name not in folder_paths.get_filename_list(folder):
        return None
    path = folder_paths.get_full_path(folder, name)
    return safetensors_keys(path) if path and path.endswith(".safetensors") else None


def register_routes() -> None:
    """Add the routes to ComfyUI's server (absent when the pack is imported without one, as in-process tests do)."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return
    if getattr(PromptServer, "instance", None) is None:
        return
    routes = PromptServer.instance.routes

    @routes.get("/steer/model_info")
    async def get_model_info(request: web.Request) -> web.Response:
        folder, name = request.query.get("folder", ""), request.query.get("name", "")
        # A missing file is an ordinary answer (a workflow from elsewhere), not an HTTP error in the browser console.
        found = folder in MODEL_FOLDERS and name in folder_paths.get_filename_list(folder)
        keys = _model_keys(folder, name) if found else None
        if keys is None:
            return web.json_response({"family": "unknown", "flow": False, "architecture": None, "blocks": [],
                                      "found": found})
        return web.json_response({**model_info(keys), "found": True})

    @routes.get("/steer/presets")
    async def get_presets(request: web.Request) -> web.Response:
        return web.json_response(presets())

    @routes.post("/steer/preview")
    async def post_preview(request: web.Request) -> web.Response:
        body = await request.json()
        model = body.get("model") or {}
        try:
            keys = _model_keys(str(model.get("folder", "")), str(model.get("name", ""))) if model else None
            return web.json_response(preview(body.get("node", ""), body.get("values", {}), body.get("cfg"),
                                             body.get("steps"), body.get("scheduler"), bool(body.get("flow")), keys))
        except (ValueError, TypeError, AttributeError) as error:
            return web.json_response({"error": str(error)})
