"""CFG++ — Chung et al., "CFG++: Manifold-constrained Classifier Free Guidance for Diffusion Models",
https://arxiv.org/abs/2406.08070.

Denoise with the guided x0 `D_λ = D_u + λ·(D_c − D_u)` but renoise with the unconditional noise
`(x_s − α_s·D_u)/σ_s`. The steps hold on any noising path `x = α·x0 + σ·n` (α = 1 for EPS/V models, α = 1 − σ for
flow models), written with the half-log-SNR `λ_s = log(α_s/σ_s)` and `h = λ_t − λ_s` of DPM-Solver++ (Lu et al.,
https://arxiv.org/abs/2211.01095); a subscripted λ is always a half-log-SNR, the bare λ of D_λ the guidance scale.

With α = 1 each step is, formula for formula, ComfyUI's EPS form of the CFG++ sampler of the same name (for 2S, the
form its code spells out: ComfyUI's sampler actually reads D_u after the midpoint evaluation has overwritten it, so
it does not reduce to plain 2S without guidance). Each step goes from `s` to `t` with σ_t > 0; the last step to
σ = 0 is `x = D_λ` and is left to the sampler loop.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Level(NamedTuple):
    """A noise level of the path `x = α·x0 + σ·n` (0-dim tensors)."""

    sigma: torch.Tensor
    alpha: torch.Tensor

    @property
    def half_log_snr(self) -> torch.Tensor:
        return (self.alpha / self.sigma).log()


def ddim_step(x: torch.Tensor, denoised: torch.Tensor, uncond_denoised: torch.Tensor, s: Level,
              t: Level) -> torch.Tensor:
    """CFG++ DDIM / first-order DPM-Solver++ step: `x_t = α_t·D_λ + σ_t·(x_s − α_s·D_u)/σ_s`."""
    return t.alpha * denoised + t.sigma * ((x - s.alpha * uncond_denoised) / s.sigma)


def ancestral_levels(s: Level, t: Level, eta: float) -> tuple[Level, torch.Tensor]:
    """k-diffusion's `get_ancestral_step` on the scale-free levels σ/α, at x's scale α_t.

    Returns the level `(σ_down, α_t)` a deterministic step goes to and the std `σ_up` of the fresh noise added after
    it: `σ_up = min(σ_t, η·σ_t·√(1 − e^{−2h}))`, `σ_down = √(σ_t² − σ_up²)`, so the noise std is σ_t again.
    """
    if eta == 0:
        return t, torch.zeros_like(t.sigma)
    decay = (t.sigma * s.alpha) / (t.alpha * s.sigma)  # e^{−h} = (σ_t/α_t)/(σ_s/α_s), finite where α_s = 0
    sigma_up = torch.minimum(t.sigma, eta * t.sigma * (1 - decay**2).clamp(min=0).sqrt())
    return Level((t.sigma**2 - sigma_up**2).sqrt(), t.alpha), sigma_up


def dpmpp_2m_step(x: torch.Tensor, denoised: torch.Tensor, uncond_denoised: torch.Tensor, s: Level, t: Level,
                  previous: tuple[torch.Tensor, Level] | None) -> torch.Tensor:
    """CFG++ DPM-Solver++(2M) step with the uncond x0 as history, `previous = (D_u at r, level r)` or None:
    `x_t = α_t·D_λ + σ_t·(x_s − α_s·D_u)/σ_s − α_t·(e^{−h} − 1)·(D_λ − D_u,r)/(2ρ)`, `ρ = (λ_s − λ_r)/h`."""
    x_t = ddim_step(x, denoised, uncond_denoised, s, t)
    if previous is None:
        return x_t
    previous_uncond, r = previous
    h = t.half_log_snr - s.half_log_snr
    rho = (s.half_log_snr - r.half_log_snr) / h
    return x_t - t.alpha * torch.expm1(-h) / (2 * rho) * (denoised - previous_uncond)


def dpmpp_2s_midpoint(s: Level, down: Level) -> torch.Tensor:
    """Half-log-SNR `λ_s + h/2` of DPM-Solver++(2S)'s intermediate evaluation (the model's σ there depends on it)."""
    return s.half_log_snr + (down.half_log_snr - s.half_log_snr) / 2


def dpmpp_2s_stage(x: torch.Tensor, denoised: torch.Tensor, uncond_denoised: torch.Tensor, s: Level, t: Level,
                   stage_denoised: torch.Tensor) -> torch.Tensor:
    """One DPM-Solver++(2S) stage from the CFG++ point `x̃_s = x_s + α_s·(D_λ − D_u)` (its noise under D_λ is the
    uncond's): `x_t = (σ_t/σ_s)·x̃_s − α_t·(e^{−h} − 1)·D`, with D = D_λ to the midpoint, D = its D_λ to σ_down."""
    h = t.half_log_snr - s.half_log_snr
    x_cfg_pp = x + s.alpha * (denoised - uncond_denoised)
    return (t.sigma / s.sigma) * x_cfg_pp - t.alpha * torch.expm1(-h) * stage_denoised
