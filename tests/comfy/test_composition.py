"""Steer patches meeting each other and the rest of ComfyUI in the real sampler: two patches of one kind, foreign
attention patches keyed per transformer, zero weights, ControlNet and hook groups on extra negatives, and adaptive
CFG-skip on a flow model."""

from __future__ import annotations

import logging

import comfy.controlnet
import comfy.hooks
import comfy.ldm.modules.attention
import comfy.samplers
import pytest
import torch
from comfy.model_patcher import set_model_options_patch_replace
from comfy_extras.nodes_model_advanced import ModelSamplingSD3
from comfy_extras.nodes_sag import SelfAttentionGuidance

import nodes
from testbed.comfy import MODELS
from testbed.models import SD15_CONTROLNET
from testbed.sampling import ksampler, model_calls, relative_error


def apply(steer_nodes, model, node_id: str, **inputs):
    """A Steer patch node by id with its schema defaults, overridden by keyword."""
    cls = steer_nodes[node_id]
    values = {i.id: getattr(i, "default", None) for i in cls.define_schema().inputs if i.id != "model"}
    return cls.execute(model, **(values | inputs)).result[0]


class Formula(comfy.samplers.CFGGuider):
    """An independent reference: core's own calc_cond_batch for [positive, negative, *extra] (core registers the
    hooks of every cond it holds), perturbed conds in separate calls with identity attention on `perturbed` blocks
    (as core PAG does), combined by `formula(outputs, perturbed_outputs)`."""

    def __init__(self, model, positive, negative, formula, extra=(), perturbed=()):
        super().__init__(model)
        self.inner_set_conds({"positive": positive, "negative": negative}
                             | {f"extra{i}": cond for i, cond in enumerate(extra)})
        self.formula, self.extra, self.perturbed = formula, len(extra), perturbed

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 - core's signature
        conds = [self.conds["positive"], self.conds["negative"]] + [self.conds[f"extra{i}"] for i in range(self.extra)]
        outputs = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, model_options)
        perturbed = []
        for blocks in self.perturbed:
            options = model_options.copy()  # set_model_options_patch_replace edits the dict it is given
            for kind, number in blocks:
                options = set_model_options_patch_replace(options, lambda q, k, v, extra: v, "attn1", kind, number)
            perturbed += comfy.samplers.calc_cond_batch(self.inner_model, [self.conds["positive"]], x, timestep,
                                                        options)
        return self.formula(outputs, perturbed)


def sample(guider, latent: torch.Tensor, steps: int = 4, seed: int = 1) -> torch.Tensor:
    import comfy.sample

    sigmas = comfy.samplers.calculate_sigmas(guider.model_patcher.get_model_object("model_sampling"), "normal", steps)
    return guider.sample(comfy.sample.prepare_noise(latent, seed), latent, comfy.samplers.sampler_object("euler"),
                         sigmas.cpu(), disable_pbar=True, seed=seed)


# --- item 4: attention patches keyed per transformer ----------------------------------------------------------------

def test_pag_holds_where_another_node_patched_the_blocks_transformer(inprocess_bed, steer_nodes):
    bed = inprocess_bed
    rows_seen: list[int] = []

    def foreign(q, k, v, extra_options):
        rows_seen.append(q.shape[0])
        return comfy.ldm.modules.attention.optimized_attention(q, k, v, extra_options["n_heads"])

    model = bed.model.clone()
    model.set_model_attn1_replace(foreign, "middle", 0, 0)  # keyed as core's SelfAttentionGuidance keys its patch
    ksampler(apply(steer_nodes, model, "SteerPAG", blocks="middle.0"), bed.positive, bed.negative, 5.0, "euler",
             bed.latent(2), steps=3)
    assert rows_seen == [4] * 3  # the foreign patch runs for cond and uncond; the perturbed rows got the identity


def test_sag_then_pag_is_not_sag_alone(inprocess_bed, steer_nodes):
    bed = inprocess_bed
    sag = SelfAttentionGuidance.execute(bed.model, 0.5, 2.0).result[0]
    alone = ksampler(sag, bed.positive, bed.negative, 5.0, "euler", bed.latent(1), steps=4)
    both = ksampler(apply(steer_nodes, sag, "SteerPAG"), bed.positive, bed.negative, 5.0, "euler", bed.latent(1),
                    steps=4)
    assert torch.isfinite(both).all()
    assert relative_error(both, alone) > 1e-3


