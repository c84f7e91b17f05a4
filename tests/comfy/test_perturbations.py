"""Perturbation guidance on every architecture × kind in the real ComfyUI: Steer's perturbed branch, computed in the
step's one batched call, equals the same perturbation run as a separate model call by an independent reference
(testbed/perturbations.py), through KSampler and SamplerCustomAdvanced alike; each call holds exactly the active
branches' rows; and the perturbation measurably changes the result."""

from __future__ import annotations

import math

import pytest
import torch

from testbed.families import load_family
from testbed.perturbations import Branch, PerturbedReference
from testbed.sampling import custom_advanced, ksampler, model_calls, relative_error, sigmas

STEPS = 3
NODES = {"pag": "SteerPAG", "seg": "SteerSEG", "skip": "SteerSkipLayer"}
PATCH = {"wan": (1, 2, 2), "hunyuan_video": (1, 2, 2), "qwen_image": (1, 2, 2)}  # the others (2, 2)
# (family, kind, blocks, SEG σ): every kind on every block kind each architecture has.
CASES = [
    ("sd15", "pag", "middle.0", None), ("sd15", "seg", "middle.0", math.inf), ("sd15", "seg", "input.1", 1.0),
    ("sdxl", "pag", "middle.0", None), ("sdxl", "seg", "middle.0", 2.0),
    ("sd3", "pag", "joint.0", None), ("sd3", "seg", "double.0", 1.0), ("sd3", "skip", "double.0", None),
    ("flux", "pag", "double.0", None), ("flux", "pag", "single.0", None), ("flux", "seg", "double.0", math.inf),
    ("flux", "seg", "single.0", 1.0), ("flux", "skip", "double.0", None), ("flux", "skip", "single.0", None),
    ("flux", "skip", "double.0, single.0", None),
    ("wan", "pag", "double.0", None), ("wan", "seg", "double.0", 1.0), ("wan", "skip", "double.0", None),
    ("chroma", "pag", "double.1", None), ("chroma", "seg", "single.1", 1.0), ("chroma", "skip", "single.0", None),
    ("hunyuan_video", "pag", "double.0", None), ("hunyuan_video", "pag", "single.1", None),
    ("hunyuan_video", "seg", "double.1", 1.0), ("hunyuan_video", "skip", "double.0, single.0", None),
    ("qwen_image", "pag", "double.1", None), ("qwen_image", "seg", "double.0", math.inf),
    ("qwen_image", "skip", "double.1", None),
    ("lumina2", "pag", "double.1", None), ("lumina2", "seg", "double.0", 1.0),
]
CFG = 3.0
SCALE = 2.0


def perturbed_model(steer_nodes, model, kind: str, blocks: str, sigma: float | None, **extra):
    """`model` (a MODEL, or a family's) through the kind's node, its window the whole run unless given."""
    model = model.model if hasattr(model, "latent_shape") else model  # a Family
    cls = steer_nodes[NODES[kind]]
    values = {spec.id: spec.default for spec in cls.define_schema().inputs if spec.id != "model"}
    values |= {"scale": SCALE, "blocks": blocks, "start_percent": 0.0, "end_percent": 1.0} | extra
    if kind == "seg":
        values["blur_sigma"] = -1.0 if sigma == math.inf else sigma
    return cls.execute(model, **values).result[0]


@pytest.mark.parametrize(("name", "kind", "blocks", "sigma"), CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2].replace(', ', '+')}" for c in CASES])
def test_batched_branch_equals_a_separate_call(steer_nodes, name, kind, blocks, sigma):
    from guiders.perturbation import parse_blocks

    family = load_family(name)
    model = perturbed_model(steer_nodes, family, kind, blocks, sigma)
    latent = family.latent(2)
    with model_calls(family.model) as rows:
        via_ksampler = ksampler(model, family.positive, family.negative, CFG, "euler", latent, steps=STEPS)
    assert rows == [3 * 2] * STEPS  # cond, uncond and the perturbed cond of both images, in one call per step
    guider = steer_nodes["SteerGuider"].execute(model, family.positive, family.negative, CFG).result[0]
    assert torch.equal(custom_advanced(guider, "euler", latent, steps=STEPS), via_ksampler)
    reference = PerturbedReference(family, CFG, [Branch(kind, parse_blocks(blocks), SCALE, sigma or math.inf)],
                                   PATCH.get(name, (2, 2)))
    expected = custom_advanced(reference, "euler", latent, steps=STEPS)
    assert torch.isfinite(via_ksampler).all()
    # One batched call against the reference's two: batches of different sizes round differently.
    assert ((via_ksampler - expected).norm() / expected.norm()).item() < 1e-4
    plain = ksampler(family.model, family.positive, family.negative, CFG, "euler", latent, steps=STEPS)
    assert ((via_ksampler - plain).norm() / plain.norm()).item() > 1e-3



