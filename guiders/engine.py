"""The step engine: which branches one model evaluation needs, and how their x0 predictions combine.

Branches are the model inputs of one evaluation: the cond always; the uncond only where guidance changes the
result. Combination order (documented once, applied everywhere): CFG at the step's scale.
"""

from __future__ import annotations

import math

import torch

from .cfg import cfg


def needs_uncond(scale: float, keep_uncond: bool = False) -> bool:
    """Whether the uncond branch must be computed: not at scale 1, where CFG collapses to the cond.

    `keep_uncond` forces it (ComfyUI's `disable_cfg1_optimization`, set by samplers that renoise with the uncond).
    """
    return keep_uncond or not math.isclose(scale, 1.0)


def combine(denoised_cond: torch.Tensor, denoised_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """The guided x0 of one evaluation from its branch outputs."""
    return cfg(denoised_cond, denoised_uncond, scale)
