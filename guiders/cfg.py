"""Classifier-free guidance — Ho & Salimans, https://arxiv.org/abs/2207.12598."""

from __future__ import annotations

import torch


def cfg(denoised_cond: torch.Tensor, denoised_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Guided x0 `D = D_u + s·(D_c − D_u)`.

    `scale` follows ComfyUI's convention (s = 1: no guidance, the cond alone; s = 0: the uncond alone); the paper
    writes w = s − 1. The operation order is ComfyUI's own, so results are bit-identical to core CFG, except at
    s = 1, where `D_u + (D_c − D_u)` would round away from `D_c`: there the cond is returned exactly.
    """
    if scale == 1.0:
        return denoised_cond.clone()
    return denoised_uncond + (denoised_cond - denoised_uncond) * scale
