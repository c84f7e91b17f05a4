"""SteerCFGPPSampler in the real ComfyUI: ComfyUI's own CFG++ samplers where those are right (EPS; Euler on flow),
ComfyUI's plain α-aware samplers where guidance is off, no zero-uncond with BasicGuider, the KSampler door, and the
scheduled scale."""

from __future__ import annotations

import math
import sys

import comfy.k_diffusion.sampling as k_sampling
import comfy.sample
import comfy.samplers
import pytest
import torch
from comfy_extras.nodes_custom_sampler import (
    BasicScheduler,
    CFGGuider,
    Guider_Basic,
    RandomNoise,
    SamplerCustomAdvanced,
)

from testbed.sampling import core_guider, ksampler, sigmas

STEER_SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2s_ancestral"]
SCALES = [0.6, 1.0, 1.5]


@pytest.fixture(scope="module")
def cfg_pp(steer_nodes):
    """The SAMPLER of SteerCFGPPSampler for a sampler name, with the schema's defaults overridden by keyword."""
    node = steer_nodes["SteerCFGPPSampler"]

    def sampler(name: str, **inputs) -> comfy.samplers.KSAMPLER:
        values = {i.id: getattr(i, "default", None) for i in node.define_schema().inputs} | inputs
        return node.execute(**(values | {"sampler_name": name})).result[0]

    return sampler


@pytest.fixture
def patch(steer_nodes):
    def apply(model, node_id: str, **inputs):
        schema = steer_nodes[node_id].define_schema()
        values = {i.id: getattr(i, "default", None) for i in schema.inputs if i.id != "model"} | inputs
        return steer_nodes[node_id].execute(model, **values).result[0]

    return apply


def basic_guider(model, bed) -> Guider_Basic:
    guider = Guider_Basic(model)
    guider.set_conds(bed.positive)
    return guider


