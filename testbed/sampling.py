"""In-process sampling helpers for tests: run a guider with a real ComfyUI sampler and count model calls."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import comfy.sample
import comfy.samplers
import torch


def sigmas(model, steps: int, scheduler: str = "normal") -> torch.Tensor:
    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps).cpu()


def run(guider, sampler_name: str, latent: torch.Tensor, steps: int = 6, seed: int = 1) -> torch.Tensor:
    """Sample `latent` with `guider` and a named k-diffusion sampler, as SamplerCustomAdvanced does."""
    noise = comfy.sample.prepare_noise(latent, seed)
    sampler = comfy.samplers.sampler_object(sampler_name)
    return guider.sample(noise, latent, sampler, sigmas(guider.model_patcher, steps), disable_pbar=True, seed=seed)


@contextlib.contextmanager
def model_calls(model_patcher) -> Iterator[list[int]]:
    """Record the batch rows of every forward of the diffusion model itself, below every ComfyUI hook."""
    rows: list[int] = []
    module = model_patcher.model.diffusion_model
    handle = module.register_forward_pre_hook(lambda _module, args: rows.append(int(args[0].shape[0])))
    try:
        yield rows
    finally:
        handle.remove()
