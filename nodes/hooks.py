"""Steer inside ComfyUI's sampling: the recipe in `model_options`, and three wrappers that carry it out.

Patch nodes put a `Recipe` into the model's options and install the wrappers once; both doors (KSampler's core
CFGGuider and SteerGuider) then run the same code. Wrappers chain (ComfyUI's WrappersMP), so nothing of ComfyUI or
of other packs is replaced:
  - OUTER_SAMPLE: adds the extra negatives to the guider's conds, so ComfyUI prepares them like any cond (their hook
    groups registered as ComfyUI registers the others'; without a ControlNet of their own, the main negative's),
    and hands a traced model's recorder the latent the run returned (SteerTrace);
  - SAMPLER_SAMPLE: starts a fresh per-run state (steps, adaptive switches, trace) in this run's own model_options,
    and follows the sampler's per-step callback (nodes/stages.py says how steps are attributed);
  - PREDICT_NOISE: runs each evaluation through `predict`, keeping every wrapper registered inside ours.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import replace
from functools import partial

import comfy.hooks
import comfy.samplers
from comfy.patcher_extension import WrapperExecutor, WrappersMP
from comfy.sampler_helpers import convert_cond, get_hooks_from_cond

from ..guiders.engine import Recipe, RunState, new_run
from ..guiders.schedule import ScaleSchedule
from ..guiders.skip import CFGSkip
from ..guiders.threshold import DynamicThreshold
from .predict import evaluate, guide, predict
from .stages import tracker_for

KEY = "steer"
RECIPE = "steer_recipe"
RUN = "steer_run"
TRACE = "steer_trace"  # a guiders.trace.Recorder, set by SteerTrace


def recipe_of(model_options: dict) -> Recipe:
    return model_options.get(RECIPE) or Recipe()


def negative_key(index: int) -> str:
    return f"steer_negative_{index}"


# Components that can hold only once per model, by the node that makes them (for the replacement warning).
SINGLE_NODES = {ScaleSchedule: "Steer Scale Schedule (SteerScaleSchedule)",
                DynamicThreshold: "Steer Dynamic Threshold (SteerDynamicThreshold)",
                CFGSkip: "Steer CFG Skip (SteerCFGSkip)"}


def with_steer(model, component=None):
    """A clone of `model` (a ModelPatcher) with Steer's wrappers installed and `component` added to its recipe.

    Extra negatives and PAG patches accumulate; a schedule, threshold or CFG-skip replaces the one already on the
    model, and the log says which node won.
    """
    patched = model.clone()
    if component is not None:
        recipe = recipe_of(patched.model_options)
        earlier = recipe.replaced(component)
        if earlier is not None and earlier != component:
            logging.warning("Steer: the model already has a %s; the later one, nearer the sampler, wins: %s replaces "
                            "%s. Only one can hold per model.", SINGLE_NODES[type(component)], component, earlier)
        patched.model_options[RECIPE] = recipe.adding(component)
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
    # prompt_type "negative": models that encode negatives differently (SDXL refiner's aesthetic score) do so here.
    negatives = {negative_key(index): [{"prompt_type": "negative"} | c for c in convert_cond(negative.conditioning)]
                 for index, negative in enumerate(recipe_of(guider.model_options).negatives)}
    if negatives:
        _take_main_control(negatives, guider.conds.get("negative") or [])
        comfy.samplers.preprocess_conds_hooks(negatives)
        guider.conds.update(negatives)
        _register_hooks(guider, negatives)
    recorder = guider.model_options.get(TRACE)
    if recorder is None:
        return executor(*args, **kwargs)
    recorder.begin()
    output = executor(*args, **kwargs)
    recorder.finish(output)
    return output


def _take_main_control(negatives: dict[str, list[dict]], main_negative: list[dict]) -> None:
    """An extra negative without a ControlNet of its own takes the main negative's (ControlNetApplyAdvanced attaches
    one to the positive and the main negative only): `D_n − D_u` then compares like with like, instead of carrying
    the negated control, which subtracting would amplify by the negative's weight."""
    control = next((cond["control"] for cond in main_negative if "control" in cond), None)
    if control is None:
        return
    for conds in negatives.values():
        if not any("control" in cond for cond in conds):
            for cond in conds:
                cond["control"] = control


