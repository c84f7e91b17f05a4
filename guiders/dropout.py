"""Condition dropout: which training samples see the null conditioning instead of their own.

Ho & Salimans, "Classifier-Free Diffusion Guidance", https://arxiv.org/abs/2207.12598: one network learns both the
conditional and the unconditional score when the conditioning is replaced by the null token for a fraction
p_uncond of the training samples (0.1–0.2 in the paper). Each sample of each training step is dropped
independently with probability `rate`.

The draw for training step `step` comes from its own generator, seeded by mixing (`seed`, `step`) through SplitMix64
(Steele et al., "Fast Splittable Pseudorandom Number Generators", OOPSLA 2014): a decision depends only on the seed,
the step and the sample's position, never on the global torch RNG (which the trainer uses for its own draws) nor on
how many draws came before.
"""

from __future__ import annotations

import torch

MASK64 = (1 << 64) - 1
GOLDEN_GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's increment: odd, ~2^64/φ


def splitmix64(value: int) -> int:
    """SplitMix64's output function: a bijection of 64-bit integers that spreads nearby inputs far apart."""
    z = (value + GOLDEN_GAMMA) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def step_seed(seed: int, step: int) -> int:
    """The generator seed of one training step: distinct steps of one seed always get distinct seeds."""
    return splitmix64((seed + splitmix64(step)) & MASK64)


def dropped(seed: int, step: int, count: int, rate: float) -> torch.Tensor:
    """Bool [count]: which of the `count` samples of training step `step` get the null conditioning.
    Sample i is dropped when u_i < rate, u_i ~ U[0, 1) in float64: never at rate 0, always at rate 1."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"dropout rate {rate} is outside 0.0–1.0")
    generator = torch.Generator().manual_seed(step_seed(seed, step))
    return torch.rand(count, generator=generator, dtype=torch.float64) < rate
