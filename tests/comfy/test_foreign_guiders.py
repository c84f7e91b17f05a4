"""Other packs' guiders with Steer patches: one that only sets the scale and calls core's predict_noise keeps them
working; one that computes its own guidance drops them and says so in every run, naming itself and the patches."""

from __future__ import annotations

import logging

import comfy.samplers
import torch
from comfy_extras.nodes_custom_sampler import DualCFGGuider
from comfy_extras.nodes_perpneg import PerpNegGuider

from testbed.sampling import FormulaGuider, run

SCALES = [8.0, 6.0, 4.0, 2.0, 1.0, 1.0]


class ScheduledCFGGuider(comfy.samplers.CFGGuider):
    """Like Inspire's and ScheduledGuider-Ext's scheduled CFG guiders: a scale per step (looked up on the run's
    schedule), then core's predict_noise."""

    def set_cfg(self, cfg):
        self.scales = list(cfg) if isinstance(cfg, (list, tuple)) else [cfg]
        self.cfg = self.scales[0]

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 - core's signature
        schedule = model_options["transformer_options"]["sample_sigmas"].tolist()
        step = min(range(len(schedule)), key=lambda i: abs(schedule[i] - float(timestep[0])))
        self.cfg = self.scales[min(step, len(self.scales) - 1)]
        return super().predict_noise(x, timestep, model_options, seed)


def apply(steer_nodes, model, node_id: str, **inputs):
    schema = steer_nodes[node_id].define_schema()
    values = {i.id: getattr(i, "default", None) for i in schema.inputs if i.id != "model"} | inputs
    return steer_nodes[node_id].execute(model, **values).result[0]


def scheduled(model, bed) -> ScheduledCFGGuider:
    guider = ScheduledCFGGuider(model)
    guider.set_conds(bed.positive, bed.negative)
    guider.set_cfg(SCALES)
    return guider


def test_a_scheduled_guider_keeps_steer_patches_working(inprocess_bed, steer_nodes, caplog):
    bed = inprocess_bed
    weight = 0.5
    model = apply(steer_nodes, bed.model, "SteerNegative", negative=bed.positive, scale=weight, mode="perpendicular")
    model = apply(steer_nodes, model, "SteerCFGSkip", mode="percent", start_percent=0.3, end_percent=1.0)

    def formula(out, step, steps, _x):
        d_c, d_u, d_n = out
        if step / (steps - 1) < 0.3:
            return d_c
        toward, away = (d_c - d_u).flatten(1), (d_n - d_u).flatten(1)
        away = away - (away * toward).sum(1, keepdim=True) / (toward * toward).sum(1, keepdim=True) * toward
        return d_u + (d_c - d_u) * SCALES[step] - weight * away.view_as(d_c)

    latent = bed.latent(2)
    with caplog.at_level(logging.WARNING):
        actual = run(scheduled(model, bed), "euler", latent)
    expected = run(FormulaGuider(bed.model, bed, formula, extra=(bed.positive,)), "euler", latent)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert "Steer" not in caplog.text
    # And the patches really acted: without them the scheduled guider gives something else.
    assert not torch.allclose(actual, run(scheduled(bed.model, bed), "euler", latent), rtol=1e-3, atol=1e-3)


def test_a_neutral_steer_patch_leaves_a_scheduled_guider_as_it_was(inprocess_bed, steer_nodes):
    bed = inprocess_bed
    model = apply(steer_nodes, bed.model, "SteerScaleSchedule", curve="constant")
    latent = bed.latent(2)
    expected = run(scheduled(bed.model, bed), "euler", latent)
    torch.testing.assert_close(run(scheduled(model, bed), "euler", latent), expected, rtol=1e-5,
                               atol=1e-5 * float(expected.abs().max()))


def test_guiders_with_their_own_guidance_warn_in_every_run(inprocess_bed, steer_nodes, caplog):
    bed = inprocess_bed
    model = apply(steer_nodes, bed.model, "SteerCFGSkip", mode="percent", start_percent=0.5)
    model = apply(steer_nodes, model, "SteerNegative", negative=bed.positive, scale=0.3)
    guiders = {
        "Guider_DualCFG": DualCFGGuider.execute(model, bed.positive, bed.negative, bed.negative, 5.0, 5.0,
                                                "regular").result[0],
        "Guider_PerpNeg": PerpNegGuider.execute(model, bed.positive, bed.negative, bed.negative, 5.0, 1.0).result[0],
    }
    for name, guider in guiders.items():
        for _ in range(2):
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                run(guider, "euler", bed.latent(1), steps=3)
            warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Steer:")]
            assert len(warnings) == 1, warnings  # once per run, not once per evaluation nor once per process
            assert name in warnings[0] and "SteerCFGSkip, SteerNegative" in warnings[0]
