"""Perturbed-attention guidance — Ahn et al., "Self-Rectifying Diffusion Sampling with Perturbed-Attention Guidance",
https://arxiv.org/abs/2403.17377 (ECCV 2024).

The cond is run a second time with the self-attention map of chosen layers replaced by the identity
(`attention(q, k, v) = v`), and the guided x0 moves away from that degraded prediction: `D += s_p·(D_c − D̂_c)`.
Defaults: s_p = 3.0 on the SD1.5/SDXL middle block; the paper pairs it with CFG 4.0.

In MMDiT (SD3) joint blocks text and image tokens attend over one sequence [text, image]; an identity map there would
also cut the image off from the text. So only the image queries are perturbed (each image token keeps its own value),
and the text queries attend as usual.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .schedule import progress

BLOCK_KINDS = ("input", "middle", "output", "joint")  # UNet blocks; MMDiT joint blocks
Block = tuple[str, int, int | None]  # (kind, block number, transformer index or None for all)


def parse_blocks(text: str) -> tuple[Block, ...]:
    """Blocks from "input.4, middle.0, output.1.0" or "joint.12": kind.number[.transformer_index]."""
    blocks = []
    for position, token in enumerate((t for t in re.split(r"[\s,;]+", text.strip()) if t), start=1):
        match = re.fullmatch(r"(input|middle|output|joint)\.(\d+)(?:\.(\d+))?", token)
        if match is None or (match.group(1) == "joint" and match.group(3) is not None):
            raise ValueError(f"block {position} ({token!r}) is not kind.number[.transformer], e.g. middle.0, "
                             "output.1.0 or joint.12, with kind one of input, middle, output (UNet) or joint (MMDiT)")
        kind, number, transformer = match.groups()
        blocks.append((kind, int(number), None if transformer is None else int(transformer)))
    if not blocks:
        raise ValueError("no blocks given; the usual choice is middle.0")
    return tuple(dict.fromkeys(blocks))


def format_block(block: Block) -> str:
    kind, number, transformer = block
    return f"{kind}.{number}" + ("" if transformer is None else f".{transformer}")


@dataclass(frozen=True)
class PerturbedAttention:
    scale: float = 3.0
    blocks: tuple[Block, ...] = (("middle", 0, None),)
    start_percent: float = 0.0
    end_percent: float = 1.0

    def active(self, step: int, steps: int) -> bool:
        """Whether the perturbed branch is computed at this step: inside the window and with a non-zero scale."""
        return self.scale != 0 and self.start_percent <= progress(step, steps) <= self.end_percent


def identity_attention(v: torch.Tensor) -> torch.Tensor:
    """The perturbed self-attention: an identity attention map returns the values unchanged."""
    return v


def perturb_image_queries(attention_out: torch.Tensor, v: torch.Tensor, image_tokens: int) -> torch.Tensor:
    """Joint attention [batch, tokens, channels] over [text, image] with identity attention for the image queries:
    the last `image_tokens` outputs become their own values; the text outputs stay as computed."""
    out = attention_out.clone()
    out[:, -image_tokens:] = v[:, -image_tokens:]
    return out


def pag_term(denoised_cond: torch.Tensor, denoised_perturbed: torch.Tensor, scale: float) -> torch.Tensor:
    """`s_p·(D_c − D̂_c)`, added to the guided x0."""
    return (denoised_cond - denoised_perturbed) * scale
