"""Steer's MODEL patches in the real ComfyUI: each against an independent reference, both doors identical, the
minimum rows per model call, and manners towards ComfyUI's and other packs' hooks."""

from __future__ import annotations

import inspect
import logging
import math

import comfy.samplers
import pytest
import torch
from comfy_extras.nodes_custom_sampler import DualCFGGuider
from comfy_extras.nodes_model_advanced import RescaleCFG

from testbed.sampling import FormulaGuider as Reference
from testbed.sampling import core_guider, custom_advanced, ksampler, model_calls, run, sigmas, steer_guider

# --- rows per call -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("door", ["ksampler", "guider"])
def test_percent_skip_computes_only_the_cond_on_skipped_steps(inprocess_bed, steer_guider_node, patch, door):
    bed = inprocess_bed
    model = patch(bed.model, "SteerCFGSkip", mode="percent", start_percent=0.4, end_percent=1.0)
    with model_calls(bed.model) as rows:
        if door == "ksampler":
            ksampler(model, bed.positive, bed.negative, 7.0, "euler", bed.latent(2), steps=10)
        else:
            custom_advanced(steer_guider(steer_guider_node, model, bed, 7.0), "euler", bed.latent(2), steps=10)
    assert rows == [2] * 4 + [4] * 6


def test_heun_evaluations_of_one_step_share_its_decision(inprocess_bed, patch):
    bed = inprocess_bed
    model = patch(bed.model, "SteerCFGSkip", mode="percent", start_percent=0.5, end_percent=1.0)
    with model_calls(bed.model) as rows:
        ksampler(model, bed.positive, bed.negative, 7.0, "heun", bed.latent(1), steps=5)
    # Heun evaluates twice per step except the last: steps 0, 1 (p < 0.5) cond only; steps 2, 3, 4 guided.
    assert rows == [1, 1, 1, 1, 2, 2, 2, 2, 2]


def test_extra_negatives_share_the_call_and_scale_one_drops_the_uncond(inprocess_bed, patch):
    bed = inprocess_bed
    model = patch(bed.model, "SteerNegative", negative=bed.negative, scale=0.5)
    model = patch(model, "SteerNegative", negative=bed.positive, scale=0.2, mode="perpendicular")
    with model_calls(bed.model) as rows:
        ksampler(model, bed.positive, bed.negative, 5.0, "euler", bed.latent(2), steps=4)
    assert rows == [8] * 4  # cond, uncond and both negatives: one call of 4B rows

    scheduled = patch(bed.model, "SteerScaleSchedule", curve="linear_down", cfg_min=1.0)
    with model_calls(bed.model) as rows:
        ksampler(scheduled, bed.positive, bed.negative, 5.0, "euler", bed.latent(2), steps=4)
    assert rows == [4, 4, 4, 2]  # the last step's scale is exactly 1.0


# --- both doors, any order -----------------------------------------------------------------------------------------

def _all_four(patch, model, bed, order):
    steps = {
        "schedule": lambda m: patch(m, "SteerScaleSchedule", curve="cosine_down", cfg_min=2.0),
        "threshold": lambda m: patch(m, "SteerDynamicThreshold", mimic_scale=4.0),
        "skip": lambda m: patch(m, "SteerCFGSkip", mode="sigma", sigma_high=10.0, sigma_low=0.5),
        "negative": lambda m: patch(m, "SteerNegative", negative=bed.positive, scale=0.3, mode="perpendicular"),
    }
    for name in order:
        model = steps[name](model)
    return model


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2s_ancestral"])
def test_ksampler_and_guider_give_identical_latents(bed, steer_guider_node, patch, sampler):
    model = _all_four(patch, bed.model, bed, ["schedule", "threshold", "skip", "negative"])
    via_ksampler = ksampler(model, bed.positive, bed.negative, 8.0, sampler, bed.latent(2))
    via_guider = custom_advanced(steer_guider(steer_guider_node, model, bed, 8.0), sampler, bed.latent(2))
    assert torch.isfinite(via_ksampler).all()
    assert torch.equal(via_ksampler, via_guider)


def test_patch_order_does_not_matter(inprocess_bed, patch):
    bed = inprocess_bed
    orders = (["schedule", "threshold", "skip", "negative"], ["negative", "skip", "threshold", "schedule"],
              ["threshold", "negative", "schedule", "skip"])
    results = [ksampler(_all_four(patch, bed.model, bed, order), bed.positive, bed.negative, 8.0, "euler",
                        bed.latent(2)) for order in orders]
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


