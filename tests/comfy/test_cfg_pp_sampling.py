"""SteerCFGPPSampler in the real ComfyUI: ComfyUI's own CFG++ samplers where those are right (EPS; Euler on flow),
ComfyUI's plain α-aware samplers where guidance is off, no zero-uncond with BasicGuider, the KSampler door, and the
scheduled scale."""

from __future__ import annotations

import copy
import functools
import math
import sys

import comfy.k_diffusion.sampling as k_sampling
import comfy.model_sampling
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

SDE_SAMPLERS = ["dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde",
                "dpmpp_3m_sde_gpu"]
STEER_SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2s_ancestral", "res_multistep",
                  "res_multistep_ancestral", "gradient_estimation", *SDE_SAMPLERS]
SCALES = [0.6, 1.0, 1.5]


@pytest.fixture(scope="module")
def cfg_pp(steer_nodes):
    """The SAMPLER of SteerCFGPPSampler for a sampler name, with the schema's defaults overridden by keyword."""
    node = steer_nodes["SteerCFGPPSampler"]

    def sampler(name: str, **inputs) -> comfy.samplers.KSAMPLER:
        values = {i.id: getattr(i, "default", None) for i in node.define_schema().inputs} | inputs
        return node.execute(**(values | {"sampler_name": name})).result[0]

    return sampler


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
@pytest.mark.parametrize("name", ["euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2s_ancestral", "gradient_estimation"])
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

@torch.no_grad()
def alpha_aware_res_multistep(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=0.0, s_noise=1.0):
    """Plain RES multistep, written here as ComfyUI's res_multistep with λ = log(α/σ) in place of −log σ and its
    ancestral step taken on σ/α at x's scale α_t: the reference on flow, where ComfyUI's own is the EPS form. On EPS
    it is ComfyUI's res_multistep(_ancestral) (tested below)."""
    model_sampling = model.inner_model.model_patcher.get_model_object("model_sampling")
    sigmas = k_sampling.offset_first_sigma_for_snr(sigmas, model_sampling)
    noise_sampler = k_sampling.default_noise_sampler(x, seed=extra_args.get("seed"))
    half_log_snr = functools.partial(k_sampling.sigma_to_half_log_snr, model_sampling=model_sampling)
    old_denoised, old_half_log_snr_down = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]), **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        alpha_s, alpha_t = (sigma * half_log_snr(sigma).exp() for sigma in (sigmas[i], sigmas[i + 1]))
        sigma_down, sigma_up = k_sampling.get_ancestral_step(sigmas[i] / alpha_s, sigmas[i + 1] / alpha_t, eta)
        sigma_down, sigma_up = alpha_t * sigma_down, alpha_t * sigma_up
        half_log_snr_down = (alpha_t / sigma_down).log()
        if old_denoised is None:
            x = alpha_t * denoised + sigma_down * (x - alpha_s * denoised) / sigmas[i]
        else:
            h = half_log_snr_down - half_log_snr(sigmas[i])
            c2 = (half_log_snr(sigmas[i - 1]) - old_half_log_snr_down) / h
            phi1 = torch.expm1(-h) / -h
            phi2 = (phi1 - 1) / -h
            x = sigma_down / sigmas[i] * x + alpha_t * h * ((phi1 - phi2 / c2) * denoised + phi2 / c2 * old_denoised)
        if eta > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        old_denoised, old_half_log_snr_down = denoised, half_log_snr_down
    return x


def plain(reference, options: dict) -> comfy.samplers.KSAMPLER:
    if isinstance(reference, str):
        return comfy.samplers.ksampler(reference, options)
    return comfy.samplers.KSAMPLER(reference, extra_options=options)


# The plain sampler each one must become once D_u = D_λ, with its options.
PLAIN_EPS = {name: (name, {}) for name in STEER_SAMPLERS}
# On flow ComfyUI's euler_ancestral and dpmpp_2s_ancestral switch to RF forms with another noise split, and its
# dpmpp_2m is the EPS form: the α-aware references are first-order ER-SDE with noise scaler ς² (= ancestral DDIM at
# η = 1, i.e. DPM-Solver++(1) SDE), DPM++ 2M SDE at η = 0 (= DPM-Solver++(2M)) and DPM++ SDE at η = 0 (= 2S).
# ComfyUI's res_multistep is the EPS form too (and its ancestral noise is not α-aware); its gradient_estimation (Euler
# in σ) and its SDE samplers are right on flow.
PLAIN_FLOW = {
    "euler": ("euler", {}),
    "euler_ancestral": ("er_sde", {"max_stage": 1, "noise_scaler": lambda v: v**2}),
    "dpmpp_2m": ("dpmpp_2m_sde", {"eta": 0.0}),
    "dpmpp_2s_ancestral": ("dpmpp_sde", {"eta": 0.0}),
    "res_multistep": (alpha_aware_res_multistep, {}),
    "res_multistep_ancestral": (alpha_aware_res_multistep, {"eta": 0.5}),
    "gradient_estimation": ("gradient_estimation", {}),
} | {name: (name, {}) for name in SDE_SAMPLERS}


