"""SteerPAG in the real ComfyUI: core PAG's result in one batched call, with identity attention on the perturbed
rows only."""

from __future__ import annotations

import comfy.ldm.modules.attention as attention
import pytest
import torch
from comfy_extras.nodes_pag import PerturbedAttentionGuidance

from testbed.sampling import custom_advanced, ksampler, model_calls, relative_error


def one_entry_per_call(monkeypatch, bed) -> None:
    """ComfyUI splits a call when the model's memory estimate for the batch exceeds free memory: make every batch of
    more than one entry (of 2 rows) look too big, so each entry gets its own call."""
    estimate = bed.model.model.memory_required
    monkeypatch.setattr(bed.model.model, "memory_required",
                        lambda shape, **kwargs: estimate(shape, **kwargs) * (1e9 if shape[0] > 2 else 1))


def pag(steer_nodes, model, **inputs):
    values = {"scale": 3.0, "blocks": "middle.0", "start_percent": 0.0, "end_percent": 1.0} | inputs
    return steer_nodes["SteerPAG"].execute(model, **values).result[0]


@pytest.mark.parametrize("cfg", [1.0, 5.0])
def test_equals_core_pag_in_one_call_per_evaluation(inprocess_bed, sd15_bed, steer_nodes, cfg):
    for bed in (inprocess_bed, sd15_bed):
        core = PerturbedAttentionGuidance.execute(bed.model, 3.0).result[0]
        with model_calls(bed.model) as core_rows:
            expected = ksampler(core, bed.positive, bed.negative, cfg, "euler", bed.latent(2))
        with model_calls(bed.model) as rows:
            actual = ksampler(pag(steer_nodes, bed.model), bed.positive, bed.negative, cfg, "euler", bed.latent(2))
        assert relative_error(actual, expected) < 1e-4
        assert not torch.allclose(actual, ksampler(bed.model, bed.positive, bed.negative, cfg, "euler", bed.latent(2)))
        # Core: cond (+ uncond) in one call, then the perturbed cond in a second. Steer: all in one call.
        assert core_rows == ([2, 2] if cfg == 1.0 else [4, 2]) * 6
        assert rows == [4 if cfg == 1.0 else 6] * 6


def test_window_and_cfg_skip_decide_the_rows(inprocess_bed, steer_nodes):
    bed = inprocess_bed
    model = pag(steer_nodes, bed.model, start_percent=0.5)
    model = steer_nodes["SteerCFGSkip"].execute(model, "percent", 0.0, 0.6, 5.42, 0.28, 0.99).result[0]
    with model_calls(bed.model) as rows:
        ksampler(model, bed.positive, bed.negative, 5.0, "euler", bed.latent(1), steps=6)
    # p = i/5: CFG on p ≤ 0.6 (steps 0–3), PAG on p ≥ 0.5 (steps 3–5).
    assert rows == [2, 2, 2, 3, 2, 2]


def test_a_forced_memory_split_gives_the_same_latents(inprocess_bed, steer_nodes, monkeypatch):
    bed = inprocess_bed
    model = pag(steer_nodes, bed.model, blocks="input.1, middle.0, output.3")
    whole = ksampler(model, bed.positive, bed.negative, 5.0, "euler", bed.latent(2), steps=4)
    one_entry_per_call(monkeypatch, bed)
    with model_calls(bed.model) as rows:
        split = ksampler(model, bed.positive, bed.negative, 5.0, "euler", bed.latent(2), steps=4)
    assert rows == [2, 2, 2] * 4
    assert relative_error(split, whole) < 1e-4