def _register_hooks(guider, negatives: dict[str, list[dict]]) -> None:
    """Register the hook groups (LoRA hooks …) the extra negatives carry, as CFGGuider.sample does for its own conds
    before OUTER_SAMPLE (comfy.sampler_helpers.prepare_model_patcher, whose wrapper merge must not run twice), then
    keep on the conds only what is registered, as ComfyUI does."""
    hooks = comfy.hooks.HookGroup()
    for conds in negatives.values():
        get_hooks_from_cond(conds, hooks)
    options = guider.model_options
    registered = options.get("registered_hooks") or comfy.hooks.HookGroup()
    if len(hooks) and not hooks.is_subset_of(registered):
        model, target = guider.model_patcher, comfy.hooks.create_target_dict(comfy.hooks.EnumWeightTarget.Model)
        every = comfy.hooks.HookGroup()
        for hook in (*registered.hooks, *hooks.hooks):
            every.add(hook)
        for kind in (comfy.hooks.EnumHookType.TransformerOptions, comfy.hooks.EnumHookType.AdditionalModels):
            for hook in hooks.get_type(kind):
                if not registered.contains(hook):
                    hook.add_hook_patches(model, options, target, registered)
        model.register_all_hook_patches(every, target, options, registered)
        options["registered_hooks"] = registered
    comfy.samplers.filter_registered_hooks_on_conds(negatives, options)


def _sampler_sample(executor, guider, sigmas, extra_args, callback, *args, **kwargs):
    tracker = tracker_for(executor.class_obj, sigmas, guider.model_patcher.get_model_object("model_sampling"))
    recorder = extra_args["model_options"].get(TRACE)
    trace = recorder.start(tracker.steps) if recorder is not None else None
    extra_args["model_options"][RUN] = RunState(tracker, trace=trace)
    scale_schedule = recipe_of(extra_args["model_options"]).schedule
    unused = scale_schedule.unused_values(tracker.steps) if scale_schedule else 0
    if unused:
        logging.warning("Steer Scale Schedule: the custom schedule has %d values but this run has %d steps; the last "
                        "%d are not used.", len(scale_schedule.custom), tracker.steps, unused)
    _guide_every_step_where_patches_need_the_negative(extra_args["model_options"])

    def step_reached(step: int, *rest, **named):
        # k-diffusion calls this right after the first evaluation of each step: it keeps the attribution in step.
        tracker.reached(step)
        if callback is not None:
            return callback(step, *rest, **named)

    return executor(guider, sigmas, extra_args, step_reached, *args, **kwargs)


def hook_owner(fn) -> str:
    """The node that registered a hook, as far as its name tells (core's are `Node.execute.<locals>.fn`)."""
    return getattr(fn, "__qualname__", type(fn).__name__).split(".")[0]


def _guide_every_step_where_patches_need_the_negative(options: dict) -> None:
    """Patches that read the negative on every step say so with `disable_cfg1_optimization` (core's
    SelfAttentionGuidance blurs with the negative's attention map and re-runs the negative). CFG-skip would leave
    them without one, so with them this run guides every step, and the log says so, naming both sides. (CFG++
    samplers add their own such hook later, inside the sampler: they take the cond where no negative is computed.)"""
    recipe = recipe_of(options)
    hooks = options.get("sampler_post_cfg_function", []) + options.get("sampler_pre_cfg_function", [])
    if recipe.skip is None or not options.get("disable_cfg1_optimization") or not hooks:
        return
    options[RECIPE] = replace(recipe, skip=None)
    logging.warning("Steer: SteerCFGSkip cannot compose with %s: that patch reads the negative on every step, which a "
                    "skipped step does not compute. This run guides every step (no CFG skip).",
                    ", ".join(dict.fromkeys(hook_owner(fn) for fn in hooks)))


PATCH_NODES = {"schedule": "SteerScaleSchedule", "threshold": "SteerDynamicThreshold", "skip": "SteerCFGSkip"}


def patch_names(recipe: Recipe) -> list[str]:
    """The Steer nodes a recipe holds, as users see them in the graph."""
    names = [node for slot, node in PATCH_NODES.items() if getattr(recipe, slot) is not None]
    return names + ["SteerNegative"] * len(recipe.negatives) + ["SteerPAG"] * len(recipe.perturbations)


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