# ER-SDE moves a first σ of 1 to 1 − 1e-4 (CFG++ Euler, as ComfyUI's, does not): start one step in.
FIRST_STEP_ROUNDING = {("euler_ancestral", True): 1}
# Options of the CFG++ sampler for the flow comparison. At η = 1 an ancestral step's σ_down = σ_t·e^{−h} comes out of
# σ_t² − σ_up², which float32 cancels where e^{−h} is small: the reference's formula and Steer's round differently
# there (measured: 9.3e-4 on values of 7.3 after the RES step that follows, on the tiny SD3), so RES is compared at
# η = 0.5, where nothing cancels (η = 1 is compared with ComfyUI's own on EPS).
STEER_FLOW_OPTIONS = {"dpmpp_2s_ancestral": {"eta": 0.0}, "res_multistep_ancestral": {"eta": 0.5}}


@pytest.mark.parametrize(("name", "eta"), [("res_multistep", 0.0), ("res_multistep_ancestral", 1.0),
                                           ("res_multistep_ancestral", 0.5)])
def test_the_alpha_aware_res_reference_is_comfyuis_on_eps(sd15_bed, name, eta):
    guider, latent = core_guider(sd15_bed.model, sd15_bed, 3.0), sd15_bed.latent(1)
    options = {"eta": eta} if "ancestral" in name else {}
    assert_close(sample(guider, plain(alpha_aware_res_multistep, {"eta": eta}), latent),
                 sample(guider, plain(name, options), latent))


@pytest.mark.parametrize("flow", [False, True], ids=["eps", "flow"])
@pytest.mark.parametrize("name", STEER_SAMPLERS)
def test_skipping_cfg_everywhere_gives_the_plain_sampler(sd15_bed, sd3_bed, cfg_pp, patch, name, flow):
    """SteerCFGSkip on every step makes D_u = D_λ = D_c: CFG++ must reduce to the plain sampler, α-aware on flow."""
    bed = sd3_bed if flow else sd15_bed
    reference, options = (PLAIN_FLOW if flow else PLAIN_EPS)[name]
    steer_options = STEER_FLOW_OPTIONS.get(name, {}) if flow else {}
    skip_steps = FIRST_STEP_ROUNDING.get((name, flow), 0)
    everywhere = patch(bed.model, "SteerCFGSkip", mode="sigma", sigma_high=1e-3, sigma_low=0.0)
    guider, latent = core_guider(everywhere, bed, 1.5), bed.latent(1)
    expected = sample(guider, plain(reference, options), latent, skip_steps=skip_steps)
    assert_close(sample(guider, cfg_pp(name, **steer_options), latent, skip_steps=skip_steps), expected)
    assert_differ(sample(core_guider(bed.model, bed, 1.5), cfg_pp(name, **steer_options), latent,
                         skip_steps=skip_steps), expected)


@pytest.mark.parametrize("flow", [False, True], ids=["eps", "flow"])
@pytest.mark.parametrize("name", STEER_SAMPLERS[4:])
def test_basic_guider_gives_the_plain_sampler(sd15_bed, sd3_bed, cfg_pp, name, flow):
    """Guidance off the other way: BasicGuider computes no uncond, and CFG++ renoises with the cond."""
    bed = sd3_bed if flow else sd15_bed
    reference, options = (PLAIN_FLOW if flow else PLAIN_EPS)[name]
    guider, latent = basic_guider(bed.model, bed), bed.latent(1)
    steer_options = STEER_FLOW_OPTIONS.get(name, {}) if flow else {}
    skip_steps = FIRST_STEP_ROUNDING.get((name, flow), 0)
    assert_close(sample(guider, cfg_pp(name, **steer_options), latent, skip_steps=skip_steps),
                 sample(guider, plain(reference, options), latent, skip_steps=skip_steps))


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


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m", "res_multistep_ancestral", "gradient_estimation",
                                  "dpmpp_3m_sde"])
