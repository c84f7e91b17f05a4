"""Time-varying guidance scale — Wang et al., "Analysis of Classifier-Free Guidance Weight Schedulers",
https://arxiv.org/abs/2404.13040 (monotonically increasing schedules, low guidance at high noise, help).

Progress is `p = i / (N − 1)` on the run's own schedule of N steps, so the first step has p = 0, the last p = 1,
whatever the denoise, shift or scheduler. A run of one step has no progress to vary over: its step is at once the
first and the last, so every curve gives the sampler's cfg there (f = 1; `custom`: its first value), the same for
`*_up` and `*_down` curves.

The half-cosine, repeating and sawtooth curves are those of mcmonkey's "Dynamic Thresholding" (MIT), defined on the
same progress: half_cosine_down cos(p) (radians, so it ends at cos 1 ≈ 0.54, not 0), half_cosine_up 1 − cos(p),
linear_repeating a triangle wave 1 → 0 → 1 per cycle, cosine_repeating (1 + cos 2πcp)/2, sawtooth (cp) mod 1, with c
the number of cycles over the run (its `sched_val`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

CURVES = ("constant", "linear_down", "linear_up", "cosine_down", "cosine_up", "step_down", "step_up",
          "power_down", "power_up", "half_cosine_down", "half_cosine_up", "linear_repeating", "cosine_repeating",
          "sawtooth", "custom")


def progress(step: int, steps: int) -> float:
    """Sampling progress of step `step` (0-based) of `steps`: 0 at the first step, 1 at the last."""
    return step / (steps - 1) if steps > 1 else 0.0


def curve_weight(curve: str, p: float, switch_at: float = 0.5, exponent: float = 2.0, cycles: float = 1.0) -> float:
    """f(p) ∈ [0, 1]: the share of (cfg − cfg_min) applied at progress p."""
    if curve == "constant":
        return 1.0
    if curve == "linear_down":
        return 1.0 - p
    if curve == "linear_up":
        return p
    if curve == "cosine_down":
        return (1.0 + math.cos(math.pi * p)) / 2.0
    if curve == "cosine_up":
        return (1.0 - math.cos(math.pi * p)) / 2.0
    if curve == "step_down":
        return 1.0 if p < switch_at else 0.0
    if curve == "step_up":
        return 0.0 if p < switch_at else 1.0
    if curve == "power_down":
        return 1.0 - p**exponent
    if curve == "power_up":
        return p**exponent
    if curve in MCMONKEY_CURVES:
        return mcmonkey_weight(curve, p, cycles)
    raise ValueError(f"unknown curve {curve!r}; expected one of {', '.join(CURVES)}")


MCMONKEY_CURVES = ("half_cosine_down", "half_cosine_up", "linear_repeating", "cosine_repeating", "sawtooth")


def mcmonkey_weight(curve: str, p: float, cycles: float) -> float:
    """mcmonkey's half-cosine and periodic curves (see the module docstring), `cycles` periods over the run."""
    if curve == "half_cosine_down":
        return math.cos(p)
    if curve == "half_cosine_up":
        return 1.0 - math.cos(p)
    phase = (p * cycles) % 1.0
    if curve == "linear_repeating":
        return abs(1.0 - 2.0 * phase)
    if curve == "cosine_repeating":
        return (1.0 + math.cos(2.0 * math.pi * p * cycles)) / 2.0
    return phase  # sawtooth


NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)  # plain decimals: no "1_000", "inf", "nan"


def parse_custom(text: str) -> tuple[float, ...]:
    """Per-step scales from text such as "12, 10, 8, 5" (commas and/or whitespace between values)."""
    values = []
    for position, token in enumerate((t for t in re.split(r"[\s,;]+", text.strip()) if t), start=1):
        if NUMBER.fullmatch(token) is None:
            raise ValueError(f"value {position} ({token!r}) is not a decimal number such as 7.5 or 1e1")
        value = float(token)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"value {position} ({token!r}) must be a finite scale ≥ 0")
        if value == 0 and any(digit in "123456789" for digit in token.lower().partition("e")[0]):
            raise ValueError(f"value {position} ({token!r}) is too small to be represented (it would be 0)")
        values.append(value)
    if not values:
        raise ValueError("no scales given; write one scale per step, e.g. \"12, 10, 8, 5\"")
    return tuple(values)


@dataclass(frozen=True)
class ScaleSchedule:
    """`s(p) = cfg_min + (cfg − cfg_min)·f(p)`, or absolute per-step scales for `custom` (the last one holds)."""

    curve: str = "constant"
    cfg_min: float = 1.0
    switch_at: float = 0.5
    exponent: float = 2.0
    custom: tuple[float, ...] = ()
    cycles: float = 1.0

    def scale(self, cfg: float, step: int, steps: int) -> float:
        if self.curve == "custom":
            return self.custom[min(step, len(self.custom) - 1)]
        if steps == 1:
            return cfg  # the only step is first and last at once: see the module docstring
        f = curve_weight(self.curve, progress(step, steps), self.switch_at, self.exponent,
                         self.cycles)
        # Written as a blend so that f = 1 gives cfg and f = 0 gives cfg_min exactly (the endpoints are exact).
        return cfg * f + self.cfg_min * (1.0 - f)

    def unused_values(self, steps: int) -> int:
        """How many `custom` values lie beyond a run of `steps` steps (they are never applied)."""
        return max(len(self.custom) - steps, 0) if self.curve == "custom" else 0
