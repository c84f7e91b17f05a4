"""The exact mixture denoiser as a real ComfyUI diffusion model (call `testbed.comfy.import_comfy()` first).

`mixture_model("eps" | "flow")` is a ModelPatcher over a `comfy.model_base.BaseModel` whose `diffusion_model`
returns the exact prediction (ε for EPS, velocity for CONST flow) of `bench.quality.mixture`: every ComfyUI sampler,
guider, model patch and wrapper runs on it unchanged. The class is carried in the cross-attention conditioning:
`class_conditioning(k)` is a one-token tensor with a one-hot class vector, `empty_conditioning()` an all-zero one
(the whole mixture, as condition dropout trains the empty prompt). A per-row class list gives every image of a batch
its own class.

The network has one trainable layer, `shift` (a comfy.ops Linear from [class weights, 1] to the latent, no bias,
zero at init): it adds nothing until trained, so the output is the exact denoiser; a LoRA on it (TrainLoraNode
adapts every comfy.ops layer) moves the conditional (class columns) and the unconditional (constant column)
predictions of x0.
"""

from __future__ import annotations

import math
from typing import Any

import comfy.latent_formats
import comfy.model_base
import comfy.model_patcher
import comfy.model_sampling
import comfy.supported_models_base
import torch

from .mixture import LATENT_SHAPE, Mixture, default_mixture, one_hot

KINDS = {"eps": comfy.model_base.ModelType.EPS, "flow": comfy.model_base.ModelType.FLOW}
FLOW_SHIFT = 3.0  # SD3's


class MixtureLatent(comfy.latent_formats.LatentFormat):
    latent_channels = LATENT_SHAPE[0]  # scale 1, shift 0: the sampler's latent is the mixture's space


class MixtureDenoiser(torch.nn.Module):
    """ComfyUI diffusion-model signature `(x, timestep, context, ...)`; returns the exact model output."""

    def __init__(self, mixture: Mixture, device=None, operations=None, dtype=None, **_unet_config: Any):
        super().__init__()
        self.mixture = mixture
        self.dtype = dtype or torch.float32
        k = mixture.num_classes
        self.shift = operations.Linear(k + 1, mixture.dim, bias=False, device=device, dtype=self.dtype)
        self.sampling = None  # set by MixtureModel: the owner's model_sampling, looked up at each call

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None,
                **_kwargs: Any) -> torch.Tensor:
        sampling = self.sampling()
        # detached: TrainLoraNode sends timesteps that require grad; the closed form needs none (and unique has none)
        sigma = _sigma(sampling, timesteps.detach().to(torch.float64)).reshape(-1, 1)
        if isinstance(sampling, comfy.model_sampling.CONST):
            alpha, noisy = 1 - sigma, x.to(torch.float64)
        else:  # EPS: ComfyUI feeds x / sqrt(σ² + σ_data²)
            alpha = torch.ones_like(sigma)
            noisy = x.to(torch.float64) * (sigma**2 + sampling.sigma_data**2).reshape(-1, *[1] * (x.ndim - 1)).sqrt()
        k = self.mixture.num_classes
        weights = (torch.zeros(x.shape[0], k, dtype=torch.float64) if context is None
                   else context[:, 0, :k].to(torch.float64))
        denoised = self.mixture.denoise(noisy, sigma, weights, alpha)
        features = torch.cat([weights, torch.ones_like(weights[:, :1])], 1).to(self.shift.weight.dtype)
        denoised = denoised + self.shift(features).reshape(x.shape).to(torch.float64)
        sigma = sigma.reshape(-1, *[1] * (x.ndim - 1))
        return ((noisy - denoised) / sigma).to(x.dtype)  # denoised = x − σ·output, for EPS and CONST alike


