"""Conditioning variety under Steer: areas, masks, timestep ranges, combined conds, token lengths that force separate
calls, no negative, denoise < 1, an inpainting model, ControlNet. Each result equals the reference (core's own
calc_cond_batch plus the formula), and Steer's model calls carry exactly the reference's rows."""

from __future__ import annotations

import comfy.controlnet
import comfy.hooks
import comfy.model_patcher
import comfy.supported_models
import pytest
import torch

import nodes
from testbed.comfy import MODELS
from testbed.families import hand_built_conds, load_family
from testbed.models import SD15_CONTROLNET, TINY_CONTEXT_DIM, TINY_WEIGHT_STD, random_weights, unet_config
from testbed.sampling import FormulaGuider, custom_advanced, model_calls

CFG, CFG_MIN, WEIGHT, STEPS = 6.0, 2.0, 0.5, 5


def apply(steer_nodes, model, node_id: str, **inputs):
    schema = steer_nodes[node_id].define_schema()
    values = {i.id: getattr(i, "default", None) for i in schema.inputs if i.id != "model"} | inputs
    return steer_nodes[node_id].execute(model, **values).result[0]


class Setup:
    """A model with positive, negative and extra-negative conds, a latent dict, and the KSampler denoise."""

    def __init__(self, model, positive, negative, extra, latent, denoise: float = 1.0):
        self.model, self.positive, self.negative, self.extra = model, positive, negative, extra
        self.latent, self.denoise = latent, denoise


def _tiny(bed):
    third = hand_built_conds(8, TINY_CONTEXT_DIM, seed=7)[0]
    return bed.model, bed.positive, bed.negative, third


def area(bed):
    model, positive, negative, third = _tiny(bed)
    left = nodes.ConditioningSetArea().append(positive, 32, 64, 0, 0, 1.0)[0]
    right = nodes.ConditioningSetArea().append(third, 32, 64, 32, 0, 0.8)[0]
    return Setup(model, nodes.ConditioningCombine().combine(left, right)[0], negative, third,
                 {"samples": torch.zeros(2, 4, 8, 8)})


def mask(bed):
    model, positive, negative, third = _tiny(bed)
    region = torch.zeros(1, 64, 64)
    region[:, 16:48, 8:40] = 1.0
    masked = nodes.ConditioningSetMask().append(third, region, "default", 1.0)[0]
    return Setup(model, nodes.ConditioningCombine().combine(positive, masked)[0], negative, third,
                 {"samples": torch.zeros(2, 4, 8, 8)})


def timestep_range(bed):
    model, positive, negative, third = _tiny(bed)
    early = nodes.ConditioningSetTimestepRange().set_range(positive, 0.0, 0.5)[0]
    late = nodes.ConditioningSetTimestepRange().set_range(third, 0.5, 1.0)[0]
    return Setup(model, nodes.ConditioningCombine().combine(early, late)[0], negative, third,
                 {"samples": torch.zeros(2, 4, 8, 8)})


def combined(bed):
    model, positive, negative, third = _tiny(bed)
    return Setup(model, nodes.ConditioningCombine().combine(positive, third)[0],
                 nodes.ConditioningCombine().combine(negative, third)[0], third, {"samples": torch.zeros(2, 4, 8, 8)})


def token_lengths(bed):
    """8, 77 and 154 tokens: 8 against the others has an lcm ratio above 4, so core calls it separately."""
    model, positive, _negative, _third = _tiny(bed)
    negative = hand_built_conds(77, TINY_CONTEXT_DIM, seed=8)[0]
    third = hand_built_conds(154, TINY_CONTEXT_DIM, seed=9)[0]
    return Setup(model, positive, negative, third, {"samples": torch.zeros(2, 4, 8, 8)})


def img2img(bed):
    model, positive, negative, third = _tiny(bed)
    image = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    return Setup(model, positive, negative, third, {"samples": image}, denoise=0.55)


def inpainting(bed):
    """An SD1.5 inpainting model (9 input channels: latent, mask, masked image) with a noise mask, built in-process."""
    config = comfy.supported_models.SD15(unet_config(32, [1, 2], TINY_CONTEXT_DIM) | {"in_channels": 9})
    config.unet_config["num_heads"] = 2
    config.set_inference_dtype(torch.float32, None)
    cpu = torch.device("cpu")
    base = config.get_model({}, device=cpu)
    base.diffusion_model.load_state_dict(random_weights(base.diffusion_model, "tiny_sd15_inpaint", std=TINY_WEIGHT_STD))
    model = comfy.model_patcher.ModelPatcher(base, load_device=cpu, offload_device=cpu)
    _, positive, negative, third = _tiny(bed)
    image = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    hole = torch.zeros(2, 1, 8, 8)
    hole[:, :, 2:6, 2:6] = 1.0
    values = {"concat_latent_image": image * (1 - hole), "concat_mask": hole}
    positive, negative, third = ([[t, d | values] for t, d in c] for c in (positive, negative, third))
    return Setup(model, positive, negative, third, {"samples": image, "noise_mask": hole})


