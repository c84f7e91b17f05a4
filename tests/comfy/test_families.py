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

from testbed.families import FAMILIES, load_family
from testbed.perturbations import Branch, PerturbedReference
from testbed.sampling import FormulaGuider, core_guider, custom_advanced, ksampler, mimic_threshold, run

STEPS = 4
# (family, cfg): Flux-dev runs at cfg 1 with FluxGuidance; Flux with real CFG at cfg > 1.
CASES = [("sd15", 6.0), ("sd15_v", 6.0), ("sdxl", 6.0), ("sd3", 5.0), ("flux", 1.0), ("flux", 4.0), ("wan", 5.0),
         ("chroma", 4.0), ("hunyuan_video", 1.0), ("hunyuan_video", 4.0), ("lumina2", 4.0), ("qwen_image", 4.0)]
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
    families = {name: load_family(name) for name in FAMILIES}
    expected = {"sdxl": comfy.model_base.SDXL, "sd3": comfy.model_base.SD3, "flux": comfy.model_base.Flux,
                "wan": comfy.model_base.WAN21, "chroma": comfy.model_base.Chroma,
                "hunyuan_video": comfy.model_base.HunyuanVideo, "lumina2": comfy.model_base.Lumina2,
                "qwen_image": comfy.model_base.QwenImage}
    for name, model_class in expected.items():
        assert type(families[name].model.model) is model_class, name
    assert isinstance(families["sd15"].model.get_model_object("model_sampling"), comfy.model_sampling.EPS)
    assert isinstance(families["sd15_v"].model.get_model_object("model_sampling"), comfy.model_sampling.V_PREDICTION)
    assert families["flux"].model.model.diffusion_model.params.guidance_embed
    assert families["hunyuan_video"].model.model.diffusion_model.params.guidance_embed
    for name in ("wan", "hunyuan_video", "qwen_image"):
        assert families[name].latent(1).ndim == 5, name
    for family in families.values():
        plain = run(core_guider(family.model, family, 1.0), "euler", family.latent(1), steps=2)
        guided = run(core_guider(family.model, family, 5.0), "euler", family.latent(1), steps=2)
        assert (guided - plain).abs().mean() > 0.05 * plain.abs().mean(), family.name
    # SDXL's and HunyuanVideo's pooled vectors and Flux's distilled guidance reach the model.
    sdxl, flux, hunyuan = families["sdxl"], families["flux"], families["hunyuan_video"]
    for family, changed in ((sdxl, [[sdxl.positive[0][0], {"pooled_output": -sdxl.positive[0][1]["pooled_output"]}]]),
                            (hunyuan, [[hunyuan.positive[0][0],
                                        {"pooled_output": -hunyuan.positive[0][1]["pooled_output"]}]]),
                            (flux, FluxGuidance.execute(flux.positive, 1.0).result[0])):
        base = run(core_guider(family.model, family, 1.0), "euler", family.latent(1), steps=2)
        other = core_guider(family.model, family, 1.0)
        other.set_conds(changed, family.negative)
        assert (run(other, "euler", family.latent(1), steps=2) - base).abs().mean() > 1e-3 * base.abs().mean()


def skip_block(args, _extra):
    """Core SkipLayerGuidanceDiT's skip: the block passes its input through."""
    return args


def identity_attention_in_layer(layer: int, layers: int, joint_tokens: int):
    """An attention override that makes main layer `layer` of a Lumina 2 model (no `dit` replaces there) output each
    token's own value: its joint calls are the ones over all `joint_tokens`, `layers` of them per model call."""
    calls = []

    def override(func, q, k, v, *args, **kwargs):
        out = func(q, k, v, *args, **kwargs)
        if q.shape[2] != joint_tokens:
            return out
        calls.append(None)
        return v.transpose(1, 2).reshape(out.shape) if (len(calls) - 1) % layers == layer else out

    return override


@pytest.mark.parametrize("name", ["flux", "wan", "chroma", "hunyuan_video", "lumina2", "qwen_image"])
def test_every_dit_block_matters(steer, name):
    """Skipping any one block (core's `dit` replace, as SkipLayerGuidanceDiT does; Lumina 2 has none, so there an
    identity attention in that layer) clearly changes the prediction: perturbation tests on any layer of the tiny
    models assert something."""
    family = load_family(name)
    diffusion_model = family.model.model.diffusion_model
    blocks = [("double_block", i) for i in range(len(getattr(diffusion_model, "double_blocks", [])))]
    blocks += [("single_block", i) for i in range(len(getattr(diffusion_model, "single_blocks", [])))]
    blocks += [("double_block", i) for i in range(len(getattr(diffusion_model, "blocks", [])))]  # Wan
    blocks += [("double_block", i) for i in range(len(getattr(diffusion_model, "transformer_blocks", [])))]  # Qwen
    blocks += [("layer", i) for i in range(len(getattr(diffusion_model, "layers", [])))]  # Lumina 2
    assert blocks
    base = run(core_guider(family.model, family, 1.0), "euler", family.latent(1), steps=2)
    for kind, index in blocks:
        perturbed = family.model.clone()
        if kind == "layer":
            joint_tokens = family.positive[0][0].shape[1] + math.prod(size // 2 for size in family.latent_shape[-2:])
            override = identity_attention_in_layer(index, len(diffusion_model.layers), joint_tokens)
            perturbed.model_options["transformer_options"]["optimized_attention_override"] = override
        else:
            perturbed.set_model_patch_replace(skip_block, "dit", kind, index)
        out = run(core_guider(perturbed, family, 1.0), "euler", family.latent(1), steps=2)
        assert ((out - base).norm() / base.norm()).item() > 0.02, (name, kind, index)


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
        patch = (1, 2, 2) if len(family.latent_shape) == 4 else (2, 2)  # video latents: [C, frames, h, w]
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
