"""Skip-layer guidance — the perturbation behind core's SkipLayerGuidanceDiT / SkipLayerGuidanceSD3 (Stability AI's
SD3.5 reference sampler: scale 3.0, layers 7, 8, 9, from 1 % to 20 % of the run) and Spatiotemporal Skip Guidance
for video (Hyung et al., https://arxiv.org/abs/2411.18664).

The perturbed rows pass chosen transformer blocks through unchanged — the block's output is its input — and the
guided x0 moves away from that prediction (guiders/perturbation.py). The other rows run the block as usual.
"""

from __future__ import annotations

import torch


def skip_rows(block_input: torch.Tensor, block_output: torch.Tensor, skipped: torch.Tensor) -> torch.Tensor:
    """`block_output` with the rows where `skipped` (bool per row) is set replaced by `block_input`."""
    mask = skipped.to(block_output.device).view(-1, *([1] * (block_output.ndim - 1)))
    return torch.where(mask, block_input.to(block_output.dtype), block_output)
