"""Where perturbation guidance can act in each model family ComfyUI runs, read from the loaded model's own classes.

UNets (SD1.5, SDXL and relatives): `input.N`, `middle.0`, `output.N` blocks with self-attention transformers, patched
through ComfyUI's attn1 replace. DiTs: core's `dit` block replaces `double_block` / `single_block` (SD3's MMDiT joint
blocks and Wan's and Qwen-Image's blocks are double blocks to ComfyUI, as to core's SkipLayerGuidanceDiT).
"""

from __future__ import annotations

import importlib
import weakref
from dataclasses import dataclass

from comfy.ldm.modules.attention import BasicTransformerBlock
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

from ..guiders.perturbation import Block, format_block

SUPPORTED = ("UNet (SD1.5, SDXL)", "SD3/SD3.5 MMDiT", "Flux", "Chroma", "HunyuanVideo", "Wan 2.x", "Qwen-Image",
             "Lumina 2")


@dataclass(frozen=True)
class Architecture:
    """One family's perturbable blocks and the token layout of its attention.

    `joint`: the blocks' first attention runs over text and image tokens together (else over image tokens only);
    `text_first`: text tokens precede the image tokens in that sequence; `refs_first`: reference-image tokens (Wan,
    HunyuanVideo image-to-video) precede the main image's tokens instead of following them (Flux Kontext, Qwen edit).
    """

    name: str
    blocks: dict[tuple[str, int], int]  # (kind, number) → transformers in it (UNet) or 1 (DiT)
    unet: bool = False
    joint: bool = True
    text_first: bool = True
    refs_first: bool = False
    patch: tuple[int, ...] = (2, 2)  # tokens per latent cell along (frames,) height, width
    # No block hooks (Lumina 2): block N's attention is the model's (counted_from + N)-th attention call of a forward.
    counted_from: int | None = None

    def grid(self, latent_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The main image's token grid ((frames,) height, width) for a latent of `latent_shape` (without batch and
        channels): each side padded up to the patch, as ComfyUI's pad_to_patch_size does."""
        patch = self.patch[-len(latent_shape):]  # a 4-D latent on a model that also takes frames: no frame axis
        lead, sides = latent_shape[:-len(patch)], latent_shape[-len(patch):]
        return (*lead, *(-(-side // size) for side, size in zip(sides, patch, strict=True)))

    def check(self, blocks: tuple[Block, ...]) -> tuple[Block, ...]:
        """`blocks` on this model, a UNet block named without a transformer index expanded to each of its
        transformers; refuses blocks the model does not have, naming those it does."""
        missing = [b for b in blocks if (b[0], b[1]) not in self.blocks
                   or (b[2] is not None and b[2] >= self.blocks[(b[0], b[1])])]
        if missing:
            raise ValueError(f"input 'blocks': {', '.join(map(format_block, missing))} not in this {self.name} "
                             f"model; it has {self.describe()}")
        expanded = [(kind, number, index) for kind, number, transformer in blocks
                    for index in ([transformer] if transformer is not None or not self.unet
                                  else range(self.blocks[(kind, number)]))]
        return tuple(dict.fromkeys(expanded))

    def describe(self) -> str:
        """The block names, compactly: "input.1, input.2, middle.0, output.0.0–9" or "double.0–18, single.0–37"."""
        names = []
        for kind in ("input", "middle", "output", "double", "single"):
            numbers = sorted(number for k, number in self.blocks if k == kind)
            if not numbers:
                continue
            if self.unet:
                names += [f"{kind}.{n}" + (f".0–{self.blocks[(kind, n)] - 1}" if self.blocks[(kind, n)] > 1 else "")
                          for n in numbers]
            else:
                names.append(f"{kind}.{numbers[0]}" + (f"–{numbers[-1]}" if len(numbers) > 1 else ""))
        return ", ".join(names)


def _class(module: str, name: str) -> type | None:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _unet(model: UNetModel) -> Architecture:
    found: dict[tuple[str, int], int] = {}
    for kind, blocks in (("input", model.input_blocks), ("middle", [model.middle_block]),
                         ("output", model.output_blocks)):
        for number, block in enumerate(blocks):
            count = sum(isinstance(m, BasicTransformerBlock) for m in block.modules())
            if count:
                found[(kind, number)] = count
    return Architecture("UNet", found, unet=True, joint=False)


def _numbered(double: int, single: int = 0) -> dict[tuple[str, int], int]:
    return {**{("double", n): 1 for n in range(double)}, **{("single", n): 1 for n in range(single)}}


def _two_stream(name: str, model, **layout) -> Architecture:
    """Flux-like models: double-stream blocks, then single-stream blocks over the joint sequence."""
    return Architecture(name, _numbered(len(model.double_blocks), len(model.single_blocks)), **layout)


def _patch(model, spatial_only: bool) -> tuple[int, ...]:
    patch = model.patch_size
    patch = tuple(patch) if isinstance(patch, (tuple, list)) else (patch, patch)
    return patch[-2:] if spatial_only else patch


_KNOWN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # diffusion model → its Architecture


def architecture_of(model_patcher) -> Architecture:
    """The loaded model's architecture (read once per diffusion model: every sampling step asks); refuses models
    perturbation guidance cannot reach, naming those it can."""
    model = model_patcher.get_model_object("diffusion_model")
    if model not in _KNOWN:
        _KNOWN[model] = _read(model)
    return _KNOWN[model]


def _read(model) -> Architecture:
    if isinstance(model, UNetModel):
        return _unet(model)
    families = (
        ("comfy.ldm.modules.diffusionmodules.mmdit", "MMDiT",
         lambda m: Architecture("SD3 MMDiT", _numbered(len(m.joint_blocks)), patch=_patch(m, True))),
        ("comfy.ldm.chroma.model", "Chroma", lambda m: _two_stream("Chroma", m, patch=_patch(m, True))),
        ("comfy.ldm.flux.model", "Flux", lambda m: _two_stream("Flux", m, patch=_patch(m, True))),
        # 0.3.75 orders HunyuanVideo's tokens [image, text]; later versions [text, image], as Flux does.
        ("comfy.ldm.hunyuan_video.model", "HunyuanVideo",
         lambda m: _two_stream("HunyuanVideo", m, refs_first=True, patch=_patch(m, False), text_first=not any(
             getattr(block, "flipped_img_txt", False) for block in m.double_blocks))),
        ("comfy.ldm.wan.model", "WanModel",
         lambda m: Architecture("Wan", _numbered(len(m.blocks)), joint=False, refs_first=True, patch=_patch(m, False))),
        ("comfy.ldm.qwen_image.model", "QwenImageTransformer2DModel",
         lambda m: Architecture("Qwen-Image", _numbered(len(m.transformer_blocks)),
                                patch=(1, m.patch_size, m.patch_size))),
        # Its layers attend once each, after the caption and noise refiners' one call each, over [caption, image].
        ("comfy.ldm.lumina.model", "NextDiT",
         lambda m: Architecture("Lumina 2", _numbered(len(m.layers)), patch=(m.patch_size, m.patch_size),
                                counted_from=len(m.context_refiner) + len(m.noise_refiner))),
    )
    for module, class_name, build in families:
        cls = _class(module, class_name)
        if cls is not None and isinstance(model, cls):
            return build(model)
    raise ValueError(f"this model's diffusion model is {type(model).__name__}; perturbation guidance works on "
                     f"{', '.join(SUPPORTED)}. Refusing instead of silently doing nothing.")
