"""Steer inside ComfyUI's sampling: the recipe in `model_options`, and three wrappers that carry it out.

Patch nodes put a `Recipe` into the model's options and install the wrappers once; both doors (KSampler's core
CFGGuider and SteerGuider) then run the same code. Wrappers chain (ComfyUI's WrappersMP), so nothing of ComfyUI or
of other packs is replaced:
  - OUTER_SAMPLE: adds the extra negatives to the guider's conds, so ComfyUI prepares them like any cond;
  - SAMPLER_SAMPLE: starts a fresh per-run state (steps, adaptive switches) in this run's own model_options, and
    follows the sampler's per-step callback (nodes/stages.py says how steps are attributed);
  - PREDICT_NOISE: runs each evaluation through `predict`, keeping every wrapper registered inside ours.
"""

from __future__ import annotations

import logging
from functools import partial

import comfy.samplers
from comfy.patcher_extension import WrapperExecutor, WrappersMP
from comfy.sampler_helpers import convert_cond

from ..guiders.engine import Recipe, RunState, new_run
from .predict import predict
from .stages import tracker_for

KEY = "steer"
RECIPE = "steer_recipe"
RUN = "steer_run"

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


def _outer_sample(executor, *args, **kwargs):
    guider = executor.class_obj
    for index, negative in enumerate(recipe_of(guider.model_options).negatives):
        # prompt_type "negative": models that encode negatives differently (SDXL refiner's aesthetic score) do so here.
        conds = convert_cond(negative.conditioning)
        guider.conds[negative_key(index)] = [{"prompt_type": "negative"} | cond for cond in conds]
    return executor(*args, **kwargs)


def _sampler_sample(executor, guider, sigmas, extra_args, callback, *args, **kwargs):
    tracker = tracker_for(executor.class_obj, sigmas, guider.model_patcher.get_model_object("model_sampling"))
    extra_args["model_options"][RUN] = RunState(tracker)

    def step_reached(step: int, *rest, **named):
        # k-diffusion calls this right after the first evaluation of each step: it keeps the attribution in step.
        tracker.reached(step)
        if callback is not None:
            return callback(step, *rest, **named)

    return executor(guider, sigmas, extra_args, step_reached, *args, **kwargs)


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
