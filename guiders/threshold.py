"""Dynamic thresholding of the guided x0.

`imagen`: Saharia et al., "Photorealistic Text-to-Image Diffusion Models with Deep Language Understanding",
https://arxiv.org/abs/2205.11487 — per sample, s = max(1, quantile(|x0|, p)), x0 ← clamp(x0, −s, s) / s (p = 0.995).
Made for pixel space in [−1, 1].

`latent`: the mimic-scale variant for latent models (mcmonkey's "Dynamic Thresholding", MIT) — guide at the high
scale, then rescale each (sample, channel) so its spread matches the result of a lower "mimic" scale. Defaults there:
mimic 7, percentile 1.0, MEAN start point, AD variability, φ 1. Here every statistic is per (sample, channel), or
with `separate_feature_channels` off per sample over all its channels (never across the batch as there), so images in
a batch never influence each other; a channel (or image) without spread — judged by its largest deviation from the
mean, not by the percentile — is left as it is instead of being divided by zero or by rounding residue. The mimic
scale can follow a schedule over the run (mcmonkey's `mimic_mode` / `mimic_scale_min`, curves of guiders/schedule.py).

The percentile: with MEAN + AD it is where the guided spread is clamped before rescaling (any p in 0–1 is sane: a small
p clamps at the mimic's largest deviation). With ZERO + AD the values are scaled by the ratio of the mimic's and the
guided p-quantiles of |x − mean| — the same statistic on both sides (at p = 1, the default, both are the max as in
mcmonkey's; there the mimic side is always the max, which at p ≈ 0 scales by ~10⁵). Below the median such quantiles
measure rounding noise, so ZERO + AD refuses p < ZERO_MIN_PERCENTILE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .schedule import ScaleSchedule

MODES = ("latent", "imagen")
STARTPOINTS = ("MEAN", "ZERO")
VARIABILITIES = ("AD", "STD")


AUTO_PERCENTILE = -1.0  # the percentile each mode's source uses (below): new nodes get it, saved ones keep theirs
DEFAULT_PERCENTILE = {"latent": 1.0, "imagen": 0.995}
ZERO_MIN_PERCENTILE = 0.5


@dataclass(frozen=True)
class DynamicThreshold:
    mode: str = "latent"
    mimic_scale: float = 7.0
    threshold_percentile: float = AUTO_PERCENTILE
    startpoint: str = "MEAN"
    variability: str = "AD"
    interpolate_phi: float = 1.0
    mimic_schedule: ScaleSchedule = ScaleSchedule()  # constant: mimic_scale at every step
    separate_feature_channels: bool = True

    @property
    def percentile(self) -> float:
        """The percentile in use: the one set, or for AUTO_PERCENTILE the mode's own (1.0 latent, 0.995 imagen)."""
        return DEFAULT_PERCENTILE[self.mode] if self.threshold_percentile == AUTO_PERCENTILE \
            else self.threshold_percentile


def settings_problem(mode: str, threshold_percentile: float, startpoint: str, variability: str) -> str | None:
    """Why these settings cannot run ("input '…' …"), or None."""
    if threshold_percentile != AUTO_PERCENTILE and not 0.0 <= threshold_percentile <= 1.0:
        return (f"input 'threshold_percentile' ({threshold_percentile}) is outside 0.0–1.0 (or -1 for the mode's "
                "default: 1.0 latent, 0.995 imagen)")
    if mode == "latent" and startpoint == "ZERO" and variability == "AD" \
            and threshold_percentile != AUTO_PERCENTILE and threshold_percentile < ZERO_MIN_PERCENTILE:
        return (f"input 'threshold_percentile' ({threshold_percentile}) is below {ZERO_MIN_PERCENTILE} with "
                "startpoint ZERO and variability AD, where it scales by a ratio of p-quantiles that below the median "
                f"measures rounding noise; use {ZERO_MIN_PERCENTILE}–1.0, or startpoint MEAN (any 0.0–1.0 clamps "
                "there)")
    return None


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
    """Rescale `guided` (CFG at the real scale) per (sample, channel) — or per sample with separate_feature_channels
    off — to the spread of `mimic` (CFG at the mimic scale)."""
    cfg_flat = guided.flatten(2).float()
    mim_flat = mimic.flatten(2).float()
    cfg_mean = cfg_flat.mean(dim=2, keepdim=True)
    cfg_centred = cfg_flat - cfg_mean
    mim_centred = mim_flat - mim_flat.mean(dim=2, keepdim=True)
    # Every statistic below is taken over the last dim of a pooled view: [B, C, N] per channel, [B, 1, C·N] per image.
    pooled = _per_channel if settings.separate_feature_channels else _per_image
    cfg_pool, mim_pool = pooled(cfg_centred), pooled(mim_centred)
    if settings.variability == "STD":
        mim_ref = _std(mim_pool)
        cfg_ref = _std(cfg_pool)
    else:
        p = settings.percentile
        mim_max = mim_pool.abs().amax(dim=2, keepdim=True)
        mim_ref = torch.quantile(mim_pool.abs(), p, dim=2, keepdim=True) if settings.startpoint == "ZERO" else mim_max
        cfg_ref = torch.quantile(cfg_pool.abs(), p, dim=2, keepdim=True)

    if settings.startpoint == "ZERO":
        # A channel whose guided p-quantile is 0 (over half its values at the mean) has no ratio to scale by: kept.
        result = cfg_flat * torch.where(cfg_ref > 0, mim_ref / _nonzero(cfg_ref), 1.0)
    elif settings.variability == "STD":
        result = cfg_centred / _nonzero(cfg_ref) * mim_ref + cfg_mean
    else:
        limit = torch.maximum(mim_ref, cfg_ref)
        result = cfg_centred.clamp(-limit, limit) / _nonzero(limit) * mim_ref + cfg_mean
    spread = cfg_pool.abs().amax(dim=2, keepdim=True)
    flat = spread <= FLAT * pooled(cfg_flat).abs().amax(dim=2, keepdim=True)
    result = torch.where(flat, cfg_flat, result)

    result = result.unflatten(2, guided.shape[2:]).to(guided.dtype)
    if settings.interpolate_phi != 1.0:
        result = result * settings.interpolate_phi + guided * (1.0 - settings.interpolate_phi)
    return result


def _per_channel(flat: torch.Tensor) -> torch.Tensor:
    return flat


def _per_image(flat: torch.Tensor) -> torch.Tensor:
    return flat.flatten(1).unsqueeze(1)


def imagen_threshold(x0: torch.Tensor, percentile: float = 0.995) -> torch.Tensor:
    """Imagen's dynamic thresholding, per sample: clamp to ±s and divide by s, s = max(1, quantile(|x0|, p))."""
    s = torch.quantile(x0.flatten(1).abs().float(), percentile, dim=1).clamp(min=1.0).to(x0.dtype)
    s = s.view(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s
