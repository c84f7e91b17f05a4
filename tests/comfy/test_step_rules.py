"""Property test of step attribution over random schedules: ComfyUI's real sampler functions (every one of
`comfy.samplers.KSampler.SAMPLERS`, Steer's `steer_*_cfg_pp` included), driven with random eta / s_noise over random
decreasing, truncated, split, flipped and repeated schedules, on an EPS and a flow model's real `model_sampling`.

Running the real model for hundreds of random schedules would take minutes, and the control flow of a sampler does
not depend on the model's output (dpm_adaptive aside, whose sigmas do). So here the denoiser handed to the sampler
function returns a constant x0 (and runs the post-CFG hooks the CFG++ samplers read the uncond from); it asks the
run's tracker, built by nodes/stages.py exactly as Steer's SAMPLER_SAMPLE wrapper builds it, for each evaluation's
step, and the sampler's own callbacks say what the step really was. test_step_attribution.py runs the same check
through the real ComfyUI sampling path and model.
"""

from __future__ import annotations

import inspect
import sys
from types import SimpleNamespace

import comfy.samplers
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from testbed.sampling import sigmas as model_sigmas


@pytest.fixture(scope="module")
def stages(steer):
    return sys.modules[f"{steer.__name__}.nodes.stages"]


@pytest.fixture(scope="module")
def model_samplings(inprocess_bed, sd3_bed) -> dict[str, object]:
    return {"eps": inprocess_bed.model.get_model_object("model_sampling"),
            "flow": sd3_bed.model.get_model_object("model_sampling")}


class ConstantDenoiser:
    """What a sampler function calls as its model (ComfyUI's KSamplerX0Inpaint around the guider): x0 = 0.1
    everywhere, with ComfyUI's post-CFG hooks run like `sampling_function` does. Records each evaluation's step."""

    def __init__(self, model_sampling, tracker, events: list):
        patcher = SimpleNamespace(get_model_object=lambda name: model_sampling)
        self.inner_model = SimpleNamespace(inner_model=SimpleNamespace(model_sampling=model_sampling),
                                           model_patcher=patcher)
        self.tracker, self.events = tracker, events

    def __call__(self, x, sigma, model_options=None, seed=None, **kwargs):
        try:
            step = self.tracker.step(float(sigma.max()))
        except Exception as error:  # Steer's failure, not the sampler's: kept apart from the sampler's own errors
            self.events.append(("steer_error", repr(error), 0.0))
            raise
        self.events.append(("eval", step, float(sigma.max())))
        denoised = torch.full_like(x, 0.1)
        for hook in (model_options or {}).get("sampler_post_cfg_function", []):
            denoised = hook({"denoised": denoised, "cond_denoised": denoised, "uncond_denoised": denoised,
                             "cond": [], "uncond": [], "input": x, "sigma": sigma, "cond_scale": 1.0,
                             "model": self, "model_options": model_options})
        return denoised


def true_steps(events) -> list[int]:
    """Per evaluation, from the sampler's callbacks alone (see test_step_attribution.py)."""
    steps, pending, current = [], 0, 0
    for kind, value, _sigma in events:
        if kind == "eval":
            pending += 1
        elif pending:
            steps += [current] * (pending - 1) + [value]
            pending, current = 0, value
    return steps + [current] * pending


def interval_truth(events, schedule: list[float]) -> list[int]:
    inner, decreasing = schedule[1:-1], schedule[0] >= schedule[-1]
    return [min(sum(1 for s in inner if (s >= sigma if decreasing else s <= sigma)), len(schedule) - 2)
            for kind, _step, sigma in events if kind == "eval"]


@st.composite
def schedules(draw, flow: bool) -> torch.Tensor:
    """A random schedule as ComfyUI's scheduler nodes and sigma nodes make them (float32)."""
    top = 1.0 if flow else 14.6
    values = sorted(draw(st.lists(st.floats(0.02 * top, top), min_size=1, max_size=8, unique=True)), reverse=True)
    if flow and draw(st.booleans()):
        values[0] = 1.0  # flow schedules usually start at exactly 1
    if draw(st.booleans()):  # a sigma held for a step (custom schedules)
        k = draw(st.integers(0, len(values) - 1))
        values.insert(k, values[k])
    kind = draw(st.sampled_from(["to_zero", "split", "flipped"]))
    if kind == "to_zero":
        values.append(0.0)
    elif kind == "flipped":  # FlipSigmas of a schedule ending at 0: 0 becomes 1e-4
        values = [1e-4, *reversed(values)]
    return torch.tensor(values if len(values) > 1 else [values[0], 0.0], dtype=torch.float32)


