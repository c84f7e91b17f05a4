"""One model evaluation under Steer: ComfyUI's `sampling_function` protocol with the engine doing the guidance.

Kept hook for hook with comfy.samplers.sampling_function (0.3.75) so other packs' patches and core's CFG++
samplers behave as under core CFG: the calc-cond-batch slot, pre-CFG hooks, the CFG-function slot (called at the
step's scale) and post-CFG hooks run with the same arguments, in the same order. Differences, all deliberate: the
branches are the engine's plan (extra negatives and the perturbed cond in the same call, no uncond on skipped steps),
and where the uncond is not computed the cond stands in for it instead of core's all-zero placeholder.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from comfy.model_sampling import CONST
from comfy.samplers import calc_cond_batch

from ..guiders import engine
from .attention import with_perturbed_attention


def signal_scale(model_patcher, x: torch.Tensor, sigma: torch.Tensor) -> float | torch.Tensor:
    """α of the model's noising path `x = α·x0 + σ·n` for each sample of `x`: 1 − σ on flow (CONST) models, else 1."""
    if isinstance(model_patcher.get_model_object("model_sampling"), CONST):
        return (1.0 - sigma.to(x.dtype)).reshape(-1, *([1] * (x.ndim - 1)))
    return 1.0


def predict(guider, recipe: engine.Recipe, run: engine.RunState, negative_key: Callable[[int], str],
            x: torch.Tensor, sigma: torch.Tensor, model_options: dict, seed: int | None = None) -> torch.Tensor:
    """The guided x0 for input `x` at `sigma` (ComfyUI passes sigma as "timestep") for a CFGGuider's conds."""
    model = guider.inner_model
    positive, negative = guider.conds.get("positive"), guider.conds.get("negative")
    step = engine.plan(recipe, run, guider.cfg, float(sigma.max()), x.shape[0],
                       keep_uncond=model_options.get("disable_cfg1_optimization", False),
                       has_uncond=negative is not None)
    uncond = negative if step.with_uncond else None
    conds = [positive, uncond]
    branches = conds + [guider.conds[negative_key(i)] for i in step.negatives]
    call_options = model_options
    if step.with_perturbed:
        # Each PAG patch's perturbed cond is one more entry of the same batched call; the attention patch finds its
        # rows by entry index.
        first = len(branches)
        perturbations = [(recipe.perturbations[i].blocks, first + n) for n, i in enumerate(step.perturbed)]
        call_options = with_perturbed_attention(model_options, perturbations)
        branches += [positive] * len(step.perturbed)

    if "sampler_calc_cond_batch_function" in model_options:
        args = {"conds": branches, "input": x, "sigma": sigma, "model": model, "model_options": call_options}
        out = list(model_options["sampler_calc_cond_batch_function"](args))
    else:
        out = calc_cond_batch(model, branches, x, sigma, call_options)
    out, denoised_negatives, denoised_perturbed = out[:2], out[2:2 + len(step.negatives)], out[2 + len(step.negatives):]
    if step.with_uncond:
        engine.observe(recipe, run, step, x, out[0], out[1], signal_scale(guider.model_patcher, x, sigma))
    out[1] = engine.where_guided(step, out[1], out[0])  # the cond stands in for the uncond where it is skipped

    for fn in model_options.get("sampler_pre_cfg_function", []):
        args = {"conds": conds, "conds_out": out, "cond_scale": step.scale, "timestep": sigma,
                "input": x, "sigma": sigma, "model": model, "model_options": model_options}
        out = fn(args)
    denoised_cond, denoised_uncond = out[0], out[1]

    cfg_rule = engine.cfg
    if "sampler_cfg_function" in model_options:
        def cfg_rule(cond_x0: torch.Tensor, uncond_x0: torch.Tensor, scale: float) -> torch.Tensor:
            args = {"cond": x - cond_x0, "uncond": x - uncond_x0, "cond_scale": scale, "timestep": sigma,
                    "input": x, "sigma": sigma, "cond_denoised": cond_x0, "uncond_denoised": uncond_x0,
                    "model": model, "model_options": model_options, "input_cond": positive, "input_uncond": uncond}
            return x - model_options["sampler_cfg_function"](args)
    denoised = engine.combine(recipe, step, denoised_cond, denoised_uncond, denoised_negatives, denoised_perturbed,
                              cfg_rule, run.trace)

    for fn in model_options.get("sampler_post_cfg_function", []):
        args = {"denoised": denoised, "cond": positive, "uncond": uncond, "cond_scale": step.scale, "model": model,
                "uncond_denoised": denoised_uncond, "cond_denoised": denoised_cond, "sigma": sigma,
                "model_options": model_options, "input": x}
        denoised = fn(args)
    return denoised