# --- each node against a reference -------------------------------------------------------------------------------

def test_skip_everywhere_is_cfg_one_and_skip_nowhere_is_plain_cfg(bed, patch):
    nowhere = patch(bed.model, "SteerCFGSkip", mode="percent", start_percent=0.0, end_percent=1.0)
    everywhere = patch(bed.model, "SteerCFGSkip", mode="sigma", sigma_high=1e-3, sigma_low=0.0)
    latent = bed.latent(2)
    assert torch.equal(run(core_guider(nowhere, bed, 6.0), "euler", latent), run(core_guider(bed.model, bed, 6.0),
                                                                                  "euler", latent))
    plain = run(core_guider(bed.model, bed, 1.0), "euler", latent)
    assert torch.equal(run(core_guider(everywhere, bed, 6.0), "euler", latent), plain)
    assert not torch.allclose(run(core_guider(bed.model, bed, 6.0), "euler", latent), plain)


@pytest.mark.parametrize(("curve", "weight"), [("linear_down", lambda p: 1 - p),
                                               ("cosine_up", lambda p: (1 - math.cos(math.pi * p)) / 2),
                                               ("power_up", lambda p: p**3)])
def test_scale_schedule_matches_reference(bed, patch, curve, weight):
    cfg, cfg_min = 7.5, 1.5
    model = patch(bed.model, "SteerScaleSchedule", curve=curve, cfg_min=cfg_min, exponent=3.0)

    def formula(out, step, steps, _x):
        scale = cfg_min + (cfg - cfg_min) * weight(step / (steps - 1))
        return out[1] + (out[0] - out[1]) * scale

    latent = bed.latent(2)
    expected = run(Reference(bed.model, bed, formula), "euler", latent, steps=8)
    torch.testing.assert_close(run(core_guider(model, bed, cfg), "euler", latent, steps=8), expected,
                               rtol=1e-5, atol=1e-5)


def test_custom_schedule_holds_its_last_value(inprocess_bed, patch):
    bed = inprocess_bed
    scales = [9.0, 6.0, 3.0]
    model = patch(bed.model, "SteerScaleSchedule", curve="custom", custom="9, 6 3")

    def formula(out, step, _steps, _x):
        return out[1] + (out[0] - out[1]) * scales[min(step, 2)]

    latent = bed.latent(1)
    torch.testing.assert_close(run(core_guider(model, bed, 5.0), "euler", latent, steps=6),
                               run(Reference(bed.model, bed, formula), "euler", latent, steps=6), rtol=1e-5, atol=1e-5)


def test_schedule_progress_follows_the_runs_own_schedule_with_denoise(inprocess_bed, patch):
    bed = inprocess_bed
    seen: list[float] = []
    model = patch(RescaleCFG().patch(bed.model, 0.0)[0], "SteerScaleSchedule", curve="linear_down", cfg_min=1.0)
    spy = model.model_options["sampler_cfg_function"]
    model.set_model_sampler_cfg_function(lambda args: seen.append(args["cond_scale"]) or spy(args))
    ksampler(model, bed.positive, bed.negative, 5.0, "euler", bed.latent(1), steps=10, denoise=0.5)
    # KSampler at denoise 0.5 runs the last 10 steps of a 20-step schedule; progress is measured on those 10:
    # scales 5 → 1 in equal steps, and the last one (scale exactly 1) is cond-only, with no CFG function call.
    assert seen == pytest.approx([1.0 + 4.0 * (1 - i / 9) for i in range(9)])


def _mimic_reference(guided, mimic):
    """mcmonkey's MEAN/AD dynamic thresholding with per-(sample, channel) statistics, percentile 1."""
    flat, mim = guided.flatten(2), mimic.flatten(2)
    mean = flat.mean(2, keepdim=True)
    mim_ref = (mim - mim.mean(2, keepdim=True)).abs().amax(2, keepdim=True)
    cfg_ref = (flat - mean).abs().amax(2, keepdim=True)
    limit = torch.maximum(mim_ref, cfg_ref)
    return ((flat - mean).clamp(-limit, limit) / limit * mim_ref + mean).view_as(guided)


