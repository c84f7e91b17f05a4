"""Perturbation guidance: steer away from the prediction of a deliberately weakened copy of the model.

A perturbation re-runs the cond with chosen blocks degraded — attention replaced by the identity (PAG, guiders/pag.py),
queries blurred (SEG, guiders/seg.py) or whole blocks skipped (skip-layer guidance, guiders/skip_layer.py) — and the
guided x0 moves away from that prediction: `D += s·(D_c − D̂_c)`. Each perturbation is one branch of the step's
batched call, with its own scale, blocks and window. Options the field relies on:

- window: `σ_low ≤ σ ≤ σ_high` (inclusive, as core's SkipLayerGuidanceDiT; the node converts ComfyUI's
  start/end percent with the model's own `percent_to_sigma`, as core does);
- adaptive scale (pamparamm's sd-perturbed-attention): `s_t = max(0, s·(1 − a⁴·(1000 − t)))` with t the model's
  timestep on a 0–1000 scale, fading the term out towards the end of the run; a = 0 leaves s constant;
- rescale (core SkipLayerGuidanceDiT, after Lin et al., https://arxiv.org/abs/2305.08891): after adding the term,
  `D ← D·(r·std(D_c)/std(D) + 1 − r)`, with the standard deviations taken per image (core takes them over the batch).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

KINDS = ("pag", "seg", "skip")
Block = tuple[str, int, int | None]  # (kind, block number, transformer index (UNet) or None for all)
_BLOCK = re.compile(r"(input|middle|output|double|single|joint)\.(\d+)(?:-(\d+))?(?:\.(\d+))?")


def parse_blocks(text: str) -> tuple[Block, ...]:
    """Blocks from "input.4, middle.0, output.1.0", "double.7-9, single.12" or SD3's "joint.12" (= double.12).

    `kind.N-M` is the range N…M; a transformer index (`.i`) is for UNet blocks only."""
    blocks: list[Block] = []
    for position, token in enumerate((t for t in re.split(r"[\s,;]+", text.strip()) if t), start=1):
        match = _BLOCK.fullmatch(token)
        dit = match is not None and match[1] in ("double", "single", "joint")
        if match is None or (dit and match[4] is not None) or (match[3] is not None and int(match[3]) < int(match[2])):
            raise ValueError(f"block {position} ({token!r}) is not kind.number[.transformer] or kind.first-last, e.g. "
                             "middle.0, output.1.0, double.7-9 or single.12, with kind one of input, middle, output "
                             "(UNet) or double, single (DiT; joint = double)")
        kind = "double" if match[1] == "joint" else match[1]
        last = int(match[3]) if match[3] is not None else int(match[2])
        transformer = None if match[4] is None else int(match[4])
        blocks += [(kind, number, transformer) for number in range(int(match[2]), last + 1)]
    if not blocks:
        raise ValueError("no blocks given")
    return tuple(dict.fromkeys(blocks))


def format_block(block: Block) -> str:
    kind, number, transformer = block
    return f"{kind}.{number}" + ("" if transformer is None else f".{transformer}")


@dataclass(frozen=True)
class Perturbation:
    """One perturbed branch: its kind, scale, blocks, window and options (see the module docstring)."""

    kind: str = "pag"
    scale: float = 3.0
    blocks: tuple[Block, ...] = (("middle", 0, None),)
    sigma_high: float = math.inf
    sigma_low: float = 0.0
    adaptive_scale: float = 0.0
    rescale: float = 0.0
    blur_sigma: float = math.inf  # SEG only: the query blur's Gaussian σ in tokens; inf = uniform attention

    def scale_at(self, timestep: float) -> float:
        """The scale at model timestep `timestep` (0–1000 scale): adaptive fading, never below 0."""
        if self.adaptive_scale == 0:
            return self.scale
        return max(0.0, self.scale * (1.0 - self.adaptive_scale ** 4 * (1000.0 - timestep)))

    def active(self, sigma: float, timestep: float = 1000.0) -> bool:
        """Whether this branch is computed at `sigma`: inside the window and with a non-zero (faded) scale."""
        return self.sigma_low <= sigma <= self.sigma_high and self.scale_at(timestep) != 0


def perturbation_term(denoised_cond: torch.Tensor, denoised_perturbed: torch.Tensor, scale: float) -> torch.Tensor:
    """`s·(D_c − D̂_c)`, added to the guided x0."""
    return (denoised_cond - denoised_perturbed) * scale


def rescaled(guided: torch.Tensor, denoised_cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """`D·(r·std(D_c)/std(D) + 1 − r)` per image (rows of a batch never influence each other); r = 0 returns D."""
    if rescale == 0:
        return guided
    dims = tuple(range(1, guided.ndim))
    ratio = denoised_cond.float().std(dim=dims, keepdim=True) / guided.float().std(dim=dims, keepdim=True)
    # A constant prediction has no spread to match: leave it as it is rather than divide by zero.
    ratio = torch.where(torch.isfinite(ratio), ratio, torch.ones_like(ratio))
    return guided * (rescale * ratio + (1.0 - rescale)).to(guided.dtype)
