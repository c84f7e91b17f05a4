"""Which step of the sampling schedule a model evaluation belongs to.

Samplers evaluate between schedule sigmas (dpm_2, dpmpp_2s_ancestral, dpmpp_sde midpoints) and Heun-type samplers
evaluate their corrector at the *next* step's sigma. Step-wise decisions (scale, CFG-skip) must be the same for every
evaluation of a step, so evaluations are attributed to steps here, once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


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
    """Attributes each evaluation of one run to its step.

    For ordinary samplers that is the interval the sigma falls in. A corrector sampler (Heun) evaluates the end of
    step i at s_{i+1} before step i+1 evaluates there again: for it a new step starts only when the sigma does not
    decrease from the previous evaluation.
    """

    def __init__(self, schedule: Sequence[float], corrector: bool = False):
        self.schedule = [float(s) for s in schedule]
        self.corrector = corrector
        self.previous: float | None = None
        self.current = 0

    @property
    def steps(self) -> int:
        return max(len(self.schedule) - 1, 1)

    def step(self, sigma: float) -> int:
        starts_step = not self.corrector or self.previous is None or _at_or_above(sigma, self.previous)
        if starts_step:
            self.current = interval_step(sigma, self.schedule)
        self.previous = sigma
        return self.current
