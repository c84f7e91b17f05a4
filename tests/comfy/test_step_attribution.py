"""Step attribution against the real samplers: every sampler of `comfy.samplers.KSampler.SAMPLERS` (Steer's own
included), run by ComfyUI on an EPS and a flow model over decreasing, truncated, split, flipped and repeated
schedules and several eta, must attribute every model evaluation to the step the sampler is really in.

The step Steer attributes is read from the outside: a custom SteerScaleSchedule gives every step its own scale, and a
foreign CFG function (which Steer calls once per evaluation at the step's scale) records it. The true step comes from
the sampler itself: k-diffusion calls its callback with `i` right after the first evaluation of step i, so of the
evaluations between two callbacks the last one starts the next step and the others finish the previous one.
dpm_fast / dpm_adaptive count their own steps in their callbacks; there the true step is the schedule interval of
the sigma they evaluate at.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging

import comfy.sample
import comfy.samplers
import pytest
import torch
from comfy_extras.nodes_custom_sampler import FlipSigmas, SamplerDPMPP_2S_Ancestral

from testbed.sampling import model_calls, sigmas

OWN_SIGMAS = ("dpm_fast", "dpm_adaptive")
BASE_SCALE, SCALE_STEP = 2.0, 0.125  # step i runs at 2 + i/8: exact in float, distinct, never 1


def step_scales(count: int) -> str:
    return ", ".join(str(BASE_SCALE + SCALE_STEP * i) for i in range(count))


def schedules(model, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    normal = sigmas(model, 6)
    every = {
        "normal": lambda: normal,
        "truncated": lambda: sigmas(model, 10)[-7:],  # what denoise 0.6 gives: 6 steps of a 10-step schedule
        "split_high": lambda: sigmas(model, 8)[:5],  # SplitSigmas' first half: ends above 0
        "flipped": lambda: FlipSigmas.execute(normal.clone()).result[0],
        "repeated": lambda: torch.cat([normal[:3], normal[2:]]),  # σ_2 twice: a step that does not move
    }
    return {name: every[name]() for name in names}


# Every schedule on the EPS model; on the flow model (where only the ancestral samplers change their control flow)
# three, to keep the suite fast. tests/comfy/test_step_rules.py draws random schedules for every sampler.
SCHEDULES = {"inprocess": ("normal", "truncated", "split_high", "flipped", "repeated"),
             "sd3": ("normal", "split_high", "flipped")}


def sampler_variants(name: str) -> list[tuple[str, comfy.samplers.KSAMPLER]]:
    """The sampler `name` as KSampler builds it, and for the ancestral ones at eta 0, 1 and 2."""
    sampler = comfy.samplers.sampler_object(name)
    if "ancestral" not in name or "eta" not in inspect.signature(sampler.sampler_function).parameters:
        return [("", sampler)]
    return [(f"eta={eta}", comfy.samplers.KSAMPLER(sampler.sampler_function, sampler.extra_options | {"eta": eta},
                                                   sampler.inpaint_options)) for eta in (0.0, 1.0, 2.0)]


def record_run(model, bed, sampler, schedule: torch.Tensor, seed: int = 3, cfg: float = 5.0
               ) -> list[tuple[str, float, float]]:
    """Sample and return the events in order: ("eval", scale Steer chose, sigma) and ("step", i, 0)."""
    events: list[tuple[str, float, float]] = []

    def cfg_function(args: dict) -> torch.Tensor:
        events.append(("eval", float(args["cond_scale"]), float(args["sigma"].max())))
        return args["uncond"] + (args["cond"] - args["uncond"]) * args["cond_scale"]

    recorder = model.clone()
    recorder.set_model_sampler_cfg_function(cfg_function)
    guider = comfy.samplers.CFGGuider(recorder)
    guider.set_conds(bed.positive, bed.negative)
    guider.set_cfg(cfg)
    latent = bed.latent()
    noise = comfy.sample.prepare_noise(latent, seed)
    try:
        guider.sample(noise, latent, sampler, schedule.clone(), disable_pbar=True, seed=seed,
                      callback=lambda i, *_: events.append(("step", float(i), 0.0)))
    except torch.linalg.LinAlgError:  # SA-Solver's and UniPC's own solve on a held sigma: the run ends there
        last_step = max(k for k, event in enumerate(events) if event[0] == "step")
        return events[:last_step + 1]  # what happened up to the sampler's last callback is settled
    return events


def true_steps_from_callbacks(events) -> list[int]:
    """Per evaluation: the step the sampler was in, from its callbacks alone."""
    steps, pending, current = [], 0, 0
    for kind, value, _sigma in events:
        if kind == "eval":
            pending += 1
        elif pending:  # the last evaluation before callback i started step i, the others finished the step before
            steps += [current] * (pending - 1) + [int(value)]
            pending, current = 0, int(value)
    return steps + [current] * pending


def true_steps_from_sigmas(events, schedule: list[float]) -> list[int]:
    """Per evaluation: the schedule interval its sigma lies in (the schedule is monotone), clamped to the steps."""
    inner, steps = schedule[1:-1], len(schedule) - 1
    decreasing = schedule[0] >= schedule[-1]
    return [min(sum(1 for s in inner if (s >= sigma if decreasing else s <= sigma)), steps - 1)
            for kind, _, sigma in events if kind == "eval"]


def attributed_steps(events) -> list[int]:
    return [round((scale - BASE_SCALE) / SCALE_STEP) for kind, scale, _ in events if kind == "eval"]


@pytest.mark.parametrize("bed_name", ["inprocess", "sd3"])
@pytest.mark.parametrize("sampler_name", [*comfy.samplers.KSampler.SAMPLERS, "steer_*"])
def test_every_evaluation_is_attributed_to_the_samplers_step(request, patch, bed_name, sampler_name, caplog):
    """Every sampler ("steer_*": Steer's own, registered when ComfyUI loads Steer, after collection)."""
    bed = request.getfixturevalue(f"{bed_name}_bed")
    model = patch(bed.model, "SteerScaleSchedule", curve="custom", custom=step_scales(12))
    names = ([sampler_name] if sampler_name != "steer_*"
             else [n for n in comfy.samplers.KSampler.SAMPLERS if n.startswith("steer_")])
    assert names
    wrong, runs = [], 0
    for (schedule_name, schedule), name in itertools.product(schedules(bed.model, SCHEDULES[bed_name]).items(), names):
        if sampler_name == "dpm_adaptive" and schedule_name == "flipped":
            continue  # its step-size control never reaches a sigma above its start: the run does not end
        for variant, sampler in sampler_variants(name):
            with caplog.at_level(logging.WARNING):
                events = record_run(model, bed, sampler, schedule)
            runs += 1
            expected = (true_steps_from_sigmas(events, schedule.tolist()) if name in OWN_SIGMAS
                        else true_steps_from_callbacks(events))
            got = attributed_steps(events)
            # Every step evaluated, unless the sampler counts its own steps or its math failed on the held sigma.
            assert got and (len(got) >= len(schedule) - 1 or name in OWN_SIGMAS or schedule_name == "repeated")
            if got != expected:
                wrong.append(f"{name} {schedule_name} {variant}: expected {expected}, got {got}")
    assert runs and not wrong, "\n".join(wrong)
    assert "unknown to Steer's step attribution" not in caplog.text


# --- the cases of the issue ------------------------------------------------------------------------------------------


def test_dpmpp_2s_ancestral_at_eta_2_with_cfg_skip_guides_the_late_steps(inprocess_bed, patch):
    """SamplerDPMPP_2S_Ancestral(eta=2) + SteerCFGSkip percent 0.5–1 over 6 steps: eta 2 makes every step a single
    evaluation; steps 3, 4, 5 (progress 0.6, 0.8, 1) are guided and so compute the uncond."""
    model = patch(inprocess_bed.model, "SteerCFGSkip", mode="percent", start_percent=0.5, end_percent=1.0)
    sampler = SamplerDPMPP_2S_Ancestral.execute(2.0, 1.0).result[0]
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(inprocess_bed.positive, inprocess_bed.negative)
    guider.set_cfg(5.0)
    latent = inprocess_bed.latent()
    with model_calls(model) as rows:
        guider.sample(comfy.sample.prepare_noise(latent, 1), latent, sampler, sigmas(model, 6), disable_pbar=True,
                      seed=1)
    assert rows == [1, 1, 1, 2, 2, 2]


def test_linear_down_schedule_reaches_its_end_on_the_last_step_at_eta_2(inprocess_bed, patch):
    """linear_down 8 → 1 over 20 Karras steps with dpmpp_2s_ancestral at eta 2: every step runs at 8 − 7·i/19, so
    the last one at exactly 1, where the uncond is dropped."""
    model = patch(inprocess_bed.model, "SteerScaleSchedule", curve="linear_down", cfg_min=1.0)
    sampler = SamplerDPMPP_2S_Ancestral.execute(2.0, 1.0).result[0]
    schedule = sigmas(model, 20, "karras")
    with model_calls(model) as rows:
        events = record_run(model, inprocess_bed, sampler, schedule, cfg=8.0)
    scales = [scale for kind, scale, _ in events if kind == "eval"]
    truth = true_steps_from_callbacks(events)
    assert scales == pytest.approx([8.0 - 7.0 * step / 19 for step in truth])
    assert truth[-1] == 18 and rows[-1] == 1  # step 19 runs at scale 1: the cond alone, no cfg function call
    assert len(rows) == 20


@pytest.mark.parametrize("sampler_name", ["dpmpp_2s_ancestral_cfg_pp", "steer_dpmpp_2s_ancestral_cfg_pp"])
@pytest.mark.parametrize("eta", [1.0, 1.2, 2.0])
def test_a_custom_cfg_pp_lambda_list_lands_on_its_steps(inprocess_bed, patch, sampler_name, eta):
    """A custom λ list with ComfyUI's and Steer's CFG++ DPM++ 2S ancestral: each step runs at its own λ, whatever
    eta does to the number of evaluations."""
    lambdas = [0.6, 0.7, 0.8, 0.9, 1.1, 1.2]
    model = patch(inprocess_bed.model, "SteerScaleSchedule", curve="custom", custom=", ".join(map(str, lambdas)))
    base = comfy.samplers.sampler_object(sampler_name)
    sampler = comfy.samplers.KSAMPLER(base.sampler_function, {"eta": eta, "s_noise": 1.0})
    events = record_run(model, inprocess_bed, sampler, sigmas(model, 6, "karras"))
    scales = [scale for kind, scale, _ in events if kind == "eval"]
    assert scales == [lambdas[step] for step in true_steps_from_callbacks(events)]
    if eta == 1.0:
        assert len(scales) > 6  # midpoints in every step but the last
    if eta == 2.0:
        assert len(scales) == 6  # σ_down = 0 in every step: no midpoint (at 1.2, in some steps)


# --- samplers other packs wrap -------------------------------------------------------------------------------------


def _wrapped_by_wraps(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        return function(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize(("wrap", "options", "eta"), [(lambda f: functools.partial(f, eta=1.0), {}, 1.0),
                                                      (lambda f: functools.partial(f, eta=2.0), {}, 2.0),
                                                      (_wrapped_by_wraps, {"eta": 1.0}, 1.0)],
                         ids=["partial-eta1", "partial-eta2", "functools.wraps"])
def test_a_wrapped_known_sampler_keeps_its_stage_counting(inprocess_bed, patch, wrap, options, eta, caplog):
    """functools.partial (its keywords are the sampler's options: at eta 1 the midpoint sits on the next step's
    sigma, at eta 2 there is none) and functools.wraps wrappers are looked through."""
    model = patch(inprocess_bed.model, "SteerScaleSchedule", curve="custom", custom=step_scales(12))
    function = comfy.samplers.sampler_object("dpmpp_2s_ancestral").sampler_function
    sampler = comfy.samplers.KSAMPLER(wrap(function), options)
    with caplog.at_level(logging.WARNING):
        events = record_run(model, inprocess_bed, sampler, sigmas(model, 6))
    truth = true_steps_from_callbacks(events)
    assert attributed_steps(events) == truth
    assert (len(truth) > 6) == (eta == 1.0)  # midpoints at eta 1, none at eta 2
    assert "unknown to Steer's step attribution" not in caplog.text


def test_an_opaque_sampler_is_attributed_by_interval_with_one_warning(inprocess_bed, patch, caplog):
    """A closure Steer cannot see into: a warning names it once, and evaluations go by sigma interval within the
    steps its callbacks report (right for its one evaluation per step, on a decreasing and on a flipped schedule)."""
    model = patch(inprocess_bed.model, "SteerScaleSchedule", curve="custom", custom=step_scales(12))
    euler = comfy.samplers.sampler_object("euler").sampler_function

    def opaque_euler(model, x, sigmas, **kwargs):
        return euler(model, x, sigmas, **kwargs)

    sampler = comfy.samplers.KSAMPLER(opaque_euler)
    with caplog.at_level(logging.WARNING):
        for schedule in (sigmas(model, 6), FlipSigmas.execute(sigmas(model, 6)).result[0]):
            events = record_run(model, inprocess_bed, sampler, schedule)
            assert attributed_steps(events) == true_steps_from_callbacks(events) == [0, 1, 2, 3, 4, 5]
    warnings = [r for r in caplog.records if "unknown to Steer's step attribution" in r.getMessage()]
    assert len(warnings) == 1 and "opaque_euler" in warnings[0].getMessage()