def run_sampler(stages, sampler, schedule: torch.Tensor, model_sampling) -> list[tuple]:
    events: list[tuple] = []
    tracker = stages.tracker_for(sampler, schedule, model_sampling)

    def callback(info: dict) -> None:
        tracker.reached(info["i"])
        events.append(("step", info["i"], 0.0))

    denoiser = ConstantDenoiser(model_sampling, tracker, events)
    x = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0)) * float(schedule.max())
    try:
        with torch.no_grad():
            sampler.sampler_function(denoiser, x, schedule.clone(), extra_args={"seed": 1, "model_options": {}},
                                     callback=callback, disable=True, **sampler.extra_options)
    except Exception:  # noqa: BLE001 - a degenerate schedule can break a sampler's own math (SA-Solver's solve)
        assert not [e for e in events if e[0] == "steer_error"], events
        last_step = max((k for k, e in enumerate(events) if e[0] == "step"), default=0)
        return events[:last_step + 1]  # what happened up to its last callback is settled
    return events


# Steer registers its steer_* names when ComfyUI loads it (the `steer` fixture), after collection: "steer_*" stands
# for all of them.
SAMPLERS = [name for name in comfy.samplers.KSampler.SAMPLERS if name != "dpm_adaptive"] + ["steer_*"]


def sampler_names(name: str) -> list[str]:
    if name != "steer_*":
        return [name]
    names = [n for n in comfy.samplers.KSampler.SAMPLERS if n.startswith("steer_")]
    assert names, "Steer's samplers are not registered"
    return names


@pytest.mark.parametrize("kind", ["eps", "flow"])
@pytest.mark.parametrize("sampler_name", SAMPLERS)
def test_every_sampler_over_random_schedules(stages, model_samplings, kind, sampler_name):
    for name in sampler_names(sampler_name):
        check_random_schedules(stages, model_samplings[kind], kind == "flow", name)


def check_random_schedules(stages, model_sampling, flow: bool, sampler_name: str) -> None:
    base = comfy.samplers.sampler_object(sampler_name)
    parameters = inspect.signature(base.sampler_function).parameters

    @settings(max_examples=12, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(schedule=schedules(flow), eta=st.sampled_from([0.0, 0.5, 1.0, 1.3, 2.0, 4.0]),
           s_noise=st.sampled_from([0.0, 1.0]))
    def check(schedule, eta, s_noise):
        # dpm_fast's own sigmas can sit on a held sigma's boundary, where "the interval" is ambiguous.
        assume(sampler_name != "dpm_fast" or len(set(schedule.tolist())) == len(schedule))
        options = {key: value for key, value in (("eta", eta), ("s_noise", s_noise)) if key in parameters}
        if "noise_sampler" in parameters:  # no Brownian tree (slow, and without bearing on the control flow)
            options["noise_sampler"] = lambda sigma, sigma_next: torch.zeros(1, 4, 2, 2)
        sampler = comfy.samplers.KSAMPLER(base.sampler_function, base.extra_options | options)
        events = run_sampler(stages, sampler, schedule, model_sampling)
        attributed = [step for kind_, step, _ in events if kind_ == "eval"]
        expected = interval_truth(events, schedule.tolist()) if sampler_name == "dpm_fast" else true_steps(events)
        assert attributed == expected, (sampler_name, schedule.tolist(), options)

    check()


def test_heunpp2_on_a_normal_schedule(stages, inprocess_bed, model_samplings):
    """A fixed example: Heun++ 2 makes 3 evaluations per step, 2 in the one before last and 1 in the last."""
    schedule = model_sigmas(inprocess_bed.model, 6)
    events = run_sampler(stages, comfy.samplers.sampler_object("heunpp2"), schedule, model_samplings["eps"])
    assert [step for kind, step, _ in events if kind == "eval"] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 5]
