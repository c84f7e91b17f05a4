"""What SteerPAG, SteerSEG and SteerSkipLayer share: the inputs every perturbation has, their checks, each family's
default blocks, and turning the inputs into a `Perturbation` on the model (math: guiders/perturbation.py)."""

from __future__ import annotations

import math
from typing import Any

from comfy_api.v0_0_2 import io

from ..guiders.perturbation import Block, Perturbation, parse_blocks
from .architectures import Architecture, architecture_of
from .checks import Values, check_inputs, known, node_label, percent_window, validation
from .hooks import with_steer

AUTO = "auto"
# Each family's default blocks per kind, and where they come from (README "Perturbation guidance" repeats this).
DEFAULT_BLOCKS: dict[str, dict[str, str]] = {
    # PAG paper (Ahn et al.) and SEG's reference code: the middle block of SD1.5 / SDXL.
    "UNet": {"pag": "middle.0", "seg": "middle.0"},
    # diffusers' SD3 PAG pipeline ("blocks.1"); core SkipLayerGuidanceSD3 and Stability's SD3.5 Medium: 7, 8, 9.
    "SD3 MMDiT": {"pag": "double.1", "seg": "double.1", "skip": "double.7-9"},
    # core SkipLayerGuidanceDiT's defaults (double 7, 8, 9 and single 7, 8, 9); no published PAG / SEG layers.
    "Flux": {"pag": "double.7-9, single.7-9", "seg": "double.7-9, single.7-9", "skip": "double.7-9, single.7-9"},
    "Chroma": {"pag": "double.7-9, single.7-9", "seg": "double.7-9, single.7-9", "skip": "double.7-9, single.7-9"},
    # Kijai's HunyuanVideo wrapper, STG on block 0.
    "HunyuanVideo": {"pag": "double.0", "seg": "double.0", "skip": "double.0"},
    # Kijai's Wan wrapper, SLG on block 10 (the community uses 9 or 10).
    "Wan": {"pag": "double.10", "seg": "double.10", "skip": "double.10"},
    # no published layers: core SkipLayerGuidanceDiT's double 7, 8, 9.
    "Qwen-Image": {"pag": "double.7-9", "seg": "double.7-9", "skip": "double.7-9"},
    "Lumina 2": {"pag": "double.7-9", "seg": "double.7-9"},
}
KIND_NAMES = {"pag": "perturbed-attention guidance", "seg": "smoothed energy guidance", "skip": "skip-layer guidance"}


def blocks_tooltip(kind: str) -> str:
    return (f"Where to perturb, comma separated: \"auto\" = the family's default ({_defaults(kind)}); UNet blocks "
            "input.N, middle.0, output.N (or output.N.i for one transformer); DiT blocks double.N and single.N (as "
            "core's SkipLayerGuidanceDiT numbers them; SD3's joint.N = double.N; Wan's and Qwen-Image's blocks are "
            "double), with ranges like double.7-9. Blocks the model lacks are an error that lists the model's blocks.")


def _defaults(kind: str) -> str:
    return "; ".join(f"{family} {blocks[kind]}" for family, blocks in DEFAULT_BLOCKS.items() if kind in blocks)


def window_inputs(start: float = 0.0, end: float = 1.0) -> list[io.Input]:
    return [
        io.Float.Input("start_percent", default=start, min=0.0, max=1.0, step=0.001,
                       tooltip="First point of the run with this guidance, as ComfyUI's own start_percent (ControlNet, "
                               "SkipLayerGuidanceDiT): a share of the model's noise range, 0 = pure noise."),
        io.Float.Input("end_percent", default=end, min=0.0, max=1.0, step=0.001,
                       tooltip="Last point of the run with this guidance (same scale as start_percent)."),
        io.Float.Input("sigma_start", default=-1.0, optional=True, min=-1.0, max=10000.0, step=0.01,
                       tooltip="Also a sigma window, as in the PAG packs: only where σ ≤ sigma_start; −1 = no bound."),
        io.Float.Input("sigma_end", default=-1.0, optional=True, min=-1.0, max=10000.0, step=0.01,
                       tooltip="Only where σ ≥ sigma_end; −1 = no bound."),
        io.Float.Input("adaptive_scale", default=0.0, optional=True, min=0.0, max=1.0, step=0.001,
                       tooltip="Fade the scale towards the end of the run, as the PAG packs' adaptive_scale: "
                               "scale·(1 − a⁴·(1000 − t)) with t the model's timestep (0–1000), never below 0. "
                               "0 keeps the scale constant."),
        io.Float.Input("rescale", default=0.0, optional=True, min=0.0, max=1.0, step=0.01,
                       tooltip="Rescale the guided result towards the positive's spread, per image, as "
                               "SkipLayerGuidanceDiT's rescaling_scale (Rescale-CFG): 0 off, 1 full."),
    ]


