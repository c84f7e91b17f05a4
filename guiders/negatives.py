"""Extra negative prompts next to the main negative.

subtract: `D = D_u + s(D_c − D_u) − w·(D_n − D_u)`.
perpendicular (Perp-Neg, Armandpour et al., https://arxiv.org/abs/2304.04968): only the component of `(D_n − D_u)`
orthogonal to `(D_c − D_u)` is subtracted, per sample, so the negative cannot cancel what the positive asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

MODES = ("subtract", "perpendicular")


@dataclass(frozen=True, eq=False)
class ExtraNegative:
    """One extra negative: its conditioning (opaque here, the adapter's), weight and mode."""

    conditioning: Any
    scale: float = 1.0
    mode: str = "subtract"


def negative_direction(denoised_negative: torch.Tensor, denoised_uncond: torch.Tensor,
                       denoised_cond: torch.Tensor, mode: str) -> torch.Tensor:
    """The direction to subtract for one negative: `D_n − D_u`, or its part orthogonal to `D_c − D_u`."""
    away = denoised_negative - denoised_uncond
    if mode == "subtract":
        return away
    # Reduced in float32: half-precision sums over a large latent overflow to inf (and inf/inf to NaN).
    toward = (denoised_cond - denoised_uncond).flatten(1).float()
    flat = away.flatten(1).float()
    norm2 = (toward * toward).sum(dim=1, keepdim=True)
    coefficient = torch.where(norm2 > 0, (flat * toward).sum(dim=1, keepdim=True) / norm2.clamp(min=1e-30),
                              torch.zeros_like(norm2))
    return (flat - coefficient * toward).to(away.dtype).view_as(away)