def controlnet(_bed):
    family = load_family("sd15")
    control = comfy.controlnet.load_controlnet(str(MODELS / SD15_CONTROLNET))
    hint = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    positive, negative = nodes.ControlNetApplyAdvanced().apply_controlnet(family.positive, family.negative, control,
                                                                          hint, 1.0, 0.0, 1.0)
    (main_control,) = {c[1]["control"] for c in negative}
    third = [[t, d | {"control": main_control}] for t, d in family.third]
    return Setup(family.model, positive, negative, third, {"samples": torch.zeros(1, 4, 8, 8)})


def lora_hooks(bed):
    """A hook group (core's model-as-LoRA weight hook, as CreateHookModelAsLora makes) on the positive only: the
    positive and the negatives then need different weights, so core calls them separately."""
    model, positive, negative, third = _tiny(bed)
    weights = {key: value * 1.3 for key, value in model.model.state_dict().items()
               if key.startswith("diffusion_model.") and ".attn1.to_q." in key}
    hooks = comfy.hooks.create_hook_model_as_lora(weights, None, 0.8, 0.0)
    hooked = comfy.hooks.set_hooks_for_conditioning(positive, hooks)
    return Setup(model, hooked, negative, third, {"samples": torch.zeros(2, 4, 8, 8)})


def no_negative(bed):
    """A positive with an empty negative (no entries): core's calc_cond_batch gives it as zeros; Steer the same."""
    model, positive, _negative, third = _tiny(bed)
    return Setup(model, positive, [], third, {"samples": torch.zeros(2, 4, 8, 8)})


SETUPS = {"area": area, "mask": mask, "timestep_range": timestep_range, "combined": combined,
          "token_lengths": token_lengths, "img2img": img2img, "inpainting": inpainting, "controlnet": controlnet,
          "lora_hooks": lora_hooks, "no_negative": no_negative}


def _formula(skip_until: float):
    def formula(out, step, steps, _x):
        d_c, d_u, d_n = out
        p = step / (steps - 1)
        if p < skip_until:
            return d_c
        scale = CFG * (1 - p) + CFG_MIN * p
        return d_u + (d_c - d_u) * scale - WEIGHT * (d_n - d_u)
    return formula


def _ksampler(model, setup: Setup) -> torch.Tensor:
    (out,) = nodes.KSampler().sample(model, 1, STEPS, CFG, "euler", "normal", setup.positive, setup.negative,
                                     setup.latent, denoise=setup.denoise)
    return out["samples"]


def _reference(setup: Setup, formula) -> torch.Tensor:
    bed = type("Conds", (), {"positive": setup.positive, "negative": setup.negative})
    guider = FormulaGuider(setup.model, bed, formula, extra=(setup.extra,))
    return custom_advanced(guider, "euler", setup.latent["samples"], steps=STEPS, denoise=setup.denoise,
                           noise_mask=setup.latent.get("noise_mask"))


@pytest.mark.parametrize("name", SETUPS)
def test_conditioning_variety_equals_the_reference_with_its_rows(inprocess_bed, steer_nodes, name):
    setup = SETUPS[name](inprocess_bed)
    model = apply(steer_nodes, setup.model, "SteerScaleSchedule", curve="linear_down", cfg_min=CFG_MIN)
    model = apply(steer_nodes, model, "SteerNegative", negative=setup.extra, scale=WEIGHT)
    with model_calls(setup.model) as rows:
        actual = _ksampler(model, setup)
    with model_calls(setup.model) as reference_rows:
        expected = _reference(setup, _formula(0.0))
    assert torch.isfinite(actual).all()
    assert ((actual - expected).norm() / expected.norm()).item() < 1e-5
    assert rows == reference_rows  # the same calls, the same rows: nothing more than core computes
    if name == "token_lengths":
        assert rows == [2, 4] * STEPS  # 8 tokens apart; 77 and 154 (ratio 2) concatenated by core
    if name == "lora_hooks":
        assert sorted(rows) == sorted([2, 4] * STEPS)  # the hooked positive in a call of its own
        plain = _ksampler(model, Setup(setup.model, inprocess_bed.positive, setup.negative, setup.extra,
                                       setup.latent))
        assert ((actual - plain).norm() / plain.norm()).item() > 1e-3  # the hook really changes the positive
    skipping = apply(steer_nodes, model, "SteerCFGSkip", mode="percent", start_percent=0.25, end_percent=1.0)
    expected = _reference(setup, _formula(0.25))
    assert ((_ksampler(skipping, setup) - expected).norm() / expected.norm()).item() < 1e-4
