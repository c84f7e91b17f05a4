"""Read-only routes for the node previews drawn by js/steer.js, computed with the same code the nodes run.

  GET  /steer/model_info?folder=checkpoints&name=F  the family of a model file and its PAG block names, read from
                                                    the safetensors header (no weights are loaded)
  POST /steer/preview  {"node", "values", "cfg", "steps", "scheduler", "flow"}
                       → the scale per step (or a smooth curve when the steps are unknown) and which steps the node
                         acts on, or {"error": message}

Nothing is written or cached; unknown files, folders and nodes are refused.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import fields
from typing import Any

import folder_paths

from ..guiders.perturbation import format_block, parse_blocks
from ..guiders.schedule import ScaleSchedule, parse_custom
from ..guiders.skip import CFGSkip
from .perturbing import AUTO, window

MODEL_FOLDERS = ("checkpoints", "diffusion_models", "unet")
PERTURBATION_NODES = ("SteerPAG", "SteerSEG", "SteerSkipLayer")
CURVE_POINTS = 64
FLOW_SHIFT = 3.0  # SD3's; Flux's own sampling differs, but its CFG window only needs the order of sigmas
# input_blocks.4.1.transformer_blocks.0…, middle_block.1.transformer_blocks.0…, output_blocks.2.1.transformer_blocks.0…
UNET_BLOCK = re.compile(r"(?:^|\.)(input_blocks|output_blocks|middle_block)\.(\d+)(?:\.\d+)?\.transformer_blocks\."
                        r"(\d+)\.attn1\.to_q\.weight$")
JOINT_BLOCK = re.compile(r"(?:^|\.)joint_blocks\.(\d+)\.x_block\.attn\.qkv\.weight$")
KINDS = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}


def safetensors_keys(path: str) -> list[str]:
    """The tensor names in a .safetensors file's header."""
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(length))
    return [key for key in header if key != "__metadata__"]


def model_info(keys: list[str]) -> dict[str, Any]:
    """Family and PAG block names ("input.4", "middle.0", "output.0.0–9", "joint.3") from state-dict keys."""
    transformers: dict[tuple[str, int], int] = {}
    for key in keys:
        if match := UNET_BLOCK.search(key):
            kind, number = KINDS[match[1]], 0 if match[1] == "middle_block" else int(match[2])
            transformers[(kind, number)] = max(transformers.get((kind, number), 0), int(match[3]) + 1)
        elif match := JOINT_BLOCK.search(key):
            transformers[("joint", int(match[1]))] = 1
    order = {"input": 0, "middle": 1, "output": 2, "joint": 3}
    blocks = [f"{kind}.{number}" + (f".0–{count - 1}" if count > 1 else "")
              for (kind, number), count in sorted(transformers.items(), key=lambda b: (order[b[0][0]], b[0][1]))]
    if any(k.endswith("double_blocks.0.img_attn.qkv.weight") for k in keys):
        family = "Flux"
    elif any(kind == "joint" for kind, _ in transformers):
        family = "SD3"
    elif any(k.endswith("label_emb.0.0.weight") for k in keys):
        family = "SDXL"
    elif transformers:
        family = "SD1.5"
    else:
        family = "unknown"
    return {"family": family, "flow": family in ("SD3", "Flux"), "blocks": blocks}


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
            flow: bool = False) -> dict[str, Any]:
    """What the node does over the run: `scales` ([progress, scale] pairs: per step when `steps` is known, else a
    smooth curve) for SteerScaleSchedule, `active` (per step) and `window` (progress) for SteerCFGSkip and the
    perturbation nodes (SteerPAG, SteerSEG, SteerSkipLayer: their σ window on the default schedule)."""
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
        text = values.get("blocks", AUTO) or AUTO
        blocks = [] if text.strip() == AUTO else [format_block(b) for b in parse_blocks(text)]
        window_values = {"start_percent": 0.0, "end_percent": 1.0, "sigma_start": -1.0, "sigma_end": -1.0} | {
            k: values[k] for k in ("start_percent", "end_percent", "sigma_start", "sigma_end") if k in values}
        high, low = window(_sampling(flow), window_values)
        active = None
        if steps:
            sigmas = _sigmas(scheduler or "normal", steps, flow)
            active = [values.get("scale", 0.0) != 0 and low <= sigma <= high for sigma in sigmas]
        return {"active": active, "window": [window_values["start_percent"], window_values["end_percent"]],
                "blocks": blocks}
    raise ValueError(f"no preview for node {node!r}")


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
        if folder not in MODEL_FOLDERS or name not in folder_paths.get_filename_list(folder):
            return web.json_response({"family": "unknown", "flow": False, "blocks": [], "found": False})
        path = folder_paths.get_full_path(folder, name)
        if not path or not path.endswith(".safetensors"):
            return web.json_response({"family": "unknown", "flow": False, "blocks": [], "found": True})
        return web.json_response({**model_info(safetensors_keys(path)), "found": True})

    @routes.post("/steer/preview")
    async def post_preview(request: web.Request) -> web.Response:
        body = await request.json()
        try:
            return web.json_response(preview(body.get("node", ""), body.get("values", {}), body.get("cfg"),
                                             body.get("steps"), body.get("scheduler"), bool(body.get("flow"))))
        except (ValueError, TypeError) as error:
            return web.json_response({"error": str(error)})
