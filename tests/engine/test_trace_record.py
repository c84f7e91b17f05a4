"""The per-run trace behind SteerTrace: what combine reports for an evaluation, per-step aggregation over several
evaluations, and the recorder that finds a run again by its output."""

import copy
import math

import pytest
import torch

from guiders import engine
from guiders.engine import Recipe
from guiders.negatives import ExtraNegative
from guiders.perturbation import Perturbation
from guiders.threshold import DynamicThreshold
from guiders.trace import Recorder, Trace

SCHEDULE = [10.0, 5.0, 2.0, 1.0, 0.0]


def tensors(seed: int, count: int, shape=(2, 4, 6, 6)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(count)]


def test_an_evaluation_is_recorded_as_it_was_computed():
    recipe = Recipe(threshold=DynamicThreshold(mimic_scale=2.0), negatives=(ExtraNegative("n", 0.5),),
                    perturbations=(Perturbation(scale=1.5), Perturbation(scale=0.5)))
    d_c, d_u, d_n, d_p, d_q = tensors(1, 5)
    run = engine.new_run(SCHEDULE, trace=Trace(4))
    step = engine.plan(recipe, run, 9.0, SCHEDULE[1], 2)
    out = engine.combine(recipe, step, d_c, d_u, [d_n], [d_p, d_q], trace=run.trace)
    assert torch.equal(out, engine.combine(recipe, step, d_c, d_u, [d_n], [d_p, d_q]))  # tracing changes nothing
    (record,) = run.trace.evaluations
    assert (record.step, record.scale, record.guided, record.rows) == (1, 9.0, (True, True), 2 * 5)
    pag = 1.5 * (d_c - d_p) + 0.5 * (d_c - d_q)  # both PAG patches: the term is their sum
    unthresholded = d_u + 9.0 * (d_c - d_u) - 0.5 * (d_n - d_u) + pag
    for b in range(2):
        assert record.difference[b] == pytest.approx(float((d_c[b] - d_u[b]).norm()), rel=1e-5)
        cosine = float((out[b] * d_c[b]).sum() / (out[b].norm() * d_c[b].norm()))
        assert record.cosine[b] == pytest.approx(cosine, rel=1e-5)
        assert record.threshold_factor[b] == pytest.approx(float(out[b].norm() / unthresholded[b].norm()), rel=1e-4)
        assert record.threshold_factor[b] < 1.0
        assert record.pag[b] == pytest.approx(float(pag[b].norm()), rel=1e-5)


def test_unguided_evaluations_have_no_guidance_measures():
    """Scale 1 without negatives: the uncond is not computed, one branch, nothing but the cosine (exactly 1)."""
    d_c, = tensors(2, 1)
    run = engine.new_run(SCHEDULE, trace=Trace(4))
    step = engine.plan(Recipe(threshold=DynamicThreshold()), run, 1.0, SCHEDULE[0], 2)
    engine.combine(Recipe(threshold=DynamicThreshold()), step, d_c, d_c, trace=run.trace)
    (record,) = run.trace.evaluations
    assert record.rows == 2 and record.guided == (False, False)
    assert all(math.isnan(v) for v in record.difference + record.threshold_factor + record.pag)
    assert record.cosine == pytest.approx((1.0, 1.0))


def test_per_step_sums_rows_and_averages_measures_over_a_steps_evaluations():
    trace = Trace(3)
    recipe = Recipe()
    d_c, d_u = tensors(3, 2, shape=(1, 4, 4, 4))
    run = engine.new_run(SCHEDULE[:4], evaluations=[2, 2, 1], trace=trace)
    for sigma in (10.0, 5.0, 5.0, 2.0, 2.0):  # Heun-like: two evaluations in steps 0 and 1, one in step 2
        step = engine.plan(recipe, run, 4.0, sigma, 1)
        engine.combine(recipe, step, d_c * sigma, d_u, trace=trace)
    table = trace.per_step(0)
    assert [e.step for e in trace.evaluations] == [0, 0, 1, 1, 2]
    assert table["rows"] == [4.0, 4.0, 2.0] and table["scale"] == [4.0, 4.0, 4.0] and table["guided"] == [1.0] * 3
    first = [e.difference[0] for e in trace.evaluations[:2]]
    assert table["difference"][0] == pytest.approx(sum(first) / 2)
    assert all(math.isnan(v) for v in table["pag"])
    assert Trace(2).per_step(0)["scale"][0] != Trace(2).per_step(0)["scale"][0]  # NaN: step never evaluated


def test_the_recorder_finds_each_run_by_its_output_and_survives_copies():
    recorder = Recorder(keep=2)
    assert copy.deepcopy({"trace": recorder})["trace"] is recorder
    outputs = tensors(4, 3, shape=(1, 4, 2, 2))
    for index, output in enumerate(outputs):
        recorder.begin()
        recorder.start(index + 1)
        recorder.finish(output)
    assert recorder.find(outputs[0]) is None  # only the last 2 runs are kept
    assert recorder.find(outputs[1]).steps == 2 and recorder.find(outputs[2]).steps == 3
    assert recorder.find(outputs[2] + 1e-3) is None
    recorder.begin()
    recorder.start(7)  # interrupted: never finished
    recorder.begin()
    recorder.start(5)
    recorder.finish(outputs[1])
    assert recorder.find(outputs[1]).steps == 5  # the newest run with this output, not the interrupted one


def test_without_a_trace_nothing_is_measured(monkeypatch):
    """Costs nothing when not used: a run has no trace unless SteerTrace gives one, and combine then never records."""
    assert engine.new_run(SCHEDULE).trace is None

    def measured(*_args, **_kwargs):
        raise AssertionError("measured without a trace")

    monkeypatch.setattr(engine, "record", measured)
    recipe = Recipe(threshold=DynamicThreshold(), perturbations=(Perturbation(scale=1.0),))
    d_c, d_u, d_p = tensors(5, 3)
    step = engine.plan(recipe, engine.new_run(SCHEDULE), 5.0, SCHEDULE[0], 2)
    engine.combine(recipe, step, d_c, d_u, (), [d_p])
