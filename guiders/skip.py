"""Skipping guidance where it does not help, without computing the uncond there.

Guidance interval — Kynkäänniemi et al., "Applying Guidance in a Limited Interval Improves Sample and Distribution
Quality in Diffusion Models", https://arxiv.org/abs/2404.07724: guide only for σ ∈ (σ_lo, σ_hi]; for SD-XL they
report (0.28, 5.42]. `percent` is the same idea on sampling progress.

Adaptive guidance — Castillo et al., "Adaptive Guidance: Training-free Acceleration of Conditional Diffusion Models",
https://arxiv.org/abs/2312.12487: once cos(ε_c, ε_u) ≥ γ̄ (0.99–0.996) the rest of the run is conditional only.
The cosine is always taken between the two *noise* predictions the method was calibrated on, on any noising path
`x = α·x0 + σ·n`: n = (x − α·D)/σ, so α = 1 on EPS/V models (n ∝ x − D) and α = 1 − σ on flow models, where
x − D would be proportional to the velocity instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .schedule import progress

MODES = ("percent", "sigma", "adaptive")


@dataclass(frozen=True)
class CFGSkip:
    mode: str = "percent"
    start_percent: float = 0.4
    end_percent: float = 1.0
    sigma_high: float = 5.42
    sigma_low: float = 0.28
    threshold: float = 0.99

    def guides_step(self, step: int, steps: int, step_sigma: float) -> bool:
        """Whether a step is guided in the `percent` and `sigma` modes (adaptive decides per sample at run time)."""
        if self.mode == "percent":
            return self.start_percent <= progress(step, steps) <= self.end_percent
        if self.mode == "sigma":
            return self.sigma_low < step_sigma <= self.sigma_high
        return True


def noise_cosine(x: torch.Tensor, denoised_cond: torch.Tensor, denoised_uncond: torch.Tensor,
                 alpha: float = 1.0) -> torch.Tensor:
    """Per-sample cosine between the cond and uncond noise predictions `(x − α·D_c)/σ` and `(x − α·D_u)/σ` (σ
    cancels); `alpha` is the path's signal scale at this σ (1 for EPS/V, 1 − σ for flow)."""
    eps_c = (x - alpha * denoised_cond).flatten(1).float()
    eps_u = (x - alpha * denoised_uncond).flatten(1).float()
    return torch.nn.functional.cosine_similarity(eps_c, eps_u, dim=1, eps=1e-12)
