"""Which step of the sampling schedule a model evaluation belongs to.

Step-wise decisions (scale, CFG-skip, PAG window) must be the same for every evaluation of a step. Multi-stage
samplers (Karras et al. 2022's Heun, Lu et al. 2022's DPM-Solver(++)-2, SEEDS, SA-Solver's PECE mode …) evaluate more
than once per step, and not always strictly between schedule sigmas: Heun's corrector runs at the next step's sigma,
and so does the "midpoint" of DPM++ 2S / DPM2 ancestral at eta 1 (σ_mid = √(σ_i·σ_down) = σ_{i+1}). Schedules need
not decrease either (FlipSigmas, repeated sigmas). So a sigma alone cannot say which step a sampler is in.

Where the sampler's control flow is known, each step's number of evaluations is computed here from the schedule and
the sampler's options with the sampler's own float operations (the `*_evaluations` rules below, one per control
flow of k-diffusion as in ComfyUI 0.3.75 – 0.33), and evaluations are counted; the sampler's per-step callback, which
k-diffusion calls right after the first evaluation of step i, resynchronises the count. Any other sampler is
attributed by the schedule interval its sigma falls in, kept within the steps its callbacks allow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# --- evaluations per step of known control flows (sigmas: the schedule tensor exactly as the sampler gets it) ------


def _steps(sigmas: torch.Tensor) -> range:
    return range(max(len(sigmas) - 1, 0))


def with_stages(extra_stages: Sequence[int]) -> list[int]:
    """Evaluations per step of a sampler that makes one evaluation per step plus `extra_stages[i]` more in step i."""
    return [1 + extra for extra in extra_stages]


def single_evaluations(sigmas: torch.Tensor, **options: object) -> list[int]:
    """Euler, LMS, DPM++ 2M/3M (SDE), UniPC, … : one evaluation per step."""
    return [1 for _ in _steps(sigmas)]


def unless_final_evaluations(sigmas: torch.Tensor, stages: int = 2, **options: object) -> list[int]:
    """`stages` evaluations per step, one where the step ends at σ = 0 (Heun, DPM2, DPM++ SDE, SEEDS-2/3,
    exponential Heun, the flow variant of DPM++ 2S ancestral)."""
    return with_stages([(stages - 1) * bool(sigmas[i + 1] != 0) for i in _steps(sigmas)])


def heunpp2_evaluations(sigmas: torch.Tensor, **options: object) -> list[int]:
    """Heun++ 2: compares with the schedule's last sigma, not 0: 1 if σ_{i+1} = σ_end, 2 if σ_{i+2} = σ_end, else 3."""
    end = sigmas[-1]
    return [1 if sigmas[i + 1] == end else 2 if sigmas[i + 2] == end else 3 for i in _steps(sigmas)]


def ancestral_sigma_down(sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float) -> torch.Tensor:
    """k-diffusion's `get_ancestral_step` σ_down, operation for operation: at eta > 1 σ_up reaches σ_to and σ_down
    is exactly 0 (the step is a single Euler evaluation)."""
    if not eta:
        return sigma_to
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    return (sigma_to ** 2 - sigma_up ** 2) ** 0.5


def ancestral_evaluations(sigmas: torch.Tensor, eta: float = 1.0, **options: object) -> list[int]:
    """DPM2 ancestral, DPM++ 2S ancestral (and its CFG++ form) on EPS/V models: a second evaluation unless
    σ_down = 0, which happens at σ_{i+1} = 0 and, for eta > 1, in most steps."""
    return with_stages([bool(ancestral_sigma_down(sigmas[i], sigmas[i + 1], eta) != 0) for i in _steps(sigmas)])


