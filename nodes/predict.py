"""One model evaluation under Steer: ComfyUI's `sampling_function` protocol with the engine doing the guidance.

Kept hook for hook with comfy.samplers.sampling_function (0.3.75) so other packs' patches and core's CFG++
samplers behave as under core CFG: the calc-cond-batch slot, pre-CFG hooks, the CFG-function slot (called at the
step's scale) and post-CFG hooks run with the same arguments, in the same order. Differences, all deliberate: the
branches are the engine's plan (extra negatives and the perturbed cond in the same call, no uncond on skipped steps),
and where the uncond is not computed the cond stands in for it instead of core's all-zero placeholder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from comfy.model_sampling import CONST
from comfy.samplers import calc_cond_batch

from ..guiders import engine
from .architectures import architecture_of
from .perturb import with_perturbations


def signal_scale(model_patcher, x: torch.Tensor, sigma: torch.Tensor) -> float | torch.Tensor:
    """α of the model's noising path `x = α·x0 + σ·n` for each sample of `x`: 1 − σ on flow (CONST) models, else 1."""
    if isinstance(model_patcher.get_model_object("model_sampling"), CONST):
        return (1.0 - sigma.to(x.dtype)).reshape(-1, *([1] * (x.ndim - 1)))
    return 1.0


def timestep(model_patcher, sigma: torch.Tensor) -> float:
    """The model's timestep at `sigma` on a 0–1000 scale (for perturbations' adaptive scale): the discrete timestep
    on EPS / V models, 1000·σ on flow models (whose own timestep scale varies: Flux's is σ, SD3's 1000·σ)."""
    sampling = model_patcher.get_model_object("model_sampling")
    if isinstance(sampling, CONST):
        return 1000.0 * float(sigma.max())
    return float(sampling.timestep(sigma.max().reshape(1)).item())


@dataclass
class Evaluation:
    """The branches of one evaluation, computed in one batched call: `out` is [D_c, D_u] (the cond stands in for the
    uncond on samples that are not guided), with the extra negatives' and the perturbed conds' x0 beside it."""

    step: engine.Plan
    conds: list  # [positive, negative or None], as hooks see them
    out: list[torch.Tensor]
    denoised_negatives: list[torch.Tensor]
    denoised_perturbed: list[torch.Tensor]
    trace: engine.Trace | None  # the run's SteerTrace recorder, if any


def evaluate(guider, recipe: engine.Recipe, run: engine.RunState, negative_key: Callable[[int], str],
             x: torch.Tensor, sigma: torch.Tensor, model_options: dict) -> Evaluation:
    """Plan this evaluation at the guider's current scale and run its branches in one call (through the
    calc-cond-batch slot when another pack fills it)."""
    model = guider.inner_model
    positive, negative = guider.conds.get("positive"), guider.conds.get("negative")
    step = engine.plan(recipe, run, guider.cfg, float(sigma.max()), x.shape[0],
                       keep_uncond=model_options.get("disable_cfg1_optimization", False),
                       has_uncond=negative is not None,
                       timestep=timestep(guider.model_patcher, sigma) if recipe.fades else 1000.0)
    uncond = negative if step.with_uncond else None
    conds = [positive, uncond]
    # Extra negatives, then each perturbation's perturbed cond: more entries of the same batched call, whose block
    # patches find the perturbed rows by entry index.
    extra = [guider.conds[negative_key(i)] for i in step.negatives] + [positive] * len(step.perturbed)

    def call_options(first_extra: int) -> dict:
        if not step.with_perturbed:
            return model_options
        first = first_extra + len(step.negatives)
        return with_perturbations(model_options, architecture_of(guider.model_patcher),
                                  [(recipe.perturbations[i], first + n) for n, i in enumerate(step.perturbed)],
                                  tuple(x.shape[2:]))

    if "sampler_calc_cond_batch_function" in model_options:
        # The slot's protocol is core's: exactly [cond, uncond or None] (SkipLayerGuidanceDiTSimple unpacks two). The
        # extra branches go to core's calc_cond_batch in a call of their own.
        args = {"conds": conds, "input": x, "sigma": sigma, "model": model, "model_options": model_options}
        out = list(model_options["sampler_calc_cond_batch_function"](args))
        if extra:
            out += calc_cond_batch(model, extra, x, sigma, call_options(0))
    else:
        out = calc_cond_batch(model, conds + extra, x, sigma, call_options(len(conds)))
    out, denoised_negatives, denoised_perturbed = out[:2], out[2:2 + len(step.negatives)], out[2 + len(step.negatives):]
    if step.with_uncond:
        engine.observe(recipe, run, step, x, out[0], out[1], signal_scale(guider.model_patcher, x, sigma))
    out[1] = engine.where_guided(step, out[1], out[0])  # the cond stands in for the uncond where it is skipped
    return Evaluation(step, conds, out, denoised_negatives, denoised_perturbed, run.trace)


def guide(recipe: engine.Recipe, evaluation: Evaluation, denoised_cond: torch.Tensor, denoised_uncond: torch.Tensor,
          x: torch.Tensor, sigma: torch.Tensor, model, model_options: dict) -> torch.Tensor:
    """The guided x0 from the (pre-CFG-hooked) cond and uncond x0, at the step's scale, with the CFG-function slot."""
    positive, uncond = evaluation.conds
    cfg_rule = engine.cfg
    if "sampler_cfg_function" in model_options:
        def cfg_rule(cond_x0: torch.Tensor, uncond_x0: torch.Tensor, scale: float) -> torch.Tensor:
            args = {"cond": x - cond_x0, "uncond": x - uncond_x0, "cond_scale": scale, "timestep": sigma,
                    "input": x, "sigma": sigma, "cond_denoised": cond_x0, "uncond_denoised": uncond_x0,
                    "model": model, "model_options": model_options, "input_cond": positive, "input_uncond": uncond}
            return x - model_options["sampler_cfg_function"](args)
    return engine.combine(recipe, evaluation.step, denoised_cond, denoised_uncond, evaluation.denoised_negatives,
                          evaluation.denoised_perturbed, cfg_rule, evaluation.trace)


def predict(guider, recipe: engine.Recipe, run: engine.RunState, negative_key: Callable[[int], str],
            x: torch.Tensor, sigma: torch.Tensor, model_options: dict, seed: int | None = None) -> torch.Tensor:
    """The guided x0 for input `x` at `sigma` (ComfyUI passes sigma as "timestep") for a CFGGuider's conds."""
    model = guider.inner_model
    evaluation = evaluate(guider, recipe, run, negative_key, x, sigma, model_options)
    conds, out, step = evaluation.conds, evaluation.out, evaluation.step
    for fn in model_options.get("sampler_pre_cfg_function", []):
        args = {"conds": conds, "conds_out": out, "cond_scale": step.scale, "timestep": sigma,
                "input": x, "sigma": sigma, "model": model, "model_options": model_options}
        out = fn(args)
    denoised_cond, denoised_uncond = out[0], out[1]
    denoised = guide(recipe, evaluation, denoised_cond, denoised_uncond, x, sigma, model, model_options)

    for fn in model_options.get("sampler_post_cfg_function", []):
        args = {"denoised": denoised, "cond": conds[0], "uncond": conds[1], "cond_scale": step.scale, "model": model,
                "uncond_denoised": denoised_uncond, "cond_denoised": denoised_cond, "sigma": sigma,
                "model_options": model_options, "input": x}
        denoised = fn(args)
    return denoised