@pytest.mark.parametrize("bed_name", ["inprocess_bed", "sd15_bed"])  # SteerPAG refuses DiT models (tested below)
def test_composes_with_every_steer_patch_through_both_doors(request, steer_nodes, bed_name):
    bed = request.getfixturevalue(bed_name)
    model = bed.model
    model = steer_nodes["SteerScaleSchedule"].execute(model, "linear_down", 2.0, 0.5, 2.0, "").result[0]
    model = steer_nodes["SteerDynamicThreshold"].execute(model, "latent", 4.0, 1.0, "MEAN", "AD", 1.0).result[0]
    model = steer_nodes["SteerCFGSkip"].execute(model, "percent", 0.2, 1.0, 5.42, 0.28, 0.99).result[0]
    model = steer_nodes["SteerNegative"].execute(model, bed.positive, 0.3, "perpendicular").result[0]
    model = pag(steer_nodes, model, end_percent=0.7)
    via_ksampler = ksampler(model, bed.positive, bed.negative, 8.0, "dpmpp_2m", bed.latent(2))
    guider = steer_nodes["SteerGuider"].execute(model, bed.positive, bed.negative, 8.0).result[0]
    assert torch.isfinite(via_ksampler).all()
    assert torch.equal(via_ksampler, custom_advanced(guider, "dpmpp_2m", bed.latent(2)))
    # And with a Steer CFG++ sampler (λ = 1.2), which evaluates twice per step.
    cfg_pp = "steer_dpmpp_2s_ancestral_cfg_pp"
    via_ksampler = ksampler(model, bed.positive, bed.negative, 1.2, cfg_pp, bed.latent(2))
    guider = steer_nodes["SteerGuider"].execute(model, bed.positive, bed.negative, 1.2).result[0]
    assert torch.isfinite(via_ksampler).all()
    assert torch.equal(via_ksampler, custom_advanced(guider, cfg_pp, bed.latent(2)))


def test_an_attention_patch_already_on_the_block_still_runs_for_the_other_rows(inprocess_bed, steer_nodes):
    bed = inprocess_bed
    rows_seen: list[int] = []

    def foreign(q, k, v, extra_options):
        rows_seen.append(q.shape[0])
        return attention.optimized_attention(q, k, v, extra_options["n_heads"])

    model = bed.model.clone()
    model.set_model_attn1_replace(foreign, "middle", 0)
    with model_calls(bed.model):
        ksampler(pag(steer_nodes, model), bed.positive, bed.negative, 5.0, "euler", bed.latent(2), steps=3)
    assert rows_seen == [4] * 3  # cond and uncond rows; the perturbed rows got the identity


def test_unknown_blocks_and_dit_models_are_refused_before_sampling(inprocess_bed, sd3_bed, steer_nodes):
    with pytest.raises(ValueError, match=r"\(SteerPAG\): input .blocks.: output\.9 not in this UNet model; it has "
                                         r".*middle\.0"):
        pag(steer_nodes, inprocess_bed.model, blocks="middle.0, output.9")
    with pytest.raises(ValueError, match=r"middle\.0\.5 not in this UNet model"):
        pag(steer_nodes, inprocess_bed.model, blocks="middle.0.5")
    assert "block 2 ('mid0')" in steer_nodes["SteerPAG"].validate_inputs(blocks="middle.0, mid0")
    with pytest.raises(ValueError, match=r"middle\.0 not in this SD3 MMDiT model; it has double\.0$"):
        pag(steer_nodes, sd3_bed.model, blocks="middle.0")


def test_on_mmdit_the_image_queries_are_perturbed_in_the_same_call(sd3_bed, steer_nodes, monkeypatch):
    bed = sd3_bed
    model = pag(steer_nodes, bed.model, blocks="joint.0")
    with model_calls(bed.model) as rows:
        batched = ksampler(model, bed.positive, bed.negative, 5.0, "euler", bed.latent(2), steps=4)
    assert rows == [6] * 4
    assert torch.isfinite(batched).all()
    plain = ksampler(bed.model, bed.positive, bed.negative, 5.0, "euler", bed.latent(2), steps=4)
    assert relative_error(batched, plain) > 1e-3
    guider = steer_nodes["SteerGuider"].execute(model, bed.positive, bed.negative, 5.0).result[0]
    assert torch.equal(custom_advanced(guider, "euler", bed.latent(2), steps=4), batched)
    # Split into one entry per call, the perturbed rows are alone in theirs: the same latents.
    one_entry_per_call(monkeypatch, bed)
    with model_calls(bed.model) as rows:
        split = ksampler(model, bed.positive, bed.negative, 5.0, "euler", bed.latent(2), steps=4)
    assert rows == [2, 2, 2] * 4
    assert relative_error(split, batched) < 1e-4
