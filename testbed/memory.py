"""Peak CPU memory of a piece of code, from torch's profiler: every allocation and free of torch's CPU allocator in
order, the running sum's maximum. Deterministic for the same code and shapes (unlike RSS), so tests can compare it."""

from __future__ import annotations

from collections.abc import Callable

import torch


def peak_cpu_bytes(fn: Callable[[], object]) -> int:
    """The highest amount of CPU tensor memory `fn` held at once above what was allocated when it started."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profile:
        fn()
    events = sorted((e for e in profile.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU),
                    key=lambda e: e.start_ns())
    held = peak = 0
    for event in events:
        held += event.nbytes()  # negative for a free
        peak = max(peak, held)
    return peak
