"""Every guidance node of core ComfyUI 0.3.75 composed with every Steer node (docs/readme/families.md has the table).

For each pair: where the Steer node is neutral the result is bit-identical to core's node alone; where it acts, the
result equals the documented composition, written out below as a reference guider (`Composed`) that runs core's
hooks in their slots and Steer's terms from the papers' formulas. In-process tiny models, Euler, few steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import comfy.samplers
import pytest
import torch
from comfy.model_patcher import set_model_options_patch_replace
from comfy.samplers import calc_cond_batch
from comfy_extras.nodes_apg import APG
from comfy_extras.nodes_cfg import CFGNorm, CFGZeroStar
from comfy_extras.nodes_custom_sampler import BasicGuider, DualCFGGuider
from comfy_extras.nodes_eps import EpsilonScaling
from comfy_extras.nodes_fresca import FreSca
from comfy_extras.nodes_latent import LatentApplyOperationCFG, LatentOperationTonemapReinhard
from comfy_extras.nodes_lumina2 import RenormCFG
from comfy_extras.nodes_mahiro import Mahiro
from comfy_extras.nodes_model_advanced import RescaleCFG
from comfy_extras.nodes_pag import PerturbedAttentionGuidance
from comfy_extras.nodes_perpneg import PerpNegGuider
from comfy_extras.nodes_sag import SelfAttentionGuidance
from comfy_extras.nodes_sd3 import SkipLayerGuidanceSD3
from comfy_extras.nodes_slg import SkipLayerGuidanceDiT, SkipLayerGuidanceDiTSimple
from comfy_extras.nodes_tcfg import TCFG
from comfy_extras.nodes_video_model import VideoLinearCFGGuidance, VideoTriangleCFGGuidance

from testbed.families import load_family
from testbed.perturbations import reference_options
from testbed.sampling import core_guider, custom_advanced, ksampler, mimic_threshold, relative_error, run

CFG = 6.0
STEPS = 4


def v3(node, **inputs):
    """A V3 core patch node with its schema defaults, overridden by keyword."""
    def apply(model):
        values = {i.id: getattr(i, "default", None) for i in node.define_schema().inputs if i.id != "model"}
        return node.execute(model, **(values | inputs)).result[0]
    return apply


def v1(node, **inputs):
    def apply(model):
        values = {k: v[1].get("default") for k, v in node.INPUT_TYPES()["required"].items() if k != "model"}
        return getattr(node(), node.FUNCTION)(model, **(values | inputs))[0]
    return apply


def latent_operation_cfg(model):
    return LatentApplyOperationCFG.execute(model, LatentOperationTonemapReinhard.execute(1.0).result[0]).result[0]


# Core's guidance patches by the slot they use; DiT-only ones run on the tiny SD3 model, the others on the tiny UNet.
CORE = {
    "RescaleCFG": (v1(RescaleCFG), "cfg_function", "unet"),
    "RenormCFG": (v3(RenormCFG, renorm_cfg=1.0), "cfg_function", "unet"),
    "VideoLinearCFGGuidance": (v1(VideoLinearCFGGuidance, min_cfg=2.0), "cfg_function", "unet"),
    "VideoTriangleCFGGuidance": (v1(VideoTriangleCFGGuidance, min_cfg=2.0), "cfg_function", "unet"),
    "APG": (v3(APG, momentum=0.0), "pre_cfg", "unet"),
    "TCFG": (v3(TCFG), "pre_cfg", "unet"),
    "FreSca": (v3(FreSca, freq_cutoff=2), "pre_cfg", "unet"),
    "LatentApplyOperationCFG": (latent_operation_cfg, "pre_cfg", "unet"),
    "CFGZeroStar": (v3(CFGZeroStar), "post_cfg", "unet"),
    "CFGNorm": (v3(CFGNorm), "post_cfg", "unet"),
    "Mahiro": (v3(Mahiro), "post_cfg", "unet"),
    "Epsilon Scaling": (v3(EpsilonScaling, scaling_factor=1.01), "post_cfg", "unet"),
    "SelfAttentionGuidance": (v3(SelfAttentionGuidance), "post_cfg", "unet"),
    "PerturbedAttentionGuidance": (v3(PerturbedAttentionGuidance), "post_cfg", "unet"),
    "SkipLayerGuidanceDiT": (v3(SkipLayerGuidanceDiT, double_layers="0", single_layers=""), "post_cfg", "dit"),
    "SkipLayerGuidanceSD3": (v3(SkipLayerGuidanceSD3, layers="0"), "post_cfg", "dit"),
    "SkipLayerGuidanceDiTSimple": (v3(SkipLayerGuidanceDiTSimple, double_layers="0", single_layers=""),
                                   "calc_cond_batch", "dit"),
}


# Batch 2 unless the core node needs another: RenormCFG fails in core itself at batch > 1 (`if tensor >= tensor` on a
# per-sample norm); the video nodes spread the scale over the batch as frames, and at batch 2 both get min_cfg.
BATCH = {"RenormCFG": 1, "VideoLinearCFGGuidance": 3, "VideoTriangleCFGGuidance": 3}


@dataclass(frozen=True)
class SteerCase:
    """A Steer patch in a neutral and an acting setting, and what the acting one means for the reference."""

    node: str
    neutral: dict
    acting: dict
    exact_when_neutral: bool = True  # False where the neutral setting still adds rows to the batched call


PATCHES = {
    "SteerScaleSchedule": SteerCase("SteerScaleSchedule", {"curve": "constant"},
                                    {"curve": "linear_down", "cfg_min": 2.0}),
    "SteerDynamicThreshold": SteerCase("SteerDynamicThreshold", {"interpolate_phi": 0.0}, {"mimic_scale": 3.0}),
    "SteerCFGSkip": SteerCase("SteerCFGSkip", {"mode": "percent", "start_percent": 0.0, "end_percent": 1.0},
                              {"mode": "percent", "start_percent": 0.5, "end_percent": 1.0}),
    "SteerNegative": SteerCase("SteerNegative", {"scale": 0.0}, {"scale": 0.5}, exact_when_neutral=False),
    "SteerPAG": SteerCase("SteerPAG", {"scale": 0.0}, {"scale": 2.0}, exact_when_neutral=False),
}


def bed_for(kind: str, inprocess_bed):
    return inprocess_bed if kind == "unet" else load_family("sd3")


def steer_patch(steer_nodes, model, bed, case: SteerCase, inputs: dict):
    schema = steer_nodes[case.node].define_schema()
    values = {i.id: getattr(i, "default", None) for i in schema.inputs if i.id != "model"} | inputs
    if case.node == "SteerNegative":
        values["negative"] = bed.positive if bed.channels == 4 else bed.third
    if case.node == "SteerPAG" and bed.channels == 16:
        values["blocks"] = "joint.0"
    return steer_nodes[case.node].execute(model, **values).result[0]


class Composed(comfy.samplers.CFGGuider):
    """The documented composition of one Steer patch with core's hooks, per evaluation (Euler: one per step):
    the branches of the step in one call; core's pre-CFG hooks on [D_c, D_u] at the step's scale; CFG through core's
    CFG-function slot at that scale; Steer's extra negative, PAG and thresholding terms; then core's post-CFG hooks.
    On CFG-skipped steps the cond stands in for the uncond, and neither CFG nor its slot runs."""

    def __init__(self, model, bed, case: SteerCase, inputs: dict):
        super().__init__(model)
        self.set_conds(bed.positive, bed.negative)
        self.set_cfg(CFG)
        self.case, self.inputs = case, inputs
        self.extra = (bed.positive if bed.channels == 4 else bed.third) if case.node == "SteerNegative" else None
        if self.extra is not None:
            self.inner_set_conds({"extra": self.extra})
        self.mmdit = bed.channels == 16  # the one-block SD3 (else the in-process UNet)

    def step_scale(self, step: int, steps: int) -> float:
        if self.case.node == "SteerScaleSchedule":
            f = 1 - step / (steps - 1)
            return CFG * f + self.inputs["cfg_min"] * (1 - f)
        return CFG

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006, C901 - core's signature
        schedule = model_options["transformer_options"]["sample_sigmas"].tolist()
        step = min(range(len(schedule)), key=lambda i: abs(schedule[i] - float(timestep[0])))
        steps = len(schedule) - 1
        scale = self.step_scale(step, steps)
        guided = self.case.node != "SteerCFGSkip" or step / (steps - 1) >= self.inputs["start_percent"]
        positive, negative = self.conds["positive"], self.conds["negative"] if guided else None
        extra = [self.conds["extra"]] if self.extra is not None and guided else []
        calc = model_options.get("sampler_calc_cond_batch_function")
        model = self.inner_model
        if calc:  # core's protocol for that slot: [cond, uncond]; the extra negative in a call of its own
            out = list(calc({"conds": [positive, negative], "input": x, "sigma": timestep, "model": model,
                             "model_options": model_options}))
            out += calc_cond_batch(model, extra, x, timestep, model_options) if extra else []
        else:
            out = calc_cond_batch(model, [positive, negative, *extra], x, timestep, model_options)
        out, denoised_extra = out[:2], out[2:]
        if not guided:
            out[1] = out[0]
        for fn in model_options.get("sampler_pre_cfg_function", []):
            out = fn({"conds": [positive, negative], "conds_out": out, "cond_scale": scale, "timestep": timestep,
                      "input": x, "sigma": timestep, "model": model, "model_options": model_options})
        d_c, d_u = out[0], out[1]
        if not guided:
            denoised = d_c
        elif "sampler_cfg_function" in model_options:
            denoised = x - model_options["sampler_cfg_function"]({
                "cond": x - d_c, "uncond": x - d_u, "cond_scale": scale, "timestep": timestep, "input": x,
                "sigma": timestep, "cond_denoised": d_c, "uncond_denoised": d_u, "model": model,
                "model_options": model_options, "input_cond": positive, "input_uncond": negative})
        else:
            denoised = d_u + (d_c - d_u) * scale
        if denoised_extra:
            denoised = denoised - self.inputs["scale"] * (denoised_extra[0] - d_u)
        if self.case.node == "SteerPAG":
            denoised = denoised + self.inputs["scale"] * (d_c - self.perturbed(x, timestep, model_options))
        if self.case.node == "SteerDynamicThreshold":
            denoised = mimic_threshold(denoised, d_u + (d_c - d_u) * self.inputs["mimic_scale"])
        for fn in model_options.get("sampler_post_cfg_function", []):
            denoised = fn({"denoised": denoised, "cond": positive, "uncond": negative, "cond_scale": scale,
                           "model": model, "uncond_denoised": d_u, "cond_denoised": d_c, "sigma": timestep,
                           "model_options": model_options, "input": x})
        return denoised

    def perturbed(self, x, timestep, model_options):
        """D̂_c in a call of its own: identity self-attention in the UNet's middle block (PAG's default), or, on the
        one-block SD3 MMDiT, diffusers' joint-attention PAG in its block (testbed/perturbations.py)."""
        if self.mmdit:
            options = reference_options(model_options, "sd3", "pag", (("double", 0, None),), tuple(x.shape[2:]),
                                        (2, 2), text_tokens=0)
        else:  # keyed with the transformer index too: ComfyUI prefers that key, and SAG registers its patch under it
            options = set_model_options_patch_replace(model_options.copy(), lambda q, k, v, extra: v, "attn1",
                                                      "middle", 0, 0)
        return calc_cond_batch(self.inner_model, [self.conds["positive"]], x, timestep, options)[0]