def _cross(values: Values) -> None:
    percent_window(values)
    if known(values, "sigma_start", "sigma_end") and values["sigma_start"] >= 0 and values["sigma_end"] >= 0 \
            and values["sigma_end"] > values["sigma_start"]:
        raise ValueError(f"input 'sigma_end' ({values['sigma_end']}) must not exceed sigma_start "
                         f"({values['sigma_start']}); −1 leaves either open")
    if values.get("blur_sigma") == 0:
        raise ValueError("input 'blur_sigma' (0) blurs nothing; use −1 (infinite) or a value in 0.01–10000")
    if values.get("blocks") is not None and values["blocks"].strip() != AUTO:
        try:
            parse_blocks(values["blocks"])
        except ValueError as error:
            raise ValueError(f"input 'blocks': {error}") from None


def validate(node: type[io.ComfyNode], values: Values) -> bool | str:
    return validation(node, values, _cross)


def resolved_text(kind: str, architecture: Architecture, text: str) -> str:
    """The blocks `text` means on this architecture: the family's default for "auto"; refuses a kind that cannot act
    on it (skip-layer guidance on a UNet, or on Lumina 2, whose blocks have no hook)."""
    if kind == "skip" and architecture.unet:
        raise ValueError("skip-layer guidance skips DiT blocks (double.N / single.N); this model is a UNet: use "
                         "Steer Perturbed-Attention Guidance or Steer Smoothed Energy Guidance there")
    if kind == "skip" and architecture.counted_from is not None:
        raise ValueError(f"ComfyUI's {architecture.name} offers no per-block hook to skip a block with; use "
                         "Steer Perturbed-Attention Guidance or Steer Smoothed Energy Guidance there")
    if text.strip() != AUTO:
        return text
    default = DEFAULT_BLOCKS.get(architecture.name, {}).get(kind)
    if default is None:
        raise ValueError(f"{KIND_NAMES[kind]} has no default blocks for {architecture.name}")
    return default


def _blocks(kind: str, architecture: Architecture, text: str) -> tuple[Block, ...]:
    text = resolved_text(kind, architecture, text)
    try:
        return architecture.check(parse_blocks(text))
    except ValueError as error:
        message = str(error)
        raise ValueError(message if message.startswith("input") else f"input 'blocks': {message}") from None


def window(sampling, values: Values) -> tuple[float, float]:
    """(σ_high, σ_low) from the percent window, converted as core converts it (the model's percent_to_sigma), and the
    sigma bounds; a window open at the start is unbounded above, so no first sigma falls outside it."""
    sigma_high = float(sampling.percent_to_sigma(values["start_percent"])) if values["start_percent"] > 0 else math.inf
    sigma_low = float(sampling.percent_to_sigma(values["end_percent"]))
    if values["sigma_start"] >= 0:
        sigma_high = min(sigma_high, values["sigma_start"])
    if values["sigma_end"] >= 0:
        sigma_low = max(sigma_low, values["sigma_end"])
    return sigma_high, sigma_low


def patched(node: type[io.ComfyNode], kind: str, model, values: Values, **extra: Any) -> io.NodeOutput:
    """The model with this perturbation added, after every check the model allows: the inputs, the architecture
    (refused by name where the kind cannot act on it) and the blocks."""
    # Inputs added after a node's first release are optional: prompts saved before them run with their defaults.
    values = {spec.id: spec.default for spec in node.define_schema().inputs if spec.optional} | values
    check_inputs(node, {"model": model, **values}, _cross)
    try:
        blocks = _blocks(kind, architecture_of(model), values["blocks"])
    except ValueError as error:
        raise ValueError(f"{node_label(node)}: {error}") from None
    sigma_high, sigma_low = window(model.get_model_object("model_sampling"), values)
    perturbation = Perturbation(kind, values["scale"], blocks, sigma_high, sigma_low, values["adaptive_scale"],
                                values["rescale"], **extra)
    return io.NodeOutput(with_steer(model, perturbation))
