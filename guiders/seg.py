"""Smoothed Energy Guidance — Hong, "Smoothed Energy Guidance: Guiding Diffusion Models with Reduced Energy Curvature
of Attention", https://arxiv.org/abs/2408.00760 (NeurIPS 2024); reference code github.com/SusungHong/SEG-SDXL.

Blurring the self-attention *queries* of the image tokens with a 2-D Gaussian of standard deviation σ (in tokens)
blurs the attention weights without computing them; σ = ∞ makes every query the mean query (uniform attention).
The guided x0 then moves away from that smoothed prediction (guiders/perturbation.py). Defaults from the paper's
code: scale 3.0, the middle block of SDXL, σ = 100 (or ∞); it suggests trying σ exponentially (1, 4, 16, …).

As in the reference code the kernel has `ceil(6σ) + 1` taps (made odd) and reflect padding; it is cut to the grid
(at most the largest odd number ≤ side + 1) so that reflection stays valid on small grids. Video latents are blurred
per frame, in space only. Text queries of joint attention are left as they are.
"""

from __future__ import annotations

import math

import torch

INFINITE_BLUR = 9999.0  # the reference code's threshold: σ above it is ∞


def _kernel(sigma: float, side: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    size = math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2
    size = min(size, side + 1 - side % 2)  # the largest odd number ≤ side + 1, as the reference code
    half = (size - 1) / 2
    x = torch.linspace(-half, half, steps=size, dtype=torch.float64)
    pdf = torch.exp(-0.5 * (x / sigma) ** 2)
    return (pdf / pdf.sum()).to(dtype=dtype, device=device)


def blur_queries(q: torch.Tensor, grid: tuple[int, ...], sigma: float) -> torch.Tensor:
    """Queries `[..., tokens, dim]` whose tokens are the image grid `(frames, height, width)` (or `(height, width)`),
    row-major, blurred over height and width with a Gaussian of `sigma` tokens (σ > 9999 or inf: the mean query)."""
    height, width = grid[-2:]
    frames = math.prod(grid[:-2])
    lead, dim = q.shape[:-2], q.shape[-1]
    x = q.reshape(-1, frames, height, width, dim)
    if sigma > INFINITE_BLUR:
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).reshape(q.shape)
    x = x.permute(0, 1, 4, 2, 3).reshape(-1, 1, height, width)  # one channel per (sample, frame, feature)
    for axis, side in ((2, height), (3, width)):
        kernel = _kernel(sigma, side, x.dtype, x.device)
        pad = kernel.shape[0] // 2
        if pad == 0:
            continue
        shape = (1, 1, -1, 1) if axis == 2 else (1, 1, 1, -1)
        padding = (0, 0, pad, pad) if axis == 2 else (pad, pad, 0, 0)
        x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, padding, mode="reflect"), kernel.view(shape))
    x = x.reshape(-1, frames, dim, height, width).permute(0, 1, 3, 4, 2)
    return x.reshape(*lead, frames * height * width, dim)
