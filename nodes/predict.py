"""One model evaluation under Steer: ComfyUI's `sampling_function` protocol with the engine doing the guidance.

Kept hook for hook with comfy.samplers.sampling_function (0.3.75) so other packs' patches and core's CFG++
samplers behave exactly as under core CFG: the calc-cond-batch slot, pre-CFG hooks, the CFG-function slot and
post-CFG hooks run with the same arguments, in the same order.
"""

from __future__ import annotations

import torch
from comfy.samplers import calc_cond_batch

from ..guiders import engine


def predict(
    model,
    x: torch.Tensor,
    sigma: torch.Tensor,
    positive: list | None,
    negative: list | None,
    scale: float,
    model_options: dict,
    seed: int | None = None,
) -> torch.Tensor:
    """The guided x0 for input `x` at `sigma` (ComfyUI passes sigma as "timestep")."""
    with_uncond = engine.needs_uncond(scale, model_options.get("disable_cfg1_optimization", False))
    uncond = negative if with_uncond else None
    conds = [positive, uncond]
    if "sampler_calc_cond_batch_function" in model_options:
        args = {"conds": conds, "input": x, "sigma": sigma, "model": model, "model_options": model_options}
        out = model_options["sampler_calc_cond_batch_function"](args)
    else:
        out = calc_cond_batch(model, conds, x, sigma, model_options)
    if uncond is None:
        # The cond stands in for the skipped uncond: CFG then returns the cond exactly, and hooks that read
        # uncond_denoised see the model's prediction instead of core's all-zero placeholder.
        out[1] = out[0]

    for fn in model_options.get("sampler_pre_cfg_function", []):
        args = {"conds": conds, "conds_out": out, "cond_scale": scale, "timestep": sigma,
                "input": x, "sigma": sigma, "model": model, "model_options": model_options}
        out = fn(args)
    denoised_cond, denoised_uncond = out[0], out[1]

    if "sampler_cfg_function" in model_options:
        args = {"cond": x - denoised_cond, "uncond": x - denoised_uncond, "cond_scale": scale, "timestep": sigma,
                "input": x, "sigma": sigma, "cond_denoised": denoised_cond, "uncond_denoised": denoised_uncond,
                "model": model, "model_options": model_options, "input_cond": positive, "input_uncond": uncond}
        denoised = x - model_options["sampler_cfg_function"](args)
    else:
        denoised = engine.combine(denoised_cond, denoised_uncond, scale)

    for fn in model_options.get("sampler_post_cfg_function", []):
        args = {"denoised": denoised, "cond": positive, "uncond": uncond, "cond_scale": scale, "model": model,
                "uncond_denoised": denoised_uncond, "cond_denoised": denoised_cond, "sigma": sigma,
                "model_options": model_options, "input": x}
        denoised = fn(args)
    return denoised