@pytest.mark.parametrize("patch_name", PATCHES)
@pytest.mark.parametrize("core_name", CORE)
def test_core_node_with_steer_patch(inprocess_bed, steer_nodes, core_name, patch_name, caplog):
    core_patch, _slot, kind = CORE[core_name]
    case = PATCHES[patch_name]
    bed = bed_for(kind, inprocess_bed)
    core_model = core_patch(bed.model)
    latent = bed.latent(BATCH.get(core_name, 2))
    alone = ksampler(core_model, bed.positive, bed.negative, CFG, "euler", latent, steps=STEPS)
    assert torch.isfinite(alone).all()

    neutral = ksampler(steer_patch(steer_nodes, core_model, bed, case, case.neutral), bed.positive, bed.negative, CFG,
                       "euler", latent, steps=STEPS)
    if case.exact_when_neutral:
        assert torch.equal(neutral, alone)
    else:  # a zero-weight branch still rides in the batched call, and batches of other sizes round differently
        assert relative_error(neutral, alone) < 1e-4

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        acting = ksampler(steer_patch(steer_nodes, core_model, bed, case, case.acting), bed.positive, bed.negative,
                          CFG, "euler", latent, steps=STEPS)
    assert torch.isfinite(acting).all()
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Steer:")]
    if case.node == "SteerCFGSkip" and core_model.model_options.get("disable_cfg1_optimization"):
        # The core patch reads the negative on every step (SAG): the pair cannot compose, the run says so once and
        # guides every step, as the core patch alone does.
        assert len(warnings) == 1 and "SteerCFGSkip cannot compose with " + core_name in warnings[0], warnings
        assert torch.equal(acting, alone)
        return
    assert not warnings
    expected = custom_advanced(Composed(core_model, bed, case, case.neutral | case.acting), "euler", latent,
                               steps=STEPS)
    tolerance = 1e-4 if case.node == "SteerPAG" else 1e-5
    assert relative_error(acting, expected) < tolerance
    assert relative_error(acting, alone) > 1e-3, "the acting setting changed nothing: the comparison proves nothing"