def _imagen_reference(x0, p):
    s = torch.quantile(x0.flatten(1).abs(), p, dim=1).clamp(min=1).view(-1, 1, 1, 1)
    return x0.clamp(-s, s) / s


@pytest.mark.parametrize("mode", ["latent", "imagen"])
def test_dynamic_threshold_matches_reference(bed, patch, mode):
    cfg, mimic = 12.0, 4.0
    model = patch(bed.model, "SteerDynamicThreshold", mode=mode, mimic_scale=mimic, threshold_percentile=
                  1.0 if mode == "latent" else 0.995)

    def formula(out, _step, _steps, _x):
        guided = out[1] + (out[0] - out[1]) * cfg
        if mode == "imagen":
            return _imagen_reference(guided, 0.995)
        return _mimic_reference(guided, out[1] + (out[0] - out[1]) * mimic)

    latent = bed.latent(2)
    actual = run(core_guider(model, bed, cfg), "euler", latent)
    assert torch.isfinite(actual).all()
    torch.testing.assert_close(actual, run(Reference(bed.model, bed, formula), "euler", latent), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(actual, run(core_guider(bed.model, bed, cfg), "euler", latent))


@pytest.mark.parametrize("mode", ["subtract", "perpendicular"])
def test_extra_negative_matches_reference(bed, patch, mode):
    cfg, weight = 6.0, 0.7
    model = patch(bed.model, "SteerNegative", negative=bed.positive, scale=weight, mode=mode)

    def formula(out, _step, _steps, _x):
        d_c, d_u, d_n = out
        away = d_n - d_u
        if mode == "perpendicular":
            toward = d_c - d_u
            dot = (away * toward).sum(dim=(1, 2, 3), keepdim=True)
            away = away - dot / (toward * toward).sum(dim=(1, 2, 3), keepdim=True) * toward
        return d_u + (d_c - d_u) * cfg - weight * away

    latent = bed.latent(2)
    torch.testing.assert_close(run(core_guider(model, bed, cfg), "euler", latent),
                               run(Reference(bed.model, bed, formula, extra=(bed.positive,)), "euler", latent),
                               rtol=1e-4, atol=1e-4)


def test_adaptive_skip_decides_per_sample(inprocess_bed, patch):
    bed = inprocess_bed
    model = patch(bed.model, "SteerCFGSkip", mode="adaptive", threshold=0.995)
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(5)) * torch.tensor([1.0, 0.2, 3.0]).view(
        -1, 1, 1, 1)
    guider = core_guider(model, bed, 6.0)
    schedule = comfy.samplers.calculate_sigmas(bed.model.get_model_object("model_sampling"), "normal", 12)
    sampler = comfy.samplers.sampler_object("euler")
    with model_calls(bed.model) as rows:
        batch = guider.sample(noise, bed.latent(3), sampler, schedule, disable_pbar=True, seed=0)
    singles = [guider.sample(noise[i : i + 1], bed.latent(1), sampler, schedule, disable_pbar=True, seed=0)
               for i in range(3)]
    # Batch 3 and batch 1 forwards round differently; a shared decision would differ by far more than this.
    torch.testing.assert_close(batch, torch.cat(singles), rtol=1e-3, atol=1e-3)
    assert rows[0] == 6 and 3 in rows, f"the run never switched to cond-only: rows {rows}"


# --- manners -------------------------------------------------------------------------------------------------------

def test_foreign_hooks_are_chained_and_see_real_predictions(inprocess_bed, patch):
    bed = inprocess_bed
    calls: list[int] = []
    unconds: list[bool] = []
    model = patch(bed.model, "SteerCFGSkip", mode="percent", start_percent=0.5, end_percent=1.0)
    model = model.clone()
    model.set_model_sampler_calc_cond_batch_function(
        lambda args: calls.append(len(args["conds"])) or comfy.samplers.calc_cond_batch(
            args["model"], args["conds"], args["input"], args["sigma"], args["model_options"]))
    model.set_model_sampler_post_cfg_function(
        lambda args: unconds.append(bool(torch.equal(args["uncond_denoised"], args["cond_denoised"])))
        or args["denoised"])
    ksampler(model, bed.positive, bed.negative, 5.0, "euler", bed.latent(1), steps=4)
    assert len(calls) == 4
    assert unconds == [True, True, False, False]  # skipped steps hand hooks the cond, never an all-zero tensor


