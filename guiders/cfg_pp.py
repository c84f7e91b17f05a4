"""CFG++ — Chung et al., "CFG++: Manifold-constrained Classifier Free Guidance for Diffusion Models",
https://arxiv.org/abs/2406.08070.

Denoise with the guided x0 `D_λ = D_u + λ·(D_c − D_u)` but renoise with the unconditional noise
`(x_s − α_s·D_u)/σ_s`. The steps hold on any noising path `x = α·x0 + σ·n` (α = 1 for EPS/V models, α = 1 − σ for
flow models), written with the half-log-SNR `λ_s = log(α_s/σ_s)` and `h = λ_t − λ_s` of DPM-Solver++ (Lu et al.,
https://arxiv.org/abs/2211.01095); a subscripted λ is always a half-log-SNR, the bare λ of D_λ the guidance scale.

Every step here is one rule applied to a plain solver: take the plain step from the CFG++ point
`x̃_s = x_s + α_s·(D_λ − D_u)` with D_λ as the current x0 and the *uncond* x0s as multistep history. x̃_s is the point
whose noise under D_λ is the uncond's, `(x̃_s − α_s·D_λ)/σ_s = ε_u`, so a first-order step lands on
`α_t·D_λ + σ_t·ε_u` (denoise with D_λ, renoise with ε_u), and with D_u = D_λ every step is its plain solver's.

With α = 1 each step is, formula for formula, ComfyUI's EPS form of the CFG++ sampler of the same name where ComfyUI
has one and follows that rule: euler, euler_ancestral, dpmpp_2m, gradient_estimation, and 2S as its code spells it
out (ComfyUI's sampler actually reads D_u after the midpoint evaluation has overwritten it, so it does not reduce to
plain 2S without guidance). ComfyUI's res_multistep_cfg_pp integrates D_u instead of D_λ after its first step (see
`res_multistep_step`). Each step goes from `s` to `t` with σ_t > 0; the last step to σ = 0 is `x = D_λ` and is left
to the sampler loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch


class Level(NamedTuple):
    """A noise level of the path `x = α·x0 + σ·n` (0-dim tensors)."""

    sigma: torch.Tensor
    alpha: torch.Tensor

    @property
    def half_log_snr(self) -> torch.Tensor:
        return (self.alpha / self.sigma).log()


def cfg_pp_point(x: torch.Tensor, denoised: torch.Tensor, uncond_denoised: torch.Tensor, s: Level) -> torch.Tensor:
    """`x̃_s = x_s + α_s·(D_λ − D_u)`: the point whose noise under D_λ is the uncond's noise ε_u."""
    return x + s.alpha * (denoised - uncond_denoised)


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
    x_cfg_pp = cfg_pp_point(x, denoised, uncond_denoised, s)
    return (t.sigma / s.sigma) * x_cfg_pp - t.alpha * torch.expm1(-h) * stage_denoised