SLG_CASES = [("sd3", "double.0", "0", ""), ("flux", "double.0, single.0", "0", "0"), ("wan", "double.0", "0", ""),
             ("chroma", "single.1", "", "1"), ("hunyuan_video", "double.1, single.0", "1", "0"),
             ("qwen_image", "double.1", "1", "")]


@pytest.mark.parametrize(("name", "blocks", "double", "single"), SLG_CASES, ids=[c[0] for c in SLG_CASES])
@pytest.mark.parametrize(("start", "end", "rescale"), [(0.0, 1.0, 0.0), (0.01, 0.5, 0.0), (0.0, 0.6, 0.5)])
def test_skip_layer_equals_core_skip_layer_guidance_at_batch_1(steer_nodes, name, blocks, double, single, start,
                                                                end, rescale):
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT

    family = load_family(name)
    latent = family.latent(1)
    core = SkipLayerGuidanceDiT.execute(family.model, 3.0, start, end, double, single, rescale).result[0]
    expected = ksampler(core, family.positive, family.negative, CFG, "euler", latent, steps=4)
    model = perturbed_model(steer_nodes, family, "skip", blocks, None, scale=3.0, start_percent=start,
                            end_percent=end, rescale=rescale)
    actual = ksampler(model, family.positive, family.negative, CFG, "euler", latent, steps=4)
    assert relative_error(actual, expected) < 1e-4
    plain = ksampler(family.model, family.positive, family.negative, CFG, "euler", latent, steps=4)
    assert relative_error(actual, plain) > 1e-3


def test_rescale_is_per_image_where_core_mixes_the_batch(steer_nodes):
    """Core SkipLayerGuidanceDiT takes the standard deviations over the whole batch, so one image changes another's
    result; Steer's rescale is per image (the reference rescales image by image)."""
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT

    family = load_family("flux")
    latent = family.latent(2)
    model = perturbed_model(steer_nodes, family, "skip", "double.0", None, rescale=0.7)
    actual = ksampler(model, family.positive, family.negative, CFG, "euler", latent, steps=STEPS)
    reference = PerturbedReference(family, CFG, [Branch("skip", (("double", 0, None),), SCALE, rescale=0.7)])
    assert relative_error(actual, custom_advanced(reference, "euler", latent, steps=STEPS)) < 1e-4
    core = SkipLayerGuidanceDiT.execute(family.model, SCALE, 0.0, 1.0, "0", "", 0.7).result[0]
    assert relative_error(ksampler(core, family.positive, family.negative, CFG, "euler", latent, steps=STEPS),
                          actual) > 1e-4


def test_several_perturbations_are_branches_of_one_call(steer_nodes):
    family = load_family("flux")
    model = perturbed_model(steer_nodes, family, "pag", "double.0", None)
    model = perturbed_model(steer_nodes, model, "seg", "single.0", 1.0, scale=1.5)
    model = perturbed_model(steer_nodes, model, "skip", "double.0", None, scale=1.0, rescale=0.3)
    latent = family.latent(2)
    with model_calls(family.model) as rows:
        actual = ksampler(model, family.positive, family.negative, CFG, "euler", latent, steps=STEPS)
    assert rows == [5 * 2] * STEPS
    branches = [Branch("pag", (("double", 0, None),), SCALE), Branch("seg", (("single", 0, None),), 1.5, 1.0),
                Branch("skip", (("double", 0, None),), 1.0, rescale=0.3)]
    expected = custom_advanced(PerturbedReference(family, CFG, branches), "euler", latent, steps=STEPS)
    assert relative_error(actual, expected) < 1e-4


def test_another_packs_block_replace_still_runs_for_every_row_it_should(steer_nodes):
    """A replace another pack set on the same DiT block keeps running: for the cond and uncond rows as before, and
    for the PAG rows with identity attention inside it; skipped rows skip the block, theirs included."""
    family = load_family("flux")
    seen = []

    def foreign(args, extra):
        seen.append(args["img"].shape[0])
        out = extra["original_block"](args)
        return out | {"img": out["img"] * 1.05}

    base = family.model.clone()
    base.set_model_patch_replace(foreign, "dit", "double_block", 0)
    patched_family = type(family)(family.name, base, family.positive, family.negative, family.third,
                                  family.latent_shape)
    model = perturbed_model(steer_nodes, base, "pag", "double.0", None)
    latent = family.latent(2)
    actual = ksampler(model, family.positive, family.negative, CFG, "euler", latent, steps=STEPS)
    assert seen == [3 * 2] * STEPS  # every row of the one call went through it
    reference = PerturbedReference(patched_family, CFG, [Branch("pag", (("double", 0, None),), SCALE)])
    assert relative_error(actual, custom_advanced(reference, "euler", latent, steps=STEPS)) < 1e-4
    plain = ksampler(base, family.positive, family.negative, CFG, "euler", latent, steps=STEPS)
    assert relative_error(actual, plain) > 1e-3


