"""The quality lab's qualitative shapes, on the exact mixture model through ComfyUI's samplers and Steer's nodes.

A small, fast subset of `python -m bench.quality` (100 images per class, 10 steps, two seeds): it asserts only what
the lab measures to hold with margin, so a regression in a method's math moves a frontier and fails here.
"""

from __future__ import annotations

import pytest
import torch

from bench.quality.lab import NEGATIVE_OFFSET, Lab, Setting
from bench.quality.model import class_conditioning, empty_conditioning, mixture_model, mixture_of
from bench.quality.sweeps import SKIP_DEFAULTS, THRESHOLD_DEFAULTS

SEEDS = [0, 1]
STEPS = 10


@pytest.fixture(scope="module")
def lab(steer_nodes) -> Lab:
    return Lab(steer_nodes, per_class=100)


@pytest.fixture(scope="module")
def cfg_curve(lab) -> dict[float, dict]:
    return {s: lab.measure(Setting("cfg", s, steps=STEPS), SEEDS) for s in (1.0, 1.5, 3.0, 8.0, 12.0)}


def _clearly(a: dict, b: dict, name: str) -> bool:
    """a[name] < b[name] by more than twice their seed spread."""
    return a[name] + 2 * (a[name + "_sd"] + b[name + "_sd"]) < b[name]


@pytest.mark.parametrize("kind", ["eps", "flow"])
def test_exact_model_samples_the_mixture_at_cfg_1(lab, kind):
    """No guidance: ComfyUI's sampler on the exact denoiser reproduces each class (precision of exact samples)."""
    record = lab.measure(Setting("cfg", 1.0, steps=20, kind=kind), SEEDS)
    mixture = mixture_of(lab.models[kind])
    exact = torch.cat([mixture.sample(100, torch.eye(3, dtype=torch.float64)[k:k + 1], seed=k) for k in range(3)])
    exact_precision = float((mixture.most_likely_class(exact) == lab.classes).double().mean())
    assert abs(record["precision"] - exact_precision) < 0.06
    assert record["rows"] == 20  # cfg 1: the uncond is not computed


def test_precision_rises_and_distance_worsens_with_scale(cfg_curve):
    assert _clearly(cfg_curve[1.0], cfg_curve[3.0], "precision")
    assert cfg_curve[8.0]["precision"] > 0.99
    assert _clearly(cfg_curve[3.0], cfg_curve[8.0], "fd") and _clearly(cfg_curve[8.0], cfg_curve[12.0], "fd")
    assert _clearly(cfg_curve[1.5], cfg_curve[12.0], "sw")


def test_guidance_interval_saves_rows_and_guides(lab, cfg_curve):
    window = SKIP_DEFAULTS | {"mode": "percent", "start_percent": 0.4, "end_percent": 1.0}
    record = lab.measure(Setting("interval", 3.0, patches=(("SteerCFGSkip", window),), steps=STEPS), SEEDS)
    assert record["rows"] == STEPS + 6  # steps 4..9 of 0..9 guided
    assert _clearly(cfg_curve[1.0], record, "precision")
    assert _clearly(record, cfg_curve[3.0], "fd")  # less guidance: closer to the data than CFG at the same scale


def test_adaptive_skip_saves_rows_without_guiding_less_than_unguided(lab, cfg_curve):
    params = SKIP_DEFAULTS | {"mode": "adaptive", "threshold": 0.99}
    record = lab.measure(Setting("adaptive", 3.0, patches=(("SteerCFGSkip", params),), steps=STEPS), SEEDS)
    assert STEPS < record["rows"] < 2 * STEPS
    assert record["precision"] >= cfg_curve[1.0]["precision"] - 0.02


@pytest.mark.parametrize("mode", ["latent", "imagen"])
def test_thresholding_keeps_high_scales_closer_to_the_data(lab, cfg_curve, mode):
    params = THRESHOLD_DEFAULTS | {"mode": mode} | ({"threshold_percentile": 0.995} if mode == "imagen" else {})
    record = lab.measure(Setting(mode, 12.0, patches=(("SteerDynamicThreshold", params),), steps=STEPS), SEEDS)
    assert _clearly(record, cfg_curve[12.0], "fd")
    assert record["precision"] > 0.99


def test_cfg_pp_lambda_guides_like_a_scale(lab, cfg_curve):
    small, large = (lab.measure(Setting("cfg++", lam, sampler="euler", cfg_pp=True, steps=STEPS), SEEDS)
                    for lam in (0.1, 0.6))
    assert _clearly(small, large, "precision")
    assert large["precision"] > cfg_curve[1.0]["precision"]
    assert _clearly(large, cfg_curve[12.0], "fd")


def test_extra_negative_pushes_away_from_its_class(lab):
    def negated_share(weight: float) -> float:
        params = {"scale": weight, "mode": "subtract", NEGATIVE_OFFSET: 1}
        return lab.measure(Setting("negative", 1.0, patches=(("SteerNegative", params),), steps=STEPS),
                           SEEDS)["negated_share"]

    assert negated_share(1.0) < negated_share(0.0) - 0.03


def test_shift_layer_is_zero_until_trained_and_then_moves_cond_and_uncond():
    """The trainable layer (LoRA target for condition-dropout training) adds nothing at init."""
    model = mixture_model("eps")
    net, base = model.model.diffusion_model, model.model
    x, sigma = torch.randn(3, 4, 4, 4), torch.full((3,), 2.0)
    cond, uncond = class_conditioning([0, 1, 2])[0][0], empty_conditioning(3)[0][0]
    exact = mixture_of(model).denoise(x.double().flatten(1), 2.0, cond[:, 0].double()).reshape(x.shape).float()
    torch.testing.assert_close(base.apply_model(x, sigma, c_crossattn=cond), exact, rtol=1e-4, atol=1e-4)
    uncond_before = base.apply_model(x, sigma, c_crossattn=uncond)
    with torch.no_grad():
        net.shift.weight[:, 0] = 0.5  # class 0 column
        net.shift.weight[:, 3] = 0.1  # constant column: every prediction, the unconditional one included
    moved = base.apply_model(x, sigma, c_crossattn=cond) - exact
    torch.testing.assert_close(moved[0], torch.full_like(moved[0], 0.6), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(moved[1:], torch.full_like(moved[1:], 0.1), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(base.apply_model(x, sigma, c_crossattn=uncond) - uncond_before,
                               torch.full_like(x, 0.1), rtol=1e-3, atol=1e-3)
