"""Which step of the sampling schedule a model evaluation belongs to.

Step-wise decisions (scale, CFG-skip, PAG window) must be the same for every evaluation of a step, but multi-stage
samplers evaluate more than once per step, and not always strictly between schedule sigmas: Heun's corrector runs at
the next step's sigma, and so does the "midpoint" of DPM++ 2S / DPM2 ancestral at eta 1 (σ_mid = √(σ_i·σ_down) =
σ_{i+1}). Sigma alone cannot tell those apart from the next step, so samplers whose stages are known are attributed by
counting their evaluations; any other sampler by the interval its sigma falls in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Stage patterns of multi-stage samplers (k-diffusion, as in ComfyUI 0.3.75):
TWO_STAGE = "two_stage"  # heun, dpm_2, dpm_2_ancestral, dpmpp_2s_ancestral(_cfg_pp), dpmpp_sde: 2 unless σ_{i+1} = 0
HEUNPP2 = "heunpp2"  # heunpp2: 1 if σ_{i+1} = 0, 2 if σ_{i+2} = 0 (or absent), else 3


def evaluations_per_step(pattern: str, schedule: Sequence[float]) -> list[int]:
    """How many model evaluations each step of `schedule` makes under a known stage pattern."""
    steps = len(schedule) - 1
    nonzero = [i < len(schedule) and schedule[i] > 0 for i in range(len(schedule) + 1)]
    if pattern == TWO_STAGE:
        return [2 if nonzero[i + 1] else 1 for i in range(steps)]
    if pattern == HEUNPP2:
        return [1 if not nonzero[i + 1] else 2 if not nonzero[i + 2] else 3 for i in range(steps)]
    raise ValueError(f"unknown stage pattern {pattern!r}")


def _at_or_above(a: float, b: float) -> bool:
    return a > b or math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-8)


def interval_step(sigma: float, schedule: Sequence[float]) -> int:
    """The step i with σ ∈ (s_{i+1}, s_i] of a decreasing schedule s_0 > … > s_N (clamped to 0 … N−1)."""
    last = max(len(schedule) - 2, 0)
    step = 0
    while step < last and _at_or_above(schedule[step + 1], sigma):
        step += 1
    return step


class StepTracker:
    """Attributes each evaluation of one run to its step: by counting where the sampler's stages are known
    (`evaluations`, one count per step), else by the sigma's interval."""

    def __init__(self, schedule: Sequence[float], evaluations: Sequence[int] | None = None):
        self.schedule = [float(s) for s in schedule]
        self.step_of_evaluation = ([i for i, count in enumerate(evaluations) for _ in range(count)]
                                   if evaluations is not None else None)
        self.evaluated = 0

    @property
    def steps(self) -> int:
        return max(len(self.schedule) - 1, 1)

    def step(self, sigma: float) -> int:
        index, self.evaluated = self.evaluated, self.evaluated + 1
        if self.step_of_evaluation:
            return self.step_of_evaluation[min(index, len(self.step_of_evaluation) - 1)]
        return interval_step(sigma, self.schedule)
