"""Steer inside ComfyUI's sampling: the recipe in `model_options`, and three wrappers that carry it out.

Patch nodes put a `Recipe` into the model's options and install the wrappers once; both doors (KSampler's core
CFGGuider and SteerGuider) then run the same code. Wrappers chain (ComfyUI's WrappersMP), so nothing of ComfyUI or
of other packs is replaced:
  - OUTER_SAMPLE: adds the extra negatives to the guider's conds, so ComfyUI prepares them like any cond;
  - SAMPLER_SAMPLE: starts a fresh per-run state (steps, adaptive switches) in this run's own model_options;
  - PREDICT_NOISE: runs each evaluation through `predict`, keeping every wrapper registered inside ours.
"""

from __future__ import annotations

import logging
import weakref
from functools import partial

import comfy.k_diffusion.sampling as k_sampling
import comfy.samplers
from comfy.patcher_extension import WrapperExecutor, WrappersMP
from comfy.sampler_helpers import convert_cond

from ..guiders.engine import Recipe, new_run
from ..guiders.steps import HEUNPP2, TWO_STAGE, evaluations_per_step
from .cfg_pp import sample_dpmpp_2s_ancestral_cfg_pp
from .predict import evaluate, guide, predict

KEY = "steer"
RECIPE = "steer_recipe"
RUN = "steer_run"

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


def _outer_sample(executor, *args, **kwargs):
    guider = executor.class_obj
    for index, negative in enumerate(recipe_of(guider.model_options).negatives):
        # prompt_type "negative": models that encode negatives differently (SDXL refiner's aesthetic score) do so here.
        conds = convert_cond(negative.conditioning)
        guider.conds[negative_key(index)] = [{"prompt_type": "negative"} | cond for cond in conds]
    return executor(*args, **kwargs)


def _sampler_sample(executor, guider, sigmas, extra_args, *args, **kwargs):
    schedule = sigmas.tolist()
    pattern = STAGE_PATTERNS.get(getattr(executor.class_obj, "sampler_function", None))
    extra_args["model_options"][RUN] = new_run(schedule, pattern and evaluations_per_step(pattern, schedule))
    return executor(guider, sigmas, extra_args, *args, **kwargs)


PATCH_NODES = {"schedule": "SteerScaleSchedule", "threshold": "SteerDynamicThreshold", "skip": "SteerCFGSkip",
               "pag": "SteerPAG"}


def patch_names(recipe: Recipe) -> list[str]:
    """The Steer nodes a recipe holds, as users see them in the graph."""
    names = [node for slot, node in PATCH_NODES.items() if getattr(recipe, slot) is not None]
    return names + ["SteerNegative"] * len(recipe.negatives)


_warned_runs: set[int] = set()  # ids of live runs that were warned about


def _predict_noise(executor, x, timestep, model_options, seed):
    guider = executor.class_obj
    recipe = recipe_of(model_options)
    run = model_options.get(RUN)
    if run is None:  # called outside a sampler run: the schedule ComfyUI recorded is all there is
        run = new_run(model_options["transformer_options"].get("sample_sigmas", timestep).tolist())
    if type(guider).predict_noise is comfy.samplers.CFGGuider.predict_noise:
        inner = WrapperExecutor.new_class_executor(
            partial(predict, guider, recipe, run, negative_key),
            guider,
            executor.wrappers[executor.idx + 1:],
        )
        return inner.execute(x, timestep, model_options, seed)
    return _through_foreign_guider(executor, guider, recipe, run, x, timestep, model_options, seed)


def _through_foreign_guider(executor, guider, recipe: Recipe, run, x, timestep, model_options, seed):
    """A guider subclass with its own predict_noise. If it reaches core's sampling_function with its own positive and
    negative (a scheduled-CFG guider that sets `cfg` and calls super()), Steer does that evaluation from the
    calc-cond-batch slot and the CFG-function slot, at the scale the guider set. A guider that computes its own
    guidance never gets there: it runs unchanged, and every run says which Steer patches it dropped."""
    foreign_calc = model_options.get("sampler_calc_cond_batch_function")
    options = model_options.copy()
    claimed: list[bool] = []

    def calc_cond_batch_hook(args):
        conds = args["conds"]
        if len(conds) != 2 or conds[0] is not guider.conds.get("positive") or (
                conds[1] is not None and conds[1] is not guider.conds.get("negative")):
            return foreign_calc(args) if foreign_calc else comfy.samplers.calc_cond_batch(
                args["model"], conds, args["input"], args["sigma"], args["model_options"])
        evaluation = evaluate(guider, recipe, run, negative_key, args["input"], args["sigma"], model_options)
        claimed.append(True)

        def cfg_function(cfg_args):  # this evaluation only: sampling_function reads the slot right after this call
            cond_x0, uncond_x0 = cfg_args["cond_denoised"], cfg_args["uncond_denoised"]
            guided = guide(recipe, evaluation, cond_x0, uncond_x0, cfg_args["input"], cfg_args["sigma"],
                           cfg_args["model"], model_options)
            return cfg_args["input"] - guided

        args["model_options"]["sampler_cfg_function"] = cfg_function
        return evaluation.out

    options["sampler_calc_cond_batch_function"] = calc_cond_batch_hook
    denoised = executor(x, timestep, options, seed)
    if not claimed and recipe != Recipe() and id(run) not in _warned_runs:
        _warned_runs.add(id(run))
        weakref.finalize(run, _warned_runs.discard, id(run))
        logging.warning("Steer: %s computes its own guidance, so this run drops the Steer patches on its model (%s); "
                        "use KSampler, CFGGuider, BasicGuider, SteerGuider or a guider that calls CFGGuider's "
                        "predict_noise with them.", type(guider).__name__, ", ".join(patch_names(recipe)))
    return denoised