# --- item 9: two patches of one kind --------------------------------------------------------------------------------

def test_two_pag_patches_are_two_branches_of_one_call(inprocess_bed, steer_nodes):
    bed = inprocess_bed
    model = apply(steer_nodes, bed.model, "SteerPAG", scale=3.0, blocks="middle.0")
    model = apply(steer_nodes, model, "SteerPAG", scale=1.5, blocks="input.1", start_percent=0.5)
    with model_calls(bed.model) as rows:
        actual = sample(_core(model, bed, 5.0), bed.latent(1), steps=3)
    assert rows == [3, 4, 4]  # p = 0, 0.5, 1: the second patch's window starts at step 1; always one call

    def formula(out, perturbed):
        d_c, d_u = out
        guided = d_u + (d_c - d_u) * 5.0 + (d_c - perturbed[0]) * 3.0
        return guided + (d_c - perturbed[1]) * 1.5 if len(perturbed) > 1 else guided

    class Windowed(Formula):  # the second patch only from progress 0.5 on: steps 1 and 2 of 3
        def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006
            schedule = model_options["transformer_options"]["sample_sigmas"].tolist()
            self.perturbed = ([("middle", 0)], [("input", 1)]) if float(timestep[0]) < schedule[0] else (
                [("middle", 0)],)
            return super().predict_noise(x, timestep, model_options, seed)

    expected = sample(Windowed(bed.model, bed.positive, bed.negative, formula), bed.latent(1), steps=3)
    assert relative_error(actual, expected) < 1e-4


def test_a_later_schedule_replaces_the_earlier_and_the_log_names_it(inprocess_bed, steer_nodes, caplog):
    bed = inprocess_bed
    earlier = apply(steer_nodes, bed.model, "SteerScaleSchedule", curve="linear_down", cfg_min=1.0)
    with caplog.at_level(logging.WARNING):
        both = apply(steer_nodes, earlier, "SteerScaleSchedule", curve="cosine_up", cfg_min=2.0)
    assert "Steer Scale Schedule" in caplog.text and "cosine_up" in caplog.text and "linear_down" in caplog.text
    later = apply(steer_nodes, bed.model, "SteerScaleSchedule", curve="cosine_up", cfg_min=2.0)
    assert torch.equal(sample(_core(both, bed, 6.0), bed.latent(1)), sample(_core(later, bed, 6.0), bed.latent(1)))


# --- item 5: a zero weight costs no rows ----------------------------------------------------------------------------

@pytest.mark.parametrize(("cfg", "expected_rows"), [(1.0, 2), (5.0, 4)])
def test_zero_weight_negative_and_pag_cost_no_rows(inprocess_bed, steer_nodes, cfg, expected_rows):
    bed = inprocess_bed
    model = apply(steer_nodes, bed.model, "SteerNegative", negative=bed.positive, scale=0.0)
    model = apply(steer_nodes, model, "SteerPAG", scale=0.0)
    with model_calls(bed.model) as rows:
        actual = ksampler(model, bed.positive, bed.negative, cfg, "euler", bed.latent(2), steps=3)
    assert rows == [expected_rows] * 3
    assert torch.equal(actual, ksampler(bed.model, bed.positive, bed.negative, cfg, "euler", bed.latent(2), steps=3))


# --- item 7: ControlNet and hook groups on extra negatives ----------------------------------------------------------

def _core(model, bed, cfg: float) -> comfy.samplers.CFGGuider:
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(bed.positive, bed.negative)
    guider.set_cfg(cfg)
    return guider


def _mixed(bed) -> list:
    """A third prompt for an extra negative: halfway between the bed's positive and negative."""
    (positive, extras), ((negative, _),) = bed.positive[0], bed.negative
    return [[(positive + negative) / 2, dict(extras)]]


