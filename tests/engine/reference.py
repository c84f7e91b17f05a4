"""Independent reference helpers for the engine tests (plain Python, no torch reductions)."""

import math


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's / torch's default), by sorting."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