def test_core_skip_layer_guidance_on_the_same_blocks_adds_its_own_term(steer_nodes):
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT

    family = load_family("sd3")
    latent = family.latent(1)
    core = SkipLayerGuidanceDiT.execute(family.model, SCALE, 0.0, 1.0, "0", "", 0.0).result[0]
    both = perturbed_model(steer_nodes, core, "skip", "double.0", None)
    doubled = perturbed_model(steer_nodes, family, "skip", "double.0", None, scale=2 * SCALE)
    assert relative_error(ksampler(both, family.positive, family.negative, CFG, "euler", latent, steps=STEPS),
                          ksampler(doubled, family.positive, family.negative, CFG, "euler", latent, steps=STEPS)) < 1e-4


def test_sigma_window_and_adaptive_scale(steer_nodes):
    """pamparamm's options: a σ window and a scale fading with the timestep; the window's steps cost no rows."""
    family = load_family("sd15")
    latent = family.latent(2)
    model = perturbed_model(steer_nodes, family, "pag", "middle.0", None, sigma_start=10.0, sigma_end=1.0,
                            adaptive_scale=0.15)
    with model_calls(family.model) as rows:
        actual = ksampler(model, family.positive, family.negative, CFG, "euler", latent, steps=6)
    sampling = family.model.get_model_object("model_sampling")
    inside = [1.0 <= s <= 10.0 for s in sigmas(family.model, 6)[:-1].tolist()]
    assert any(inside) and not all(inside)
    assert rows == [6 if i else 4 for i in inside]
    branch = Branch("pag", (("middle", 0, None),), SCALE, window=(10.0, 1.0), adaptive=0.15)
    assert relative_error(actual, custom_advanced(PerturbedReference(family, CFG, [branch]), "euler", latent,
                                                  steps=6)) < 1e-4
    assert branch.scale_at(sampling, torch.tensor([1.5])) < SCALE  # the fading acts inside the window


def test_kinds_that_cannot_act_are_refused_naming_what_works(steer_nodes):
    with pytest.raises(ValueError, match=r"SteerSkipLayer\): skip-layer guidance skips DiT blocks .* UNet: use "
                                         r"Steer Perturbed-Attention Guidance or Steer Smoothed Energy Guidance"):
        perturbed_model(steer_nodes, load_family("sd15"), "skip", "middle.0", None)
    with pytest.raises(ValueError, match=r"SteerSkipLayer\): ComfyUI's Lumina 2 offers no per-block hook .* use "
                                         r"Steer Perturbed-Attention Guidance or Steer Smoothed Energy Guidance"):
        perturbed_model(steer_nodes, load_family("lumina2"), "skip", "double.0", None)
    with pytest.raises(ValueError, match=r"SteerSEG\): input 'blocks': single\.3 not in this Flux model; it has "
                                         r"double\.0–1, single\.0–1$"):
        perturbed_model(steer_nodes, load_family("flux"), "seg", "single.3", 1.0)


@pytest.mark.parametrize("name", ["flux", "qwen_image"])
def test_newer_comfyuis_attention_patches_keep_running(steer_nodes, name):
    """ComfyUI ≥ 0.8 lets packs patch Flux's and Qwen-Image's joint attention (`attn1_patch` on q, k, v before it,
    Flux's `attn1_output_patch` after it); under Steer's perturbation they still act on every row, as in the
    reference's own calls. Skipped where the installed ComfyUI has no such hook."""
    import inspect

    import comfy.ldm.flux.layers
    import comfy.ldm.qwen_image.model

    source = inspect.getsource(comfy.ldm.flux.layers if name == "flux" else comfy.ldm.qwen_image.model)
    if "attn1_patch" not in source:
        pytest.skip("this ComfyUI has no attn1_patch hook in its DiT attention")
    family = load_family(name)
    base = family.model.clone()
    base.set_model_attn1_patch(lambda q, k, v, pe=None, attn_mask=None, extra_options=None: {"q": q * 1.2})
    if "attn1_output_patch" in source:
        base.set_model_attn1_output_patch(lambda attention, extra_options: attention * 0.9)
    patched = type(family)(family.name, base, family.positive, family.negative, family.third, family.latent_shape)
    model = perturbed_model(steer_nodes, base, "pag", "double.0", None)
    latent = family.latent(2)
    actual = ksampler(model, family.positive, family.negative, CFG, "euler", latent, steps=STEPS)
    reference = PerturbedReference(patched, CFG, [Branch("pag", (("double", 0, None),), SCALE)],
                                   PATCH.get(name, (2, 2)))
    assert relative_error(actual, custom_advanced(reference, "euler", latent, steps=STEPS)) < 1e-4
    without = ksampler(perturbed_model(steer_nodes, family, "pag", "double.0", None), family.positive,
                       family.negative, CFG, "euler", latent, steps=STEPS)
    assert relative_error(actual, without) > 1e-3  # the other pack's patches acted