def res_multistep_step(x: torch.Tensor, denoised: torch.Tensor, uncond_denoised: torch.Tensor, s: Level, t: Level,
                       previous: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """CFG++ RES second-order multistep step (Zhang et al., https://arxiv.org/abs/2308.02157, as ComfyUI's
    res_multistep): the plain step from x̃_s with D_λ and the previous D_u,
    `x_t = (σ_t/σ_s)·x̃_s + α_t·h·(b1·D_λ + b2·D_u,r)`, `b2 = φ2(−h)/c2`, `b1 = φ1(−h) − b2`.

    `previous = (D_u,r, h_r)` with h_r the previous step's own length in λ (to its σ_down), or None for the first-order
    step; `c2 = −h_r/h` as in ComfyUI. ComfyUI's res_multistep_cfg_pp puts D_u where D_λ belongs, so after its first
    step it denoises towards D_u + e^{−h}·(D_λ − D_u) and, with a flat history, does not reduce to its own first step.
    """
    if previous is None:
        return ddim_step(x, denoised, uncond_denoised, s, t)
    h = t.half_log_snr - s.half_log_snr
    previous_uncond, h_previous = previous
    c2 = -h_previous / h
    phi1 = torch.expm1(-h) / -h
    phi2 = (phi1 - 1) / -h
    b1 = torch.nan_to_num(phi1 - phi2 / c2, nan=0.0)
    b2 = torch.nan_to_num(phi2 / c2, nan=0.0)
    x_cfg_pp = cfg_pp_point(x, denoised, uncond_denoised, s)
    return (t.sigma / s.sigma) * x_cfg_pp + t.alpha * h * (b1 * denoised + b2 * previous_uncond)


def gradient_estimation_step(x: torch.Tensor, denoised: torch.Tensor, uncond_denoised: torch.Tensor, s: Level,
                             sigma_t: torch.Tensor, previous_derivative: torch.Tensor | None,
                             gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """CFG++ gradient estimation (Permenter & Yuan, https://openreview.net/pdf?id=o2ND9v0CeK, as ComfyUI's
    gradient_estimation): the plain Euler step from x̃_s with D_λ, `d = (x̃_s − D_λ)/σ_s`,
    `x_t = x̃_s + (σ_t − σ_s)·(d + (γ − 1)·(d − d_r))`. Returns x_t and d (the next step's d_r).

    Euler in σ is DDIM on ComfyUI's paths (α = 1 or 1 − σ), so without the γ term x_t = α_t·D_λ + σ_t·ε_u. On EPS d is
    ComfyUI's `(x − D_u)/σ`; ComfyUI's gradient_estimation_cfg_pp uses that d on flow too (x̃ without α_s).
    """
    x_cfg_pp = cfg_pp_point(x, denoised, uncond_denoised, s)
    derivative = (x_cfg_pp - denoised) / s.sigma
    dt = sigma_t - s.sigma
    x_t = x_cfg_pp + derivative * dt
    if previous_derivative is not None:
        x_t = x_t + (gamma - 1) * (derivative - previous_derivative) * dt
    return x_t, derivative


class Evaluation(NamedTuple):
    """An earlier step of a multistep sampler: its uncond x0 and its length h in λ."""

    uncond_denoised: torch.Tensor
    h: torch.Tensor


def dpmpp_sde_step(x: torch.Tensor, denoised: torch.Tensor, uncond_denoised: torch.Tensor, s: Level, t: Level,
                   eta: float, history: Sequence[Evaluation], solver: str = "midpoint") -> torch.Tensor:
    """CFG++ DPM-Solver++(2M/3M) SDE step without its fresh noise (ComfyUI's dpmpp_2m_sde / dpmpp_3m_sde): the plain
    step from x̃_s with D_λ and the uncond history (newest first; 2M SDE keeps one, 3M SDE two), whose first-order part
    is `α_t·D_λ + σ_t·e^{−ηh}·ε_u`; the sampler adds `σ_t·√(1 − e^{−2ηh})·z` (`dpmpp_sde_noise_std`).

    `solver` is 2M's correction with one earlier step, "midpoint" or "heun" (3M SDE uses "heun"); two earlier steps
    give the 3M correction. With η = 0 and "midpoint" this is `dpmpp_2m_step`.
    """
    h = t.half_log_snr - s.half_log_snr
    h_eta = h * (eta + 1)
    x_t = (t.sigma / s.sigma) * (-h * eta).exp() * cfg_pp_point(x, denoised, uncond_denoised, s)
    x_t = x_t - t.alpha * torch.expm1(-h_eta) * denoised
    if not history:
        return x_t
    phi_2 = torch.expm1(-h_eta) / h_eta + 1
    d1_0 = (denoised - history[0].uncond_denoised) * h / history[0].h
    if len(history) == 1:
        if solver == "midpoint":
            return x_t - 0.5 * t.alpha * torch.expm1(-h_eta) * d1_0
        return x_t + t.alpha * phi_2 * d1_0
    r0, r1 = history[0].h / h, history[1].h / h
    d1_1 = (history[0].uncond_denoised - history[1].uncond_denoised) / r1
    d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi_3 = phi_2 / h_eta - 0.5
    return x_t + t.alpha * phi_2 * d1 - t.alpha * phi_3 * d2


def dpmpp_sde_noise_std(s: Level, t: Level, eta: float) -> torch.Tensor:
    """Std of the fresh noise of a DPM-Solver++ SDE step: `σ_t·√(1 − e^{−2ηh})`."""
    return t.sigma * torch.expm1(-2 * eta * (t.half_log_snr - s.half_log_snr)).neg().sqrt()