# --- guiders ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("patch_name", PATCHES)
def test_basic_guider_runs_steer_patches_without_a_negative(inprocess_bed, steer_nodes, patch_name):
    """BasicGuider has no negative: every step is conditional-only. Patches that need the negative (schedule,
    thresholding, CFG-skip, extra negatives against D_u) have nothing to act on and leave it bit-identical; PAG acts
    (it needs only the cond), as core PAG does under BasicGuider."""
    bed = inprocess_bed
    case = PATCHES[patch_name]
    latent = bed.latent(2)
    alone = run(BasicGuider.execute(bed.model, bed.positive).result[0], "euler", latent, steps=STEPS)
    model = steer_patch(steer_nodes, bed.model, bed, case, case.acting)
    actual = run(BasicGuider.execute(model, bed.positive).result[0], "euler", latent, steps=STEPS)
    if case.node == "SteerPAG":
        core = PerturbedAttentionGuidance.execute(bed.model, 2.0).result[0]
        expected = run(BasicGuider.execute(core, bed.positive).result[0], "euler", latent, steps=STEPS)
        assert relative_error(actual, expected) < 1e-4 and relative_error(actual, alone) > 1e-3
    else:
        assert torch.equal(actual, alone)


@pytest.mark.parametrize("guider", ["DualCFGGuider", "PerpNegGuider"])
def test_guiders_with_their_own_guidance_run_unchanged_and_say_what_they_drop(inprocess_bed, steer_nodes, guider,
                                                                               caplog):
    bed = inprocess_bed

    def build(model):
        if guider == "DualCFGGuider":
            return DualCFGGuider.execute(model, bed.positive, bed.negative, bed.negative, CFG, 3.0,
                                         "regular").result[0]
        return PerpNegGuider.execute(model, bed.positive, bed.negative, bed.negative, CFG, 1.0).result[0]

    latent = bed.latent(2)
    alone = run(build(bed.model), "euler", latent, steps=STEPS)
    for case in PATCHES.values():
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            actual = run(build(steer_patch(steer_nodes, bed.model, bed, case, case.acting)), "euler", latent,
                         steps=STEPS)
        assert torch.equal(actual, alone)
        warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Steer:")]
        assert len(warnings) == 1 and case.node in warnings[0] and "Guider_" in warnings[0], warnings