def test_a_foreign_cfg_function_runs_at_the_scheduled_scale(inprocess_bed, patch):
    bed = inprocess_bed
    rescaled = RescaleCFG().patch(bed.model, 0.7)[0]
    constant = patch(rescaled, "SteerScaleSchedule", curve="constant")
    latent = bed.latent(2)
    assert torch.equal(run(core_guider(constant, bed, 6.0), "euler", latent),
                       run(core_guider(rescaled, bed, 6.0), "euler", latent))


def test_cfg_pp_sampler_with_skip_everywhere_is_the_plain_sampler(inprocess_bed, patch):
    bed = inprocess_bed
    everywhere = patch(bed.model, "SteerCFGSkip", mode="sigma", sigma_high=1e-3, sigma_low=0.0)
    latent = bed.latent(2)
    torch.testing.assert_close(run(core_guider(everywhere, bed, 1.0), "euler_cfg_pp", latent),
                               run(core_guider(bed.model, bed, 1.0), "euler", latent), rtol=1e-4, atol=1e-4)


def test_a_guider_that_bypasses_the_protocol_gets_a_warning(inprocess_bed, patch, caplog):
    bed = inprocess_bed
    model = patch(bed.model, "SteerCFGSkip", mode="percent", start_percent=0.5)
    guider = DualCFGGuider.execute(model, bed.positive, bed.negative, bed.negative, 5.0, 5.0, "regular").result[0]
    with caplog.at_level(logging.WARNING):
        run(guider, "euler", bed.latent(1), steps=2)
    assert "Guider_DualCFG" in caplog.text and "drops the Steer patches" in caplog.text


# --- bad input -----------------------------------------------------------------------------------------------------

def test_bad_inputs_are_refused_with_the_node_input_and_range(inprocess_bed, steer_nodes, patch):
    schedule = steer_nodes["SteerScaleSchedule"]
    message = schedule.validate_inputs(custom="12, 10, abc")
    assert "SteerScaleSchedule" in message and "custom" in message and "value 3" in message
    assert schedule.validate_inputs(custom="12, 10") is True
    with pytest.raises(ValueError, match=r"Steer Scale Schedule \(SteerScaleSchedule\): input 'custom'"):
        patch(inprocess_bed.model, "SteerScaleSchedule", curve="custom", custom="")
    with pytest.raises(ValueError, match=r"Steer CFG Skip \(SteerCFGSkip\): input 'start_percent' .* 0.0–1.0"):
        patch(inprocess_bed.model, "SteerCFGSkip", mode="percent", start_percent=0.8, end_percent=0.2)
    with pytest.raises(ValueError, match=r"\(SteerCFGSkip\): input 'sigma_low'"):
        patch(inprocess_bed.model, "SteerCFGSkip", mode="sigma", sigma_high=1.0, sigma_low=2.0)


# --- coming from mcmonkey's Dynamic Thresholding ---------------------------------------------------------------------

def _pooled_mean_ad(guided, mimic, per_image: bool):
    """MEAN/AD at percentile 1, each channel centred on its mean, spreads per channel or per image (all channels)."""
    flat, mim = guided.flatten(2), mimic.flatten(2)
    mean = flat.mean(2, keepdim=True)
    centred, mim_centred = flat - mean, mim - mim.mean(2, keepdim=True)
    dims = (1, 2) if per_image else (2,)
    mim_ref = mim_centred.abs().amax(dim=dims, keepdim=True)
    limit = torch.maximum(mim_ref, centred.abs().amax(dim=dims, keepdim=True))
    return (centred.clamp(-limit, limit) / limit * mim_ref + mean).view_as(guided)