def test_scaled_schedule_is_the_lambda_of_each_step(sd15_bed, cfg_pp, patch, name):
    bed, latent, steps = sd15_bed, sd15_bed.latent(1), 6
    cfg, cfg_min = 1.2, 0.2  # linear_down: 1.2, 1.0, 0.8, 0.6, 0.4, 0.2 (1.0 still computes the uncond)
    scales = [cfg_min + (cfg - cfg_min) * (1 - i / (steps - 1)) for i in range(steps)]
    assert math.isclose(scales[1], 1.0)
    scheduled = patch(bed.model, "SteerScaleSchedule", curve="linear_down", cfg_min=cfg_min)
    expected = sample(ScheduledCFG(bed.model, bed, scales), cfg_pp(name), latent, steps)
    assert_close(sample(core_guider(scheduled, bed, cfg), cfg_pp(name), latent, steps), expected)
    assert_differ(sample(core_guider(bed.model, bed, cfg), cfg_pp(name), latent, steps), expected)


# --- where ComfyUI's own CFG++ samplers are wrong ------------------------------------------------------------------

@pytest.mark.parametrize("flow", [False, True], ids=["eps", "flow"])
def test_comfyuis_res_multistep_cfg_pp_is_not_steers(sd15_bed, sd3_bed, cfg_pp, flow):
    """From its second step ComfyUI's res_multistep_cfg_pp integrates D_u where D_λ belongs (guiders/cfg_pp.py,
    engine test test_comfyuis_res_multistep_cfg_pp_integrates_the_uncond); on flow it is also the EPS form."""
    bed = sd3_bed if flow else sd15_bed
    guider, latent = core_guider(bed.model, bed, 1.5), bed.latent(1)
    for name in ("res_multistep", "res_multistep_ancestral"):
        assert_differ(sample(guider, f"{name}_cfg_pp", latent), sample(guider, cfg_pp(name), latent))


def after_first_step(guider, sampler, latent: torch.Tensor) -> torch.Tensor:
    """x after the first step of the schedule σ_1 > σ_2 > 0 of a 3-step run: the x handed to the second callback."""
    states = []
    noise = comfy.sample.prepare_noise(latent, 1)
    schedule = sigmas(guider.model_patcher, 3)[1:]
    guider.sample(noise, latent, comfy.samplers.sampler_object(sampler) if isinstance(sampler, str) else sampler,
                  schedule, disable_pbar=True, seed=1, callback=lambda _i, _x0, x, _n: states.append(x))
    return states[1]


@pytest.mark.parametrize("flow", [False, True], ids=["eps", "flow"])
def test_the_first_order_step_is_euler_cfg_pp_except_comfyuis_res_multistep_on_flow(sd15_bed, sd3_bed, cfg_pp, flow):
    """res_multistep's first step is first order: its CFG++ form must be the step of the right euler_cfg_pp (ComfyUI's,
    α-aware). ComfyUI's res_multistep_cfg_pp is, on EPS only: on flow its EPS form lands on D_λ + σ_t·(x − D_u)/σ_s
    instead of α_t·D_λ + σ_t·(x − α_s·D_u)/σ_s: it adds σ_t·(D_λ − D_u) = (σ_t/α_t)·(what guidance adds to x_t) more."""
    bed = sd3_bed if flow else sd15_bed
    guider, latent = core_guider(bed.model, bed, 1.5), bed.latent(1)
    expected = after_first_step(guider, "euler_cfg_pp", latent)
    assert_close(after_first_step(guider, cfg_pp("res_multistep"), latent), expected)
    sigma_t = float(sigmas(bed.model, 3)[2])
    alpha_t = 1 - sigma_t if flow else 1.0
    guidance = expected - after_first_step(core_guider(bed.model, bed, 0.0), "euler_cfg_pp", latent)
    error = after_first_step(guider, "res_multistep_cfg_pp", latent) - expected
    assert guidance.abs().mean() > 1e-4 * expected.abs().mean()
    torch.testing.assert_close(error, (sigma_t / alpha_t) * guidance if flow else torch.zeros_like(error),
                               rtol=1e-3, atol=1e-3 * float(guidance.abs().max()))


@pytest.mark.parametrize("flow", [False, True], ids=["eps", "flow"])
def test_gradient_estimation_at_gamma_one_is_euler_cfg_pp_except_comfyuis_on_flow(sd15_bed, sd3_bed, flow):
    """At γ = 1 gradient estimation is Euler: its CFG++ form must be the right euler_cfg_pp (ComfyUI's, α-aware).
    ComfyUI's gradient_estimation_cfg_pp is, on EPS only: on flow it shifts x by D_λ − D_u without α_s."""
    bed = sd3_bed if flow else sd15_bed
    guider, latent = core_guider(bed.model, bed, 1.5), bed.latent(1)
    expected = sample(guider, "euler_cfg_pp", latent)
    steer = comfy.samplers.KSAMPLER(k_sampling.sample_steer_gradient_estimation_cfg_pp, {"ge_gamma": 1.0})
    assert_close(sample(guider, steer, latent), expected)
    comfy_ge = sample(guider, comfy.samplers.ksampler("gradient_estimation_cfg_pp", {"ge_gamma": 1.0}), latent)
    if flow:
        assert_differ(comfy_ge, expected)
        assert_differ(sample(guider, "gradient_estimation_cfg_pp", latent),
                      sample(guider, "steer_gradient_estimation_cfg_pp", latent))
    else:
        assert_close(comfy_ge, expected)


