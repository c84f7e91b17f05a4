"""SteerTrace / SteerTracePlot in the real ComfyUI: the record of each step follows what the run did (both doors),
tracing changes nothing, and the plot finds the run of the latent it is given."""

from __future__ import annotations

import math

import pytest
import torch

from testbed.sampling import custom_advanced, ksampler, model_calls, steer_guider


@pytest.fixture
def node(steer_nodes):
    def apply(node_id: str, *args, **inputs):
        return steer_nodes[node_id].execute(*args, **inputs).result

    return apply


def patched(node, model, pag: bool = True):
    """cfg 7 → 2 (linear), CFG only from half-way, PAG (scale 2) on the whole run."""
    model = node("SteerScaleSchedule", model, curve="linear_down", cfg_min=2.0, switch_at=0.5, exponent=2.0,
                 custom="")[0]
    model = node("SteerCFGSkip", model, "percent", 0.5, 1.0, 5.42, 0.28, 0.99)[0]
    if pag:
        model = node("SteerPAG", model, scale=2.0, blocks="middle.0", start_percent=0.0, end_percent=1.0)[0]
    return model


@pytest.mark.parametrize("door", ["ksampler", "guider"])
def test_trace_records_what_each_step_did(inprocess_bed, steer_guider_node, node, door):
    bed = inprocess_bed
    untraced = patched(node, bed.model)
    traced, recorder = node("SteerTrace", untraced)

    def sample(model):
        if door == "ksampler":
            return ksampler(model, bed.positive, bed.negative, 7.0, "euler", bed.latent(2), steps=6)
        return custom_advanced(steer_guider(steer_guider_node, model, bed, 7.0), "euler", bed.latent(2), steps=6)

    with model_calls(bed.model) as rows:
        latent = sample(traced)
    assert torch.equal(latent, sample(untraced)), "tracing changed the result"
    run = recorder.find(latent)
    assert run is not None and run.steps == 6
    for image in (0, 1):
        table = run.per_step(image)
        assert table["scale"] == pytest.approx([7.0 - 5.0 * i / 5 for i in range(6)])
        assert table["guided"] == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]  # p = i/5 ≥ 0.5 from step 3
        assert table["rows"] == [float(r) for r in rows] == [4.0] * 3 + [6.0] * 3  # cond+perturbed, then +uncond
        assert all(math.isnan(v) for v in table["difference"][:3]) and all(v > 0 for v in table["difference"][3:])
        assert all(v > 0 for v in table["pag"]) and all(math.isnan(v) for v in table["threshold_factor"])
        assert all(-1.0 <= v <= 1.0 for v in table["cosine"]) and table["cosine"][0] < 1.0  # PAG turns D off D_c
    images = node("SteerTracePlot", recorder, {"samples": latent})[0]
    assert images.shape[0] == 2 and images.shape[3] == 3 and images.dtype == torch.float32
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0 and float(images.std()) > 0.05


def test_threshold_factor_is_recorded_on_guided_steps(inprocess_bed, node):
    bed = inprocess_bed
    model = node("SteerDynamicThreshold", bed.model, "latent", 3.0, -1.0, "MEAN", "AD", 1.0)[0]
    model, recorder = node("SteerTrace", model)
    latent = ksampler(model, bed.positive, bed.negative, 12.0, "euler", bed.latent(1), steps=4)
    factors = recorder.find(latent).per_step(0)["threshold_factor"]
    assert all(0.0 < v < 1.0 for v in factors), factors  # cfg 12 squeezed towards the spread of cfg 3


def test_plot_draws_the_run_of_its_latent(inprocess_bed, node):
    """Two samplers on one traced model (as two KSamplers in one workflow, or a re-queue with another cfg): each
    latent finds its own run, also after a later run; a latent no traced run returned is refused by name."""
    bed = inprocess_bed
    model, recorder = node("SteerTrace", patched(node, bed.model, pag=False))
    strong = ksampler(model, bed.positive, bed.negative, 9.0, "euler", bed.latent(1), steps=5)
    weak = ksampler(model, bed.positive, bed.negative, 3.0, "euler", bed.latent(1), steps=5)
    assert recorder.find(strong).per_step(0)["scale"][0] == 9.0
    assert recorder.find(weak).per_step(0)["scale"][0] == 3.0
    strong_plot = node("SteerTracePlot", recorder, {"samples": strong})[0]
    assert not torch.equal(strong_plot, node("SteerTracePlot", recorder, {"samples": weak})[0])
    with pytest.raises(ValueError, match=r"Steer Trace Plot \(SteerTracePlot\): input 'samples': no traced run"):
        node("SteerTracePlot", recorder, {"samples": strong + 1.0})


def test_copies_of_the_traced_model_share_its_recorder(inprocess_bed, node):
    """Patches after SteerTrace clone the model (ComfyUI deep-copies model_options): their runs are recorded too."""
    bed = inprocess_bed
    traced, recorder = node("SteerTrace", bed.model)
    later = node("SteerScaleSchedule", traced, curve="constant", cfg_min=1.0, switch_at=0.5, exponent=2.0,
                 custom="")[0]
    latent = ksampler(later, bed.positive, bed.negative, 5.0, "euler", bed.latent(1), steps=3)
    assert recorder.find(latent).per_step(0)["rows"] == [2.0, 2.0, 2.0]


def test_trace_on_every_test_bed_model(bed, node):
    """The in-process SD1.5-family model, the tiny SD1.5 checkpoint and the SD3 flow model: rows as computed, the
    scale per step, and the same latent as without tracing."""
    model = node("SteerCFGSkip", bed.model, "percent", 0.0, 0.5, 5.42, 0.28, 0.99)[0]
    traced, recorder = node("SteerTrace", model)
    with model_calls(bed.model) as rows:
        latent = ksampler(traced, bed.positive, bed.negative, 5.0, "euler", bed.latent(1), steps=4)
    assert torch.equal(latent, ksampler(model, bed.positive, bed.negative, 5.0, "euler", bed.latent(1), steps=4))
    table = recorder.find(latent).per_step(0)
    assert table["rows"] == [float(r) for r in rows] == [2.0, 2.0, 1.0, 1.0]
    assert table["scale"] == [5.0] * 4 and table["guided"] == [1.0, 1.0, 0.0, 0.0]
