"""Steer inside ComfyUI's sampling: the recipe in `model_options`, and three wrappers that carry it out.

Patch nodes put a `Recipe` into the model's options and install the wrappers once; both doors (KSampler's core
CFGGuider and SteerGuider) then run the same code. Wrappers chain (ComfyUI's WrappersMP), so nothing of ComfyUI or
of other packs is replaced:
  - OUTER_SAMPLE: adds the extra negatives to the guider's conds, so ComfyUI prepares them like any cond, and hands
    a traced model's recorder the latent the run returned (SteerTrace);
  - SAMPLER_SAMPLE: starts a fresh per-run state (steps, adaptive switches, trace) in this run's own model_options;
  - PREDICT_NOISE: runs each evaluation through `predict`, keeping every wrapper registered inside ours.
"""

from __future__ import annotations

import logging
from functools import partial

import comfy.k_diffusion.sampling as k_sampling
import comfy.samplers
from comfy.patcher_extension import WrapperExecutor, WrappersMP
from comfy.sampler_helpers import convert_cond

from ..guiders.engine import Recipe, new_run
from ..guiders.steps import HEUNPP2, TWO_STAGE, evaluations_per_step
from .cfg_pp import sample_dpmpp_2s_ancestral_cfg_pp
from .predict import predict

KEY = "steer"
RECIPE = "steer_recipe"
RUN = "steer_run"
TRACE = "steer_trace"  # a guiders.trace.Recorder, set by SteerTrace

# Multi-stage samplers whose evaluations are attributed to steps by counting (guiders/steps.py says why). Their
# flow (RF) variants are dispatched from these same functions. The ancestral ones make one evaluation instead of two
# in a step where eta > 1 drives σ_down to 0; at eta ≤ 1 that happens only in the last step, which the count knows.
STAGE_PATTERNS = {k_sampling.sample_heun: TWO_STAGE, k_sampling.sample_dpm_2: TWO_STAGE,
                  k_sampling.sample_dpm_2_ancestral: TWO_STAGE, k_sampling.sample_dpmpp_2s_ancestral: TWO_STAGE,
                  k_sampling.sample_dpmpp_2s_ancestral_cfg_pp: TWO_STAGE, k_sampling.sample_dpmpp_sde: TWO_STAGE,
                  sample_dpmpp_2s_ancestral_cfg_pp: TWO_STAGE, k_sampling.sample_heunpp2: HEUNPP2}


def recipe_of(model_options: dict) -> Recipe:
    return model_options.get(RECIPE) or Recipe()


def negative_key(index: int) -> str:
    return f"steer_negative_{index}"


def with_steer(model, component=None):
    """A clone of `model` (a ModelPatcher) with Steer's wrappers installed and `component` added to its recipe."""
    patched = model.clone()
    if component is not None:
        patched.model_options[RECIPE] = recipe_of(patched.model_options).adding(component)
    if not patched.get_wrappers(WrappersMP.PREDICT_NOISE, KEY):
        patched.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, KEY, _outer_sample)
        patched.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, KEY, _sampler_sample)
        patched.add_wrapper_with_key(WrappersMP.PREDICT_NOISE, KEY, _predict_noise)
    return patched


def without_steer(model):
    """A clone of `model` with every Steer patch and wrapper taken off (other packs' patches stay)."""
    plain = model.clone()
    for key in (RECIPE, TRACE):
        plain.model_options.pop(key, None)
    for wrapper_type in (WrappersMP.OUTER_SAMPLE, WrappersMP.SAMPLER_SAMPLE, WrappersMP.PREDICT_NOISE):
        plain.remove_wrappers_with_key(wrapper_type, KEY)
    return plain


def _outer_sample(executor, *args, **kwargs):
    guider = executor.class_obj
    for index, negative in enumerate(recipe_of(guider.model_options).negatives):
        # prompt_type "negative": models that encode negatives differently (SDXL refiner's aesthetic score) do so here.
        conds = convert_cond(negative.conditioning)
        guider.conds[negative_key(index)] = [{"prompt_type": "negative"} | cond for cond in conds]
    recorder = guider.model_options.get(TRACE)
    if recorder is None:
        return executor(*args, **kwargs)
    recorder.begin()
    output = executor(*args, **kwargs)
    recorder.finish(output)
    return output


def _sampler_sample(executor, guider, sigmas, extra_args, *args, **kwargs):
    schedule = sigmas.tolist()
    pattern = STAGE_PATTERNS.get(getattr(executor.class_obj, "sampler_function", None))
    recorder = extra_args["model_options"].get(TRACE)
    trace = recorder.start(len(schedule) - 1) if recorder is not None else None
    extra_args["model_options"][RUN] = new_run(schedule, pattern and evaluations_per_step(pattern, schedule), trace)
    return executor(guider, sigmas, extra_args, *args, **kwargs)


_warned: set[str] = set()


def _predict_noise(executor, x, timestep, model_options, seed):
    guider = executor.class_obj
    if type(guider).predict_noise is not comfy.samplers.CFGGuider.predict_noise:
        name = type(guider).__name__
        if name not in _warned and recipe_of(model_options) != Recipe():
            _warned.add(name)
            logging.warning("Steer: %s computes its own guidance, so the Steer patches on this model are not applied; "
                            "use KSampler, CFGGuider, BasicGuider or SteerGuider with them.", name)
        return executor(x, timestep, model_options, seed)
    run = model_options.get(RUN)
    if run is None:  # called outside a sampler run: the schedule ComfyUI recorded is all there is
        run = new_run(model_options["transformer_options"].get("sample_sigmas", timestep).tolist())
    inner = WrapperExecutor.new_class_executor(
        partial(predict, guider, recipe_of(model_options), run, negative_key),
        guider,
        executor.wrappers[executor.idx + 1:],
    )
    return inner.execute(x, timestep, model_options, seed)
