"""Which control flow a ComfyUI sampler follows: the run's `StepTracker` (the rules are in guiders/steps.py).

A KSAMPLER carries its `sampler_function` and `extra_options` (eta, s_noise, …), so when a run starts the number of
evaluations of every step is known: k-diffusion's samplers are recognised by their name in
`comfy.k_diffusion.sampling` (flow models dispatch some of them to `_RF` variants with other formulas), Steer's
CFG++ samplers by nodes/cfg_pp.py, and `functools.partial` / `functools.wraps` wrappers are looked through. Any other
sampler function is attributed by sigma interval, with a warning once per function.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable

import comfy.k_diffusion.sampling as k_sampling
import comfy.model_sampling
import comfy.samplers
import torch
from comfy.extra_samplers import uni_pc

from ..guiders import steps
from ..guiders.steps import StepTracker
from . import cfg_pp

Rule = Callable[..., list[int]]  # (sigmas, **options) -> evaluations per step

SINGLE = ("euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "lms", "dpmpp_2m", "dpmpp_2m_cfg_pp",
          "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde",
          "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp",
          "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "gradient_estimation",
          "gradient_estimation_cfg_pp", "er_sde", "sa_solver")
# k-diffusion sampler name → its rule on EPS / V-prediction models (ComfyUI 0.3.75 … 0.33; names a version lacks are
# skipped).
K_DIFFUSION: dict[str, Rule] = {name: steps.single_evaluations for name in SINGLE} | {
    "heun": steps.unless_final_evaluations, "dpm_2": steps.unless_final_evaluations,
    "dpmpp_sde": steps.unless_final_evaluations, "dpmpp_sde_gpu": steps.unless_final_evaluations,
    "seeds_2": steps.unless_final_evaluations, "exp_heun_2_x0": steps.unless_final_evaluations,
    "exp_heun_2_x0_sde": steps.unless_final_evaluations,
    "seeds_3": functools.partial(steps.unless_final_evaluations, stages=3),
    "heunpp2": steps.heunpp2_evaluations,
    "dpm_2_ancestral": steps.ancestral_evaluations, "dpmpp_2s_ancestral": steps.ancestral_evaluations,
    "dpmpp_2s_ancestral_cfg_pp": steps.ancestral_evaluations,
    "sa_solver_pece": functools.partial(steps.sa_solver_evaluations, use_pece=True),
}
# … and where flow (CONST) models take a `_RF` variant with another control flow.
K_DIFFUSION_FLOW: dict[str, Rule] = {"dpm_2_ancestral": steps.ancestral_flow_evaluations,
                                     "dpmpp_2s_ancestral": steps.unless_final_evaluations}
# ComfyUI's dpm_fast / dpm_adaptive choose their own sigmas between the schedule's ends and count their own steps.
OWN_SIGMAS = ("ksampler.<locals>.dpm_fast_function", "ksampler.<locals>.dpm_adaptive_function")


def _known_rules(flow: bool, model_sampling: object) -> dict[Callable, Rule]:
    """Every known sampler function (undecorated) → its rule `(sigmas, **options)` on this model."""
    rules = {getattr(k_sampling, "sample_" + name): (K_DIFFUSION_FLOW.get(name, rule) if flow else rule)
             for name, rule in K_DIFFUSION.items() if hasattr(k_sampling, "sample_" + name)}
    rules[k_sampling.sample_sa_solver] = steps.sa_solver_evaluations
    rules[uni_pc.sample_unipc] = rules[uni_pc.sample_unipc_bh2] = steps.single_evaluations
    rules |= {sampler: functools.partial(rule, model_sampling=model_sampling)
              for sampler, rule in cfg_pp.evaluations_rules().items()}
    return {_unwrapped(function, {})[0]: rule for function, rule in rules.items()}


def _unwrapped(function: Callable, options: dict) -> tuple[Callable, dict]:
    """The function a `functools.partial` (keywords only) or `functools.wraps` wrapper (`torch.no_grad()` included)
    calls, with the options the wrapper adds."""
    while True:
        if isinstance(function, functools.partial) and not function.args:
            function, options = function.func, function.keywords | options
        elif callable(getattr(function, "__wrapped__", None)):
            function = function.__wrapped__
        else:
            return function, options


def _defaults(function: Callable) -> dict:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


_warned: set[str] = set()


def _warn_unknown(name: str) -> None:
    if name not in _warned:
        _warned.add(name)
        logging.warning("Steer: the sampler %s is unknown to Steer's step attribution, so its evaluations are "
                        "attributed to steps by sigma interval (within the steps its callbacks report): exact for "
                        "one evaluation per step on a decreasing schedule, approximate otherwise.", name)


def tracker_for(sampler: object, sigmas: torch.Tensor, model_sampling: object) -> StepTracker:
    """The step tracker of a run of `sampler` (ComfyUI's Sampler object) over `sigmas` on a model with
    `model_sampling`."""
    schedule = sigmas.tolist()
    function = getattr(sampler, "sampler_function", None)
    if function is None:
        _warn_unknown(type(sampler).__qualname__)
        return StepTracker(schedule)
    function, options = _unwrapped(function, dict(getattr(sampler, "extra_options", None) or {}))
    options = _defaults(function) | options
    name = getattr(function, "__qualname__", repr(function))
    if getattr(function, "__module__", None) == comfy.samplers.__name__ and name in OWN_SIGMAS:
        return StepTracker(schedule, follow_callbacks=False)
    flow = isinstance(model_sampling, comfy.model_sampling.CONST)
    rule = _known_rules(flow, model_sampling).get(function)
    if rule is not None:
        return StepTracker(schedule, rule(sigmas, **options))
    _warn_unknown(f"{getattr(function, '__module__', '?')}.{name}")
    return StepTracker(schedule)
