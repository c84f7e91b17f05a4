"""SteerGuider against core CFGGuider in the real ComfyUI: bit-identical latents, one model call per evaluation."""

from __future__ import annotations

import pytest
import torch
from comfy_extras.nodes_model_advanced import RescaleCFG
from comfy_extras.nodes_pag import PerturbedAttentionGuidance

from testbed.sampling import core_guider, model_calls, run, steer_guider

SAMPLERS = ["euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2s_ancestral", "dpmpp_sde"]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("cfg", [1.0, 1.5, 7.0])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_bit_identical_to_core_with_one_call_per_evaluation(bed, steer_guider_node, sampler, cfg, batch):
    latent = bed.latent(batch)
    with model_calls(bed.model) as core_rows:
        expected = run(core_guider(bed.model, bed, cfg), sampler, latent)
    with model_calls(bed.model) as steer_rows:
        actual = run(steer_guider(steer_guider_node, bed.model, bed, cfg), sampler, latent)

    assert torch.isfinite(actual).all()
    assert torch.equal(actual, expected)
    rows_per_call = batch if cfg == 1.0 else 2 * batch  # at cfg 1 the uncond is never computed
    assert steer_rows == [rows_per_call] * len(core_rows)


def test_guidance_is_real_on_every_bed(bed, steer_guider_node):
    """The comparisons above could not fail if cond and uncond agreed: they do not."""
    latent = bed.latent(1)
    plain = run(steer_guider(steer_guider_node, bed.model, bed, 1.0), "euler", latent)
    guided = run(steer_guider(steer_guider_node, bed.model, bed, 7.0), "euler", latent)
    assert (guided - plain).abs().mean() > 0.05 * plain.abs().mean()


def rescale_cfg(model):
    return RescaleCFG().patch(model, 0.7)[0]


def core_pag(model):
    return PerturbedAttentionGuidance.execute(model, 3.0).result[0]


# (model patch, sampler, whether the result at cfg 1 is bit-identical). At cfg 1 core hands a CFG function a zero
# uncond (RescaleCFG then computes x + (D_c − x)), and where a CFG++ sampler forces the uncond it returns
# D_u + (D_c − D_u); both round away from D_c. Steer hands hooks the cond and returns D_c exactly: equal to rounding.
COMPOSITIONS = {
    "rescale_cfg": (rescale_cfg, "euler", False),
    "core_pag": (core_pag, "dpmpp_2m", True),
    "euler_cfg_pp": (lambda model: model, "euler_cfg_pp", False),
    "all_three": (lambda model: core_pag(rescale_cfg(model)), "euler_cfg_pp", False),
}


@pytest.mark.parametrize("cfg", [1.0, 1.5, 7.0])
@pytest.mark.parametrize("composition", COMPOSITIONS)
def test_core_patches_and_cfg_pp_behave_as_under_core(inprocess_bed, sd15_bed, steer_guider_node, composition, cfg):
    patch, sampler, exact_at_cfg1 = COMPOSITIONS[composition]
    for bed in (inprocess_bed, sd15_bed):
        model = patch(bed.model)
        latent = bed.latent(2)
        expected = run(core_guider(model, bed, cfg), sampler, latent)
        actual = run(steer_guider(steer_guider_node, model, bed, cfg), sampler, latent)
        assert torch.isfinite(actual).all()
        if cfg == 1.0 and not exact_at_cfg1:
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
        else:
            assert torch.equal(actual, expected)


def test_a_cached_guider_reused_by_two_samplers_stays_correct(inprocess_bed, steer_guider_node):
    bed = inprocess_bed
    shared = steer_guider(steer_guider_node, bed.model, bed, 5.0)
    first = [run(shared, name, bed.latent(2), seed=3) for name in ("euler", "dpmpp_2m", "euler")]
    fresh = [run(steer_guider(steer_guider_node, bed.model, bed, 5.0), name, bed.latent(2), seed=3)
             for name in ("euler", "dpmpp_2m")]
    assert torch.equal(first[0], fresh[0]) and torch.equal(first[1], fresh[1]) and torch.equal(first[2], fresh[0])