class ContinuousDiscreteEPS(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
    """SD1.5's discrete EPS schedule with a continuous timestep: ComfyUI's `timestep(σ)` rounds to the nearest of
    1000 integer steps (up to 3 % off in σ near σ_min), which a network conditioned on t cannot undo. Here t is the
    exact inverse of `sigma(t)` (log-linear between the integer steps), so the exact denoiser sees the exact σ.
    Schedules, σ_min/σ_max and every sampler are unchanged."""

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigmas = self.log_sigmas.to(torch.float64)
        log_sigma = sigma.to(torch.float64).log().clamp(log_sigmas[0], log_sigmas[-1]).to(log_sigmas.device)
        high = torch.searchsorted(log_sigmas, log_sigma).clamp(1, len(log_sigmas) - 1)
        low = high - 1
        w = (log_sigma - log_sigmas[low]) / (log_sigmas[high] - log_sigmas[low])
        return (low + w).to(sigma.device, sigma.dtype if sigma.is_floating_point() else torch.float32)


def _sigma(sampling, timesteps: torch.Tensor) -> torch.Tensor:
    """σ from the timestep ComfyUI computed with `sampling.timestep(σ)`. Discrete flow's timestep is σ·multiplier
    (its `sigma()` maps the unshifted time, so it is no inverse); the discrete EPS one inverts `sigma()` (exactly
    with `ContinuousDiscreteEPS`, to ComfyUI's integer rounding with a model_sampling patched in by a node)."""
    if isinstance(sampling, comfy.model_sampling.ModelSamplingDiscreteFlow):
        return timesteps / sampling.multiplier
    return sampling.sigma(timesteps)


class MixtureModel(comfy.model_base.BaseModel):
    """A BaseModel over `MixtureDenoiser`; its network reads the (possibly patched) model_sampling at each call."""

    def __init__(self, model_config, model_type, device=None):
        super().__init__(model_config, model_type, device=device, unet_model=MixtureDenoiser)
        if model_type == comfy.model_base.ModelType.EPS:
            self.model_sampling = ContinuousDiscreteEPS(model_config)
        self.diffusion_model.sampling = lambda: self.model_sampling


class MixtureConfig(comfy.supported_models_base.BASE):
    latent_format = MixtureLatent
    unet_extra_config: dict[str, Any] = {}
    memory_usage_factor = 0.01


def mixture_model(kind: str = "eps", mixture: Mixture | None = None) -> comfy.model_patcher.ModelPatcher:
    """A ModelPatcher (CPU, fp32) over the exact denoiser of `mixture` (default: `default_mixture()`); `kind` is
    "eps" (SD1.5's discrete schedule) or "flow" (rectified flow, shift 3 as SD3)."""
    if kind not in KINDS:
        raise ValueError(f"mixture model kind must be one of {sorted(KINDS)}, got {kind!r}")
    config = MixtureConfig({"mixture": mixture or default_mixture()})
    if kind == "flow":
        config.sampling_settings = {"shift": FLOW_SHIFT, "multiplier": 1000}
    config.set_inference_dtype(torch.float32, None)
    cpu = torch.device("cpu")
    model = MixtureModel(config, KINDS[kind], device=cpu)
    torch.nn.init.zeros_(model.diffusion_model.shift.weight)
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def mixture_of(model: comfy.model_patcher.ModelPatcher) -> Mixture:
    return model.model.diffusion_model.mixture


def class_conditioning(classes: int | list[int], num_classes: int | None = None) -> list:
    """CONDITIONING for class k (one int: the same for every image) or one class per image of the batch."""
    num_classes = num_classes or default_mixture().num_classes
    rows = [classes] if isinstance(classes, int) else list(classes)
    return [[one_hot(rows, num_classes).to(torch.float32)[:, None, :], {}]]


def empty_conditioning(batch: int = 1, num_classes: int | None = None) -> list:
    """CONDITIONING of the empty prompt: the whole mixture (all-zero class weights)."""
    num_classes = num_classes or default_mixture().num_classes
    return [[torch.zeros(batch, 1, num_classes), {}]]


def empty_latent(batch: int) -> torch.Tensor:
    return torch.zeros(batch, *LATENT_SHAPE)


def flat(latent: torch.Tensor) -> torch.Tensor:
    """Sampled latents [B, C, H, W] as mixture rows [B, d] (float64)."""
    return latent.reshape(latent.shape[0], math.prod(LATENT_SHAPE)).to(torch.float64)