# --- the SDE samplers: seed, eta, s_noise, noise scale ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["dpmpp_2m_sde", "dpmpp_3m_sde_gpu", "res_multistep_ancestral"])
def test_noise_follows_the_seed(sd15_bed, cfg_pp, name):
    guider, latent = core_guider(sd15_bed.model, sd15_bed, 1.2), sd15_bed.latent(2)
    first = sample(guider, cfg_pp(name), latent, seed=5)
    assert torch.equal(first, sample(guider, cfg_pp(name), latent, seed=5))
    assert_differ(sample(guider, cfg_pp(name), latent, seed=6), first)


@pytest.mark.parametrize("flow", [False, True], ids=["eps", "flow"])
@pytest.mark.parametrize(("eta", "s_noise"), [(0.0, 1.0), (0.5, 1.0), (1.5, 0.6)])
@pytest.mark.parametrize("name", ["dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde"])
def test_sde_noise_options_are_the_plain_samplers(sd15_bed, sd3_bed, cfg_pp, name, eta, s_noise, flow):
    """Without guidance (BasicGuider) eta and s_noise act as in ComfyUI's plain SDE sampler; with guidance they count
    too."""
    bed = sd3_bed if flow else sd15_bed
    latent, options = bed.latent(1), {"eta": eta, "s_noise": s_noise}
    expected = sample(basic_guider(bed.model, bed), comfy.samplers.ksampler(name, options), latent)
    assert_close(sample(basic_guider(bed.model, bed), cfg_pp(name, **options), latent), expected)
    guided = core_guider(bed.model, bed, 1.2)
    assert_differ(sample(guided, cfg_pp(name, **options), latent), sample(guided, cfg_pp(name), latent))


def test_sde_at_eta_zero_is_dpmpp_2m(sd15_bed, sd3_bed, cfg_pp):
    for bed in (sd15_bed, sd3_bed):
        guider, latent = core_guider(bed.model, bed, 1.2), bed.latent(1)
        expected = sample(guider, cfg_pp("dpmpp_2m"), latent)
        assert_close(sample(guider, cfg_pp("dpmpp_2m_sde", eta=0.0), latent), expected)


def with_noise_scale(model, noise_scale: float):
    """A clone of `model` whose model_sampling has `noise_scale` (ComfyUI ≥ 0.8 defines it on flow models)."""
    patched = model.clone()
    model_sampling = copy.copy(patched.get_model_object("model_sampling"))
    model_sampling.noise_scale = noise_scale
    patched.add_object_patch("model_sampling", model_sampling)
    return patched


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2s_ancestral", "res_multistep_ancestral", "dpmpp_2m_sde",
                                  "dpmpp_3m_sde"])
def test_s_noise_is_scaled_by_the_models_noise_scale(sd15_bed, cfg_pp, name):
    """Read with getattr, so on every ComfyUI (the EPS model's initial noise does not use it, so only s_noise does)."""
    bed, latent = sd15_bed, sd15_bed.latent(1)
    scaled = core_guider(with_noise_scale(bed.model, 2.0), bed, 1.2)
    assert_close(sample(scaled, cfg_pp(name, s_noise=0.5), latent),
                 sample(core_guider(bed.model, bed, 1.2), cfg_pp(name, s_noise=1.0), latent))


@pytest.mark.skipif(not hasattr(comfy.model_sampling.ModelSamplingDiscreteFlow, "set_noise_scale"),
                    reason="this ComfyUI has no model noise scale (added after 0.3.75)")
@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_noise_scale_as_comfyuis_samplers(sd3_bed, cfg_pp, name):
    """Where ComfyUI has it (initial noise and its samplers' s_noise); positive = negative, so core's plain samplers and
    its α-aware euler_ancestral_cfg_pp are the references."""
    bed, latent = sd3_bed, sd3_bed.latent(1)
    guider = comfy.samplers.CFGGuider(with_noise_scale(bed.model, 1.5))
    guider.set_conds(bed.positive, bed.positive)
    guider.set_cfg(1.2)
    reference = {"euler_ancestral": "euler_ancestral_cfg_pp"}.get(name, name)
    assert_close(sample(guider, cfg_pp(name), latent), sample(guider, reference, latent))