def test_an_extra_negative_without_control_takes_the_main_negatives(sd15_bed, steer_nodes):
    bed = sd15_bed
    control_net = comfy.controlnet.load_controlnet(str(MODELS / SD15_CONTROLNET))
    hint = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    positive, negative = nodes.ControlNetApplyAdvanced().apply_controlnet(bed.positive, bed.negative, control_net,
                                                                          hint, 1.0, 0.0, 1.0)
    extra = _mixed(bed)
    (main_control,) = {c[1]["control"] for c in negative}
    by_hand = [[t, d | {"control": main_control}] for t, d in extra]
    inherited = ksampler(apply(steer_nodes, bed.model, "SteerNegative", negative=extra, scale=0.7), positive,
                         negative, 6.0, "euler", bed.latent(1), steps=4)
    explicit = ksampler(apply(steer_nodes, bed.model, "SteerNegative", negative=by_hand, scale=0.7), positive,
                        negative, 6.0, "euler", bed.latent(1), steps=4)
    assert torch.equal(inherited, explicit)
    uncontrolled = ksampler(apply(steer_nodes, bed.model, "SteerNegative", negative=extra, scale=0.7), bed.positive,
                            bed.negative, 6.0, "euler", bed.latent(1), steps=4)
    assert relative_error(inherited, uncontrolled) > 1e-3  # the control really changes the result


def test_hooks_on_an_extra_negative_are_registered(inprocess_bed, steer_nodes):
    bed = inprocess_bed
    key = "diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_v.weight"
    weight = bed.model.model.state_dict()[key]
    hooks = comfy.hooks.create_hook_model_as_lora({key: -2 * weight}, None, 1.0, 1.0)
    hooked = comfy.hooks.set_hooks_for_conditioning(_mixed(bed), hooks)
    weight_n, cfg = 0.8, 5.0

    def formula(out, _perturbed):
        d_c, d_u, d_n = out
        return d_u + (d_c - d_u) * cfg - weight_n * (d_n - d_u)

    model = apply(steer_nodes, bed.model, "SteerNegative", negative=hooked, scale=weight_n)
    actual = sample(_core(model, bed, cfg), bed.latent(2))
    expected = sample(Formula(bed.model, bed.positive, bed.negative, formula, extra=(hooked,)), bed.latent(2))
    assert relative_error(actual, expected) < 1e-5
    unhooked = apply(steer_nodes, bed.model, "SteerNegative", negative=_mixed(bed), scale=weight_n)
    assert relative_error(actual, sample(_core(unhooked, bed, cfg), bed.latent(2))) > 1e-3


# --- item 14: adaptive CFG-skip compares noise predictions on flow models -------------------------------------------

def test_adaptive_skip_on_a_flow_model_follows_the_noise_prediction(inprocess_bed, steer_nodes):
    bed = inprocess_bed
    flow = ModelSamplingSD3().patch(bed.model, 3.0)[0]
    cosines: list[float] = []

    def record(args):
        x, sigma = args["input"], args["sigma"].view(-1, 1, 1, 1)
        n_c, n_u = ((x - (1 - sigma) * args[k]) / sigma for k in ("cond_denoised", "uncond_denoised"))
        cosines.append(torch.nn.functional.cosine_similarity(n_c.flatten(1), n_u.flatten(1)).item())
        return args["denoised"]

    recorder = flow.clone()
    recorder.set_model_sampler_post_cfg_function(record)
    sample(_core(recorder, bed, 5.0), bed.latent(1), steps=8)
    # Pure noise at σ = 1 tells nothing (the noise is x); from step 1 on, switch after the first step that agrees.
    ordered = sorted(cosines[1:-1])
    threshold = (ordered[len(ordered) // 2] + ordered[len(ordered) // 2 + 1]) / 2  # between two measured values
    switch = next(i for i in range(1, 8) if cosines[i] >= threshold) + 1

    model = apply(steer_nodes, flow, "SteerCFGSkip", mode="adaptive", threshold=threshold)
    with model_calls(bed.model) as rows:
        sample(_core(model, bed, 5.0), bed.latent(1), steps=8)
    assert rows == [2] * switch + [1] * (8 - switch)


# --- item 12: custom values beyond the run --------------------------------------------------------------------------

def test_custom_values_beyond_the_run_are_reported_once(inprocess_bed, steer_nodes, caplog):
    bed = inprocess_bed
    model = apply(steer_nodes, bed.model, "SteerScaleSchedule", curve="custom", custom="9, 6, 3, 2, 1")
    with caplog.at_level(logging.WARNING):
        ksampler(model, bed.positive, bed.negative, 5.0, "heun", bed.latent(1), steps=3)
    reports = [r.getMessage() for r in caplog.records if "custom schedule" in r.getMessage()]
    assert reports == ["Steer Scale Schedule: the custom schedule has 5 values but this run has 3 steps; the last 2 "
                       "are not used."]
