"""Dynamic thresholding of the guided x0.

`imagen`: Saharia et al., "Photorealistic Text-to-Image Diffusion Models with Deep Language Understanding",
https://arxiv.org/abs/2205.11487 — per sample, s = max(1, quantile(|x0|, p)), x0 ← clamp(x0, −s, s) / s (p = 0.995).
Made for pixel space in [−1, 1].

`latent`: the mimic-scale variant for latent models (mcmonkey's "Dynamic Thresholding", MIT) — guide at the high
scale, then rescale each (sample, channel) so its spread matches the result of a lower "mimic" scale. Defaults there:
mimic 7, percentile 1.0, MEAN start point, AD variability, φ 1. Here every statistic is per (sample, channel), so
images in a batch never influence each other, and a channel without spread (flat up to float rounding) is left as it
is instead of being divided by zero or by rounding residue.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MODES = ("latent", "imagen")
STARTPOINTS = ("MEAN", "ZERO")
VARIABILITIES = ("AD", "STD")


@dataclass(frozen=True)
class DynamicThreshold:
    mode: str = "latent"
    mimic_scale: float = 7.0
    threshold_percentile: float = 1.0
    startpoint: str = "MEAN"
    variability: str = "AD"
    interpolate_phi: float = 1.0


def _nonzero(denominator: torch.Tensor) -> torch.Tensor:
    """The denominator with zeros replaced by 1 (those channels are flat and get replaced afterwards)."""
    return torch.where(denominator > 0, denominator, torch.ones_like(denominator))


def _std(centred: torch.Tensor) -> torch.Tensor:
    """Sample standard deviation over the last dim; 0 (a flat channel) where it holds a single element."""
    if centred.shape[2] < 2:
        return torch.zeros_like(centred[..., :1])
    return centred.std(dim=2, keepdim=True)


FLAT = 1e-6  # a spread below this fraction of a channel's largest |value| is rounding residue, not spread


def mimic_threshold(guided: torch.Tensor, mimic: torch.Tensor, settings: DynamicThreshold) -> torch.Tensor:
    """Rescale `guided` (CFG at the real scale) per (sample, channel) to the spread of `mimic` (CFG at mimic_scale)."""
    cfg_flat = guided.flatten(2).float()
    mim_flat = mimic.flatten(2).float()
    cfg_mean = cfg_flat.mean(dim=2, keepdim=True)
    cfg_centred = cfg_flat - cfg_mean
    mim_centred = mim_flat - mim_flat.mean(dim=2, keepdim=True)
    if settings.variability == "STD":
        mim_ref = _std(mim_centred)
        cfg_ref = _std(cfg_centred)
    else:
        mim_ref = mim_centred.abs().amax(dim=2, keepdim=True)
        cfg_ref = torch.quantile(cfg_centred.abs(), settings.threshold_percentile, dim=2, keepdim=True)

    if settings.startpoint == "ZERO":
        result = cfg_flat * (mim_ref / _nonzero(cfg_ref))
    elif settings.variability == "STD":
        result = cfg_centred / _nonzero(cfg_ref) * mim_ref + cfg_mean
    else:
        limit = torch.maximum(mim_ref, cfg_ref)
        result = cfg_centred.clamp(-limit, limit) / _nonzero(limit) * mim_ref + cfg_mean
    flat = cfg_ref <= FLAT * cfg_flat.abs().amax(dim=2, keepdim=True)
    result = torch.where(flat, cfg_flat, result)

    result = result.unflatten(2, guided.shape[2:]).to(guided.dtype)
    if settings.interpolate_phi != 1.0:
        result = result * settings.interpolate_phi + guided * (1.0 - settings.interpolate_phi)
    return result


def imagen_threshold(x0: torch.Tensor, percentile: float = 0.995) -> torch.Tensor:
    """Imagen's dynamic thresholding, per sample: clamp to ±s and divide by s, s = max(1, quantile(|x0|, p))."""
    s = torch.quantile(x0.flatten(1).abs().float(), percentile, dim=1).clamp(min=1.0).to(x0.dtype)
    s = s.view(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s
