"""The methods as their reference code writes them, in pure torch (for the engine tests and testbed/perturbations.py):

- SEG's query blur (github.com/SusungHong/SEG-SDXL, pipeline_seg.py): a 2-D Gaussian kernel (outer product,
  `ceil(6σ)+1` taps made odd, cut to the image as that code cuts it), reflect padding and one `conv2d`, per frame;
  σ = ∞: the mean query;
- PAG on joint text–image attention (diffusers' `PAGJointAttnProcessor2_0`): an additive mask, −inf on the
  image×image block except its diagonal, through torch's scaled_dot_product_attention."""

from __future__ import annotations

import math

import torch


def seg_kernel(sigma: float, side: int) -> torch.Tensor:
    size = math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2
    size = min(size, side - (side % 2 - 1))
    half = (size - 1) * 0.5
    x = torch.linspace(-half, half, steps=size, dtype=torch.float64)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    kernel = pdf / pdf.sum()
    return torch.mm(kernel[:, None], kernel[None, :])


def seg_blur(q: torch.Tensor, grid: tuple[int, ...], sigma: float) -> torch.Tensor:
    """Image queries [..., tokens, dim] on `grid` ((frames,) h, w), blurred per frame as the SEG reference code does
    (square kernels: the test grids are square)."""
    height, width = grid[-2:]
    frames = math.prod(grid[:-2])
    shape = q.shape
    x = q.reshape(-1, frames, height, width, shape[-1]).permute(0, 1, 4, 2, 3).reshape(-1, shape[-1], height, width)
    if sigma == math.inf:
        x = x.mean(dim=(-2, -1), keepdim=True).expand_as(x)
    else:
        kernel = seg_kernel(sigma, width).to(x.dtype)
        pad = kernel.shape[0] // 2
        x = torch.nn.functional.pad(x, [pad] * 4, mode="reflect")
        x = torch.nn.functional.conv2d(x, kernel.expand(shape[-1], 1, *kernel.shape).contiguous(), groups=shape[-1])
    return x.reshape(-1, frames, shape[-1], height, width).permute(0, 1, 3, 4, 2).reshape(shape)


def joint_pag(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, image: slice) -> torch.Tensor:
    """Attention [batch, heads, tokens, dim] where each image query attends to the text and to itself only."""
    length = q.shape[-2]
    mask = torch.zeros(length, length)
    mask[image, image] = float("-inf")
    mask[image, image].fill_diagonal_(0)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