def ancestral_flow_evaluations(sigmas: torch.Tensor, eta: float = 1.0, **options: object) -> list[int]:
    """DPM2 ancestral on flow models (k-diffusion's `_RF` variant): σ_down = σ_{i+1}·(1 + (σ_{i+1}/σ_i − 1)·η);
    a second evaluation unless σ_down = 0."""
    return with_stages([bool(sigmas[i + 1] * (1 + (sigmas[i + 1] / sigmas[i] - 1) * eta) != 0)
                        for i in _steps(sigmas)])


def sa_solver_evaluations(sigmas: torch.Tensor, use_pece: bool = False, corrector_order: int = 4,
                          **options: object) -> list[int]:
    """SA-Solver (Xue et al. 2023): in PECE mode the corrected state is evaluated again in every step after the
    first whose corrector runs (corrector order ≠ 0)."""
    return with_stages([int(use_pece and i > 0 and corrector_order != 0) for i in _steps(sigmas)])


# --- the interval a sigma falls in ---------------------------------------------------------------------------------


def _at_or_above(a: float, b: float) -> bool:
    return a > b or math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-8)


def _in_step(sigma: float, start: float, end: float) -> bool:
    """σ between a step's start sigma (included) and its end sigma (excluded), the schedule going either way."""
    if start >= end:
        return _at_or_above(start, sigma) and not _at_or_above(end, sigma)
    return _at_or_above(sigma, start) and not _at_or_above(sigma, end)


def interval_step(sigma: float, schedule: Sequence[float]) -> int:
    """The first step i with σ between s_i (included) and s_{i+1} (excluded), for decreasing schedules σ ∈
    (s_{i+1}, s_i], for increasing ones (FlipSigmas) σ ∈ [s_i, s_{i+1}); outside every step, the step of the nearest
    schedule sigma (clamped to 0 … N−1)."""
    last = max(len(schedule) - 2, 0)
    for step in range(last + 1):
        if step + 1 < len(schedule) and _in_step(sigma, schedule[step], schedule[step + 1]):
            return step
    nearest = min(range(len(schedule)), key=lambda i: abs(schedule[i] - sigma), default=0)
    return min(nearest, last)


# --- one run ---------------------------------------------------------------------------------------------------------


class StepTracker:
    """Attributes each evaluation of one run to its step.

    With `evaluations` (one count per step, from a rule above) evaluations are counted; without, each goes by the
    interval of its sigma. `reached(i)`, the sampler's callback right after the first evaluation of step i,
    resynchronises the count, and until the next callback every evaluation stays within [i, i + 1] (the sampler is
    still in step i or has just started step i + 1), so a count that does not match the sampler cannot drift.
    Samplers whose callbacks count their own steps (dpm_fast, dpm_adaptive) are tracked with `follow_callbacks=False`.
    """

    def __init__(self, schedule: Sequence[float], evaluations: Sequence[int] | None = None,
                 follow_callbacks: bool = True):
        self.schedule = [float(s) for s in schedule]
        self.evaluations = list(evaluations) if evaluations is not None else None
        self.follow_callbacks = follow_callbacks
        self.current = 0  # the step of the last evaluation
        self.done = 0  # evaluations made in it so far
        self.reached_step: int | None = None  # the step of the sampler's last callback

    @property
    def steps(self) -> int:
        return max(len(self.schedule) - 1, 1)

    def step(self, sigma: float) -> int:
        """The step of the next evaluation, made at `sigma`."""
        if self.evaluations:
            if (self.done >= self.evaluations[self.current] and self.current + 1 < len(self.evaluations)
                    and (self.reached_step is None or self.current == self.reached_step)):
                self.current, self.done = self.current + 1, 0
            self.done += 1
            return self.current
        step = interval_step(sigma, self.schedule)
        if self.reached_step is not None and self.follow_callbacks:
            step = min(max(step, self.reached_step), self.reached_step + 1, self.steps - 1)
        self.current = step
        return step

    def reached(self, step: int) -> None:
        """The sampler's callback for step `step`: its first evaluation was the last one made."""
        if self.follow_callbacks and 0 <= step < self.steps:
            self.current, self.done, self.reached_step = step, 1, step