@pytest.mark.parametrize("separate", [True, False])
def test_dynamic_threshold_mimic_curve_and_channel_pooling_match_reference(bed, patch, separate):
    """mimic_curve linear_down from mimic_scale 6 to mimic_scale_min 2 over the run, statistics per channel or per
    image over its channels (separate_feature_channels off), against an independent formula."""
    cfg = 11.0
    model = patch(bed.model, "SteerDynamicThreshold", mimic_scale=6.0, mimic_curve="linear_down", mimic_scale_min=2.0,
                  separate_feature_channels=separate)

    def formula(out, step, steps, _x):
        mimic = 2.0 + 4.0 * (1 - step / (steps - 1))
        return _pooled_mean_ad(out[1] + (out[0] - out[1]) * cfg, out[1] + (out[0] - out[1]) * mimic, not separate)

    latent = bed.latent(2)
    actual = run(core_guider(model, bed, cfg), "euler", latent, steps=6)
    torch.testing.assert_close(actual, run(Reference(bed.model, bed, formula), "euler", latent, steps=6),
                               rtol=1e-4, atol=1e-4)
    constant = run(core_guider(patch(bed.model, "SteerDynamicThreshold", mimic_scale=6.0,
                                     separate_feature_channels=separate), bed, cfg), "euler", latent, steps=6)
    assert not torch.allclose(actual, constant)


def test_dynamic_threshold_per_image_statistics_keep_images_apart(inprocess_bed, patch):
    """separate_feature_channels off pools one image's channels, never the batch: changing image 0's noise leaves
    image 1 exactly as it was (batches of equal size, so the model's own numerics are the same)."""
    bed = inprocess_bed
    guider = core_guider(patch(bed.model, "SteerDynamicThreshold", mimic_scale=3.0, separate_feature_channels=False),
                         bed, 12.0)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    other = noise.clone()
    other[0] = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(4)) * 3

    def sample(initial):
        return guider.sample(initial, bed.latent(2), comfy.samplers.sampler_object("euler"), sigmas(bed.model, 5),
                             disable_pbar=True, seed=1)

    first, second = sample(noise), sample(other)
    assert torch.equal(first[1], second[1]) and not torch.allclose(first[0], second[0])


def test_imagen_default_percentile_is_the_papers(inprocess_bed, patch):
    """A new node (threshold_percentile at its default, -1 = auto) in imagen mode clamps at the paper's 0.995; a
    workflow saved with 1.0 keeps 1.0."""
    bed = inprocess_bed
    latent = bed.latent(2)

    def sample(**inputs):
        return run(core_guider(patch(bed.model, "SteerDynamicThreshold", mode="imagen", **inputs), bed, 9.0), "euler",
                   latent)

    auto = sample()
    assert torch.equal(auto, sample(threshold_percentile=0.995))
    assert not torch.allclose(auto, sample(threshold_percentile=1.0))


@pytest.mark.parametrize(("inputs", "expected"), [
    ({"startpoint": "ZERO", "threshold_percentile": 0.2},
     "Steer Dynamic Threshold (SteerDynamicThreshold): input 'threshold_percentile' (0.2) is below 0.5 with startpoint "
     "ZERO"),
    ({"threshold_percentile": -0.5}, "Steer Dynamic Threshold (SteerDynamicThreshold): input 'threshold_percentile' "
                                     "(-0.5) is outside 0.0–1.0"),
])
def test_dynamic_threshold_refuses_settings_that_cannot_work(steer_nodes, patch, inprocess_bed, inputs, expected):
    node = steer_nodes["SteerDynamicThreshold"]
    settings = {"mode": "latent", "threshold_percentile": -1.0, "startpoint": "MEAN", "variability": "AD"} | inputs
    assert expected in node.validate_inputs(**settings)
    assert node.validate_inputs(**(settings | {"threshold_percentile": None})) is True  # linked: checked in execute
    with pytest.raises(ValueError) as refused:
        patch(inprocess_bed.model, "SteerDynamicThreshold", **inputs)
    assert expected in str(refused.value)


@pytest.mark.parametrize(("node_id", "new_inputs"), [
    ("SteerDynamicThreshold", {"mimic_curve", "mimic_scale_min", "mimic_curve_value", "separate_feature_channels"}),
    ("SteerScaleSchedule", {"cycles"}),
])
def test_new_inputs_are_optional_with_the_same_defaults_in_the_ui_and_in_python(steer_nodes, node_id, new_inputs):
    """Saved workflows keep loading: the inputs added for mcmonkey's users are optional, and a prompt that lacks them
    gets, in execute, the very defaults a new node shows (constant mimic, per-channel statistics, one cycle)."""
    node = steer_nodes[node_id]
    parameters = inspect.signature(node.execute).parameters
    optional = {i.id: i.default for i in node.define_schema().inputs if i.optional}
    assert set(optional) == new_inputs
    assert {name: parameters[name].default for name in optional} == optional
