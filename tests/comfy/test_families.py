"""Every model family × every Steer node × both doors (KSampler, SamplerCustomAdvanced) in the real ComfyUI: the result
equals an independent reference, or the node refuses before sampling with a message naming what works.

References are written here from the papers' formulas over core's own batched `calc_cond_batch` (FormulaGuider), or
are core's own nodes (CFGGuider, PerturbedAttentionGuidance, the euler_cfg_pp sampler). Euler, 4 steps, batch 2.
"""

from __future__ import annotations

import math

import comfy.model_base
import comfy.model_sampling
import comfy.samplers
import pytest
import torch
from comfy_extras.nodes_flux import FluxGuidance
from comfy_extras.nodes_pag import PerturbedAttentionGuidance

from testbed.families import load_family
from testbed.perturbations import Branch, PerturbedReference
from testbed.sampling import FormulaGuider, core_guider, custom_advanced, ksampler, mimic_threshold, run

STEPS = 4
# (family, cfg): Flux-dev runs at cfg 1 with FluxGuidance; Flux with real CFG at cfg > 1.
CASES = [("sd15", 6.0), ("sd15_v", 6.0), ("sdxl", 6.0), ("sd3", 5.0), ("flux", 1.0), ("flux", 4.0), ("wan", 5.0)]
CASE_IDS = [f"{name}-cfg{cfg:g}" for name, cfg in CASES]
UNET_FAMILIES = ("sd15", "sd15_v", "sdxl")


def apply(steer_nodes, model, node_id: str, **inputs):
    schema = steer_nodes[node_id].define_schema()
    values = {i.id: getattr(i, "default", None) for i in schema.inputs if i.id != "model"} | inputs
    return steer_nodes[node_id].execute(model, **values).result[0]


def cfg_x0(out: list[torch.Tensor], scale: float) -> torch.Tensor:
    return out[1] + (out[0] - out[1]) * scale


def both_doors(steer_nodes, model, family, cfg: float, sampler: str = "euler") -> torch.Tensor:
    """The patched model through KSampler and through SamplerCustomAdvanced with SteerGuider: identical latents."""
    latent = family.latent(2)
    via_ksampler = ksampler(model, family.positive, family.negative, cfg, sampler, latent, steps=STEPS)
    guider = steer_nodes["SteerGuider"].execute(model, family.positive, family.negative, cfg).result[0]
    via_guider = custom_advanced(guider, sampler, latent, steps=STEPS)
    assert torch.isfinite(via_ksampler).all()
    assert torch.equal(via_ksampler, via_guider)
    return via_ksampler


def reference(family, formula, extra: tuple = ()) -> torch.Tensor:
    return custom_advanced(FormulaGuider(family.model, family, formula, extra), "euler", family.latent(2), steps=STEPS)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))


@pytest.fixture(params=CASES, ids=CASE_IDS)
def case(request, steer):
    name, cfg = request.param
    return load_family(name), cfg


# --- the families are what they claim ------------------------------------------------------------------------------

def test_each_family_is_detected_and_its_conditioning_matters(steer):
    sd15, sd15_v, sdxl, sd3, flux, wan = (load_family(n) for n in ("sd15", "sd15_v", "sdxl", "sd3", "flux", "wan"))
    assert isinstance(sd15.model.get_model_object("model_sampling"), comfy.model_sampling.EPS)
    assert isinstance(sd15_v.model.get_model_object("model_sampling"), comfy.model_sampling.V_PREDICTION)
    assert isinstance(sdxl.model.model, comfy.model_base.SDXL)
    assert isinstance(sd3.model.model, comfy.model_base.SD3)
    assert isinstance(flux.model.model, comfy.model_base.Flux)
    assert flux.model.model.diffusion_model.params.guidance_embed
    assert isinstance(wan.model.model, comfy.model_base.WAN21) and wan.latent(1).ndim == 5
    for family in (sd15, sd15_v, sdxl, sd3, flux, wan):
        plain = run(core_guider(family.model, family, 1.0), "euler", family.latent(1), steps=2)
        guided = run(core_guider(family.model, family, 5.0), "euler", family.latent(1), steps=2)
        assert (guided - plain).abs().mean() > 0.05 * plain.abs().mean(), family.name
    # SDXL's pooled vector (ADM) and Flux's distilled guidance reach the model.
    for family, changed in ((sdxl, [[sdxl.positive[0][0], {"pooled_output": -sdxl.positive[0][1]["pooled_output"]}]]),
                            (flux, FluxGuidance.execute(flux.positive, 1.0).result[0])):
        base = run(core_guider(family.model, family, 1.0), "euler", family.latent(1), steps=2)
        other = core_guider(family.model, family, 1.0)
        other.set_conds(changed, family.negative)
        assert (run(other, "euler", family.latent(1), steps=2) - base).abs().mean() > 1e-3 * base.abs().mean()


# --- every Steer node on every family -----------------------------------------------------------------------------