def test_steer_guider_and_cfg_pp_sampler_with_every_core_node(inprocess_bed, steer_nodes):
    """SteerGuider is core CFGGuider (bit-identical) under every core patch; Steer's Euler CFG++ equals core's
    euler_cfg_pp under every core patch (λ 0.8)."""
    cfg_pp = steer_nodes["SteerCFGPPSampler"].execute("euler", 1.0, 1.0).result[0]
    for core_name, (core_patch, _slot, kind) in CORE.items():
        bed = bed_for(kind, inprocess_bed)
        model = core_patch(bed.model)
        latent = bed.latent(BATCH.get(core_name, 2))
        expected = custom_advanced(core_guider(model, bed, CFG), "euler", latent, steps=STEPS)
        guider = steer_nodes["SteerGuider"].execute(model, bed.positive, bed.negative, CFG).result[0]
        assert torch.equal(custom_advanced(guider, "euler", latent, steps=STEPS), expected), core_name
        expected = custom_advanced(core_guider(model, bed, 0.8), "euler_cfg_pp", latent, steps=STEPS)
        guider = steer_nodes["SteerGuider"].execute(model, bed.positive, bed.negative, 0.8).result[0]
        actual = custom_advanced(guider, cfg_pp, latent, steps=STEPS)
        assert relative_error(actual, expected) < 1e-4, core_name