def sample(guider, sampler, latent: torch.Tensor, steps: int = 6, seed: int = 1, skip_steps: int = 0) -> torch.Tensor:
    """Sample with a SAMPLER object or a KSampler name, optionally starting `skip_steps` into the schedule."""
    if isinstance(sampler, str):
        sampler = comfy.samplers.sampler_object(sampler)
    schedule = sigmas(guider.model_patcher, steps)[skip_steps:]
    noise = comfy.sample.prepare_noise(latent, seed)
    return guider.sample(noise, latent, sampler, schedule, disable_pbar=True, seed=seed)


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal to float32 rounding: 1e-5 relative, and 1e-5 of the largest value absolute (the tiny models' latents
    reach ~200, so elements near 0 carry rounding of that scale)."""
    assert torch.isfinite(actual).all()
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def assert_differ(a: torch.Tensor, b: torch.Tensor) -> None:
    """The comparisons could not fail if the two sides of a switch gave the same latents: they do not."""
    assert (a - b).abs().mean() > 0.01 * b.abs().mean()


# --- ComfyUI's own CFG++ samplers ----------------------------------------------------------------------------------

class StepUncondAtMidpoints(comfy.samplers.CFGGuider):
    """Core's CFGGuider for a 2S sampler, except that post-CFG hooks at each step's second (midpoint) evaluation are
    handed the uncond x0 of the step's first evaluation.

    ComfyUI's dpmpp_2s_ancestral_cfg_pp reads the uncond its hook recorded *after* the midpoint evaluation has
    overwritten it, so its last stage shifts x by D_λ(σ_s) − D_u(σ_mid), the x0s of two different points. Under this
    guider it computes what its code spells out, x + (D_λ − D_u) at σ_s in both stages. (Evaluations alternate; the
    midpoint cannot be told by its σ: at η = 1 on EPS it is √(σ_s·σ_down) = σ_t, the next step's σ.)
    """

    at_step = False
    step_uncond: torch.Tensor

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 - core's signature
        self.at_step = at_step = not self.at_step

        def keeping_step_uncond(hook):
            def run(args: dict) -> torch.Tensor:
                if at_step:
                    self.step_uncond = args["uncond_denoised"]
                return hook(args | {"uncond_denoised": self.step_uncond})

            return run

        hooks = [keeping_step_uncond(hook) for hook in model_options.get("sampler_post_cfg_function", [])]
        return super().predict_noise(x, timestep, model_options | {"sampler_post_cfg_function": hooks}, seed)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", STEER_SAMPLERS)
def test_equals_comfyuis_cfg_pp_on_eps(sd15_bed, cfg_pp, name, scale):
    bed, latent = sd15_bed, sd15_bed.latent(2)
    guider = core_guider(bed.model, bed, scale)
    expected = sample(guider, f"{name}_cfg_pp", latent)
    if name == "dpmpp_2s_ancestral":
        reference = StepUncondAtMidpoints(bed.model)
        reference.set_conds(bed.positive, bed.negative)
        reference.set_cfg(scale)
        assert_differ(sample(guider, cfg_pp(name), latent), expected)
        expected = sample(reference, f"{name}_cfg_pp", latent)
    assert_close(sample(guider, cfg_pp(name), latent), expected)
    if scale != 1.0:
        assert_differ(expected, sample(core_guider(bed.model, bed, 1.0), f"{name}_cfg_pp", latent))


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", ["euler", "euler_ancestral"])
def test_equals_comfyuis_alpha_aware_euler_cfg_pp_on_flow(sd3_bed, cfg_pp, name, scale):
    bed, latent = sd3_bed, sd3_bed.latent(2)
    guider = core_guider(bed.model, bed, scale)
    assert_close(sample(guider, cfg_pp(name), latent), sample(guider, f"{name}_cfg_pp", latent))


@pytest.mark.parametrize("name", ["euler", "dpmpp_2s_ancestral"])
def test_steer_guider_computes_the_uncond_at_scale_one(sd15_bed, steer_nodes, cfg_pp, name):
    """Steer drops the uncond at scale 1 unless a sampler asks for it (disable_cfg1_optimization), as CFG++ does."""
    bed, latent = sd15_bed, sd15_bed.latent(1)
    steer = steer_nodes["SteerGuider"].execute(bed.model, bed.positive, bed.negative, 1.0).result[0]
    expected = sample(core_guider(bed.model, bed, 1.0), cfg_pp(name), latent)
    assert_close(sample(steer, cfg_pp(name), latent), expected)
    assert_differ(sample(basic_guider(bed.model, bed), cfg_pp(name), latent), expected)


# --- no guidance: the plain samplers -------------------------------------------------------------------------------

# The plain sampler each one must become once D_u = D_λ, with its options (None: the CFG++ sampler's own).
PLAIN_EPS = {name: (name, {}) for name in STEER_SAMPLERS}
# On flow ComfyUI's euler_ancestral and dpmpp_2s_ancestral switch to RF forms with another noise split, and its
# dpmpp_2m is the EPS form: the α-aware references are first-order ER-SDE with noise scaler ς² (= ancestral DDIM at
# η = 1, i.e. DPM-Solver++(1) SDE), DPM++ 2M SDE at η = 0 (= DPM-Solver++(2M)) and DPM++ SDE at η = 0 (= 2S).
PLAIN_FLOW = {
    "euler": ("euler", {}),
    "euler_ancestral": ("er_sde", {"max_stage": 1, "noise_scaler": lambda v: v**2}),
    "dpmpp_2m": ("dpmpp_2m_sde", {"eta": 0.0}),
    "dpmpp_2s_ancestral": ("dpmpp_sde", {"eta": 0.0}),
}


@pytest.mark.parametrize("flow", [False, True], ids=["eps", "flow"])
@pytest.mark.parametrize("name", STEER_SAMPLERS)
def test_skipping_cfg_everywhere_gives_the_plain_sampler(sd15_bed, sd3_bed, cfg_pp, patch, name, flow):
    """SteerCFGSkip on every step makes D_u = D_λ = D_c: CFG++ must reduce to the plain sampler, α-aware on flow."""
    bed = sd3_bed if flow else sd15_bed
    reference, options = (PLAIN_FLOW if flow else PLAIN_EPS)[name]
    steer_options = {"eta": 0.0} if flow and name == "dpmpp_2s_ancestral" else {}
    # ER-SDE moves a first σ of 1 to 1 − 1e-4 (CFG++ Euler, as ComfyUI's, does not): start one step in.
    skip_steps = 1 if reference == "er_sde" else 0
    everywhere = patch(bed.model, "SteerCFGSkip", mode="sigma", sigma_high=1e-3, sigma_low=0.0)
    guider, latent = core_guider(everywhere, bed, 1.5), bed.latent(1)
    expected = sample(guider, comfy.samplers.ksampler(reference, options), latent, skip_steps=skip_steps)
    assert_close(sample(guider, cfg_pp(name, **steer_options), latent, skip_steps=skip_steps), expected)
    assert_differ(sample(core_guider(bed.model, bed, 1.5), cfg_pp(name, **steer_options), latent,
                         skip_steps=skip_steps), expected)


@pytest.mark.parametrize("bed_name", ["sd15", "sd3"])
def test_basic_guider_renoises_with_the_cond_not_zeros(request, cfg_pp, bed_name):
    """Without a negative the uncond is not computed; ComfyUI's euler_cfg_pp then renoises with zeros."""
    bed = request.getfixturevalue(f"{bed_name}_bed")
    guider, latent = basic_guider(bed.model, bed), bed.latent(1)
    plain = sample(guider, "euler", latent)
    assert_close(sample(guider, cfg_pp("euler"), latent), plain)
    assert_differ(sample(guider, "euler_cfg_pp", latent), plain)


def test_a_guider_that_skips_the_post_cfg_hooks_is_refused(inprocess_bed, cfg_pp):
    class Bypassing(comfy.samplers.CFGGuider):
        def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 - core's signature
            return comfy.samplers.calc_cond_batch(self.inner_model, [self.conds["positive"]], x, timestep,
                                                  model_options)[0]

    guider = Bypassing(inprocess_bed.model)
    guider.set_conds(inprocess_bed.positive, inprocess_bed.negative)
    with pytest.raises(RuntimeError, match="post-CFG hooks"):
        sample(guider, cfg_pp("euler"), inprocess_bed.latent(1), steps=2)


# --- doors ---------------------------------------------------------------------------------------------------------

def test_node_schema(steer_nodes):
    schema = steer_nodes["SteerCFGPPSampler"].define_schema()
    assert schema.category == "sampling/steer"
    assert [i.id for i in schema.inputs] == ["sampler_name", "eta", "s_noise"]
    assert all(i.tooltip for i in schema.inputs) and schema.outputs[0].io_type == "SAMPLER"
    assert schema.inputs[0].options == STEER_SAMPLERS


def test_ksampler_lists_the_names_and_nothing_of_comfyui_is_replaced(steer):
    register = sys.modules[f"{steer.__name__}.nodes.cfg_pp"].register_ksampler_names
    register()  # a second time: idempotent
    names = [f"steer_{name}_cfg_pp" for name in STEER_SAMPLERS]
    assert comfy.samplers.KSampler.SAMPLERS is comfy.samplers.SAMPLER_NAMES
    for listing in (comfy.samplers.KSAMPLER_NAMES, comfy.samplers.SAMPLER_NAMES):
        assert [n for n in listing if n.startswith("steer_")] == names
    for name in comfy.samplers.KSAMPLER_NAMES:
        function = getattr(k_sampling, f"sample_{name}")
        assert (function.__module__ == k_sampling.__name__) != (name in names), name


@pytest.mark.parametrize("name", STEER_SAMPLERS)
def test_ksampler_name_equals_the_node_through_sampler_custom_advanced(inprocess_bed, cfg_pp, name):
    bed, latent, seed, cfg = inprocess_bed, inprocess_bed.latent(2), 3, 1.2
    through_ksampler = ksampler(bed.model, bed.positive, bed.negative, cfg, f"steer_{name}_cfg_pp", latent,
                                seed=seed)
    guider = CFGGuider.execute(bed.model, bed.positive, bed.negative, cfg).result[0]
    noise = RandomNoise.execute(seed).result[0]
    schedule = BasicScheduler.execute(bed.model, "normal", 6, 1.0).result[0]
    node = SamplerCustomAdvanced.execute(noise, guider, cfg_pp(name), schedule, {"samples": latent}).result[0]
    assert torch.equal(through_ksampler, node["samples"])


# --- the scheduled scale -------------------------------------------------------------------------------------------

class ScheduledCFG(comfy.samplers.CFGGuider):
    """Reference: core's sampling_function at an explicitly given scale per schedule step."""

    def __init__(self, model, bed, scales: list[float]):
        super().__init__(model)
        self.set_conds(bed.positive, bed.negative)
        self.scales = scales

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 - core's signature
        schedule = model_options["transformer_options"]["sample_sigmas"].tolist()
        step = min(range(len(schedule)), key=lambda i: abs(schedule[i] - float(timestep[0])))
        return comfy.samplers.sampling_function(self.inner_model, x, timestep, self.conds.get("negative"),
                                                self.conds.get("positive"), self.scales[step], model_options, seed)


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m"])
def test_scaled_schedule_is_the_lambda_of_each_step(sd15_bed, cfg_pp, patch, name):
    bed, latent, steps = sd15_bed, sd15_bed.latent(1), 6
    cfg, cfg_min = 1.2, 0.2  # linear_down: 1.2, 1.0, 0.8, 0.6, 0.4, 0.2 (1.0 still computes the uncond)
    scales = [cfg_min + (cfg - cfg_min) * (1 - i / (steps - 1)) for i in range(steps)]
    assert math.isclose(scales[1], 1.0)
    scheduled = patch(bed.model, "SteerScaleSchedule", curve="linear_down", cfg_min=cfg_min)
    expected = sample(ScheduledCFG(bed.model, bed, scales), cfg_pp(name), latent, steps)
    assert_close(sample(core_guider(scheduled, bed, cfg), cfg_pp(name), latent, steps), expected)
    assert_differ(sample(core_guider(bed.model, bed, cfg), cfg_pp(name), latent, steps), expected)