def test_guider_is_core_cfg(case, steer_nodes):
    family, cfg = case
    latent = family.latent(2)
    expected = custom_advanced(core_guider(family.model, family, cfg), "euler", latent, steps=STEPS)
    guider = steer_nodes["SteerGuider"].execute(family.model, family.positive, family.negative, cfg).result[0]
    assert torch.equal(custom_advanced(guider, "euler", latent, steps=STEPS), expected)
    assert torch.equal(ksampler(family.model, family.positive, family.negative, cfg, "euler", latent, steps=STEPS),
                       expected)


def test_scale_schedule(case, steer_nodes):
    family, cfg = case
    cfg_min = 1.5
    model = apply(steer_nodes, family.model, "SteerScaleSchedule", curve="linear_down", cfg_min=cfg_min)

    def formula(out, step, steps, _x):
        f = 1 - step / (steps - 1)
        return cfg_x0(out, cfg * f + cfg_min * (1 - f))

    assert_close(both_doors(steer_nodes, model, family, cfg), reference(family, formula))




def test_dynamic_threshold(case, steer_nodes):
    family, cfg = case
    cfg = cfg * 2  # thresholding is for scales above the mimic scale
    mimic = 3.0
    model = apply(steer_nodes, family.model, "SteerDynamicThreshold", mimic_scale=mimic)

    def formula(out, _step, _steps, _x):
        if math.isclose(cfg, 1.0):  # no guidance, nothing to threshold: the positive alone
            return out[0]
        return mimic_threshold(cfg_x0(out, cfg), cfg_x0(out, mimic))

    assert_close(both_doors(steer_nodes, model, family, cfg), reference(family, formula), rtol=1e-4)


def test_cfg_skip(case, steer_nodes):
    family, cfg = case
    model = apply(steer_nodes, family.model, "SteerCFGSkip", mode="percent", start_percent=0.5, end_percent=1.0)

    def formula(out, step, steps, _x):
        return out[0] if step / (steps - 1) < 0.5 else cfg_x0(out, cfg)

    assert_close(both_doors(steer_nodes, model, family, cfg), reference(family, formula))


@pytest.mark.parametrize("mode", ["subtract", "perpendicular"])
def test_extra_negative(case, steer_nodes, mode):
    family, cfg = case
    weight = 0.6
    extra = family.third
    model = apply(steer_nodes, family.model, "SteerNegative", negative=extra, scale=weight, mode=mode)

    def formula(out, _step, _steps, _x):
        d_c, d_u, d_n = out
        away = d_n - d_u
        if mode == "perpendicular":
            toward = (d_c - d_u).flatten(1)
            flat = away.flatten(1)
            coefficient = (flat * toward).sum(1, keepdim=True) / (toward * toward).sum(1, keepdim=True)
            away = (flat - coefficient * toward).view_as(away)
        return cfg_x0(out, cfg) - weight * away

    assert_close(both_doors(steer_nodes, model, family, cfg), reference(family, formula, extra=(extra,)), rtol=1e-4)


def test_pag(case, steer_nodes):
    """UNets: core PerturbedAttentionGuidance; DiTs: the independent reference of testbed/perturbations.py (the
    perturbed positive in its own call; every kind and block kind: tests/comfy/test_perturbations.py)."""
    family, cfg = case
    pag_scale = 3.0
    latent = family.latent(2)
    if family.name in UNET_FAMILIES:
        model = apply(steer_nodes, family.model, "SteerPAG", scale=pag_scale, blocks="middle.0")
        core = PerturbedAttentionGuidance.execute(family.model, pag_scale).result[0]
        expected = ksampler(core, family.positive, family.negative, cfg, "euler", latent, steps=STEPS)
    else:
        model = apply(steer_nodes, family.model, "SteerPAG", scale=pag_scale, blocks="double.0")
        patch = (1, 2, 2) if family.name == "wan" else (2, 2)
        reference = PerturbedReference(family, cfg, [Branch("pag", (("double", 0, None),), pag_scale)], patch)
        expected = custom_advanced(reference, "euler", latent, steps=STEPS)
    actual = both_doors(steer_nodes, model, family, cfg)
    # One batched call against the reference's two: batches of different sizes round differently (see test_pag.py).
    assert ((actual - expected).norm() / expected.norm()).item() < 1e-4
    plain = ksampler(family.model, family.positive, family.negative, cfg, "euler", latent, steps=STEPS)
    assert ((actual - plain).norm() / plain.norm()).item() > 1e-3


def test_cfg_pp_sampler(case, steer_nodes):
    """λ 0.8 (CFG++'s range); core's euler_cfg_pp is right for Euler on EPS and on flow, so it is the reference."""
    family, _cfg = case
    lam = 0.8
    latent = family.latent(2)
    expected = custom_advanced(core_guider(family.model, family, lam), "euler_cfg_pp", latent, steps=STEPS)
    via_ksampler = ksampler(family.model, family.positive, family.negative, lam, "steer_euler_cfg_pp", latent,
                            steps=STEPS)
    sampler = steer_nodes["SteerCFGPPSampler"].execute("euler", 1.0, 1.0).result[0]
    guider = steer_nodes["SteerGuider"].execute(family.model, family.positive, family.negative, lam).result[0]
    assert_close(via_ksampler, expected, rtol=1e-4)
    assert torch.equal(custom_advanced(guider, sampler, latent, steps=STEPS), via_ksampler)
