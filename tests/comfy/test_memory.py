"""Memory: with ComfyUI's free-memory estimate forced low, Steer's multi-branch batches split like core's and give the
same latents; the peak memory of a Steer step is no higher than core's for the same branches."""

from __future__ import annotations

import comfy.model_management
import comfy.sample
import comfy.samplers
import pytest
import torch
from comfy_extras.nodes_perpneg import PerpNegGuider

from testbed.families import load_family
from testbed.memory import peak_cpu_bytes
from testbed.sampling import core_guider, ksampler, model_calls, relative_error, sigmas


def force_free_memory(monkeypatch, model_patcher, shape: tuple[int, ...]) -> None:
    """ComfyUI's free-memory estimate, forced to just what a call of input `shape` needs (calc_cond_batch batches
    entries while model.memory_required(shape) · 1.5 fits). Attention then also works in smaller slices."""
    free = model_patcher.model.memory_required(shape) * 1.5 + 1

    def get_free_memory(dev=None, torch_free_too=False):
        return (free, free) if torch_free_too else free

    monkeypatch.setattr(comfy.model_management, "get_free_memory", get_free_memory)


def steer_all(steer_nodes, family):
    model = steer_nodes["SteerNegative"].execute(family.model, family.third, 0.5, "subtract").result[0]
    model = steer_nodes["SteerNegative"].execute(model, family.positive, 0.3, "perpendicular").result[0]
    blocks = "middle.0" if family.name == "sd15" else "double.0"
    return steer_nodes["SteerPAG"].execute(model, scale=2.0, blocks=blocks, start_percent=0.0,
                                           end_percent=1.0).result[0]


@pytest.mark.parametrize("name", ["sd15", "wan"])
def test_forced_low_free_memory_splits_the_batch_and_keeps_the_latents(steer_nodes, monkeypatch, name):
    family = load_family(name)
    entries = 5  # cond, uncond, two extra negatives, perturbed cond
    model = steer_all(steer_nodes, family)
    latent = family.latent(2)
    with model_calls(family.model) as rows:
        whole = ksampler(model, family.positive, family.negative, 5.0, "euler", latent, steps=3)
    assert rows == [2 * entries] * 3

    force_free_memory(monkeypatch, family.model, (4, *latent.shape[1:]))
    with model_calls(family.model) as rows:
        split = ksampler(model, family.positive, family.negative, 5.0, "euler", latent, steps=3)
    per_step = [4, 4, 2]  # entries of 2 rows, at most two per call (in ComfyUI's order)
    assert sorted(rows) == sorted(per_step * 3)
    assert relative_error(split, whole) < 1e-4  # batches of other sizes round differently


def one_step_peak(guider, latent: torch.Tensor) -> int:
    noise = comfy.sample.prepare_noise(latent, 1)
    schedule = sigmas(guider.model_patcher, 1)
    sampler = comfy.samplers.sampler_object("euler")
    return peak_cpu_bytes(lambda: guider.sample(noise, latent, sampler, schedule, disable_pbar=True, seed=1))


def test_peak_memory_of_a_steer_step_is_no_higher_than_cores(inprocess_bed, steer_nodes):
    """Same branches, same rows: CFG (core CFGGuider vs SteerGuider) and three branches (core PerpNegGuider vs Steer
    with one perpendicular extra negative). Measured on the tiny in-process UNet at a 32×32 latent, batch 2."""
    bed = inprocess_bed
    latent = torch.zeros(2, 4, 32, 32)
    guider = steer_nodes["SteerGuider"]
    core_cfg = one_step_peak(core_guider(bed.model, bed, 6.0), latent)
    steer_cfg = one_step_peak(guider.execute(bed.model, bed.positive, bed.negative, 6.0).result[0], latent)
    perp_neg = PerpNegGuider.execute(bed.model, bed.positive, bed.negative, bed.negative, 6.0, 1.0).result[0]
    core_three = one_step_peak(perp_neg, latent)
    negative = steer_nodes["SteerNegative"].execute(bed.model, bed.negative, 1.0, "perpendicular").result[0]
    steer_three = one_step_peak(guider.execute(negative, bed.positive, bed.negative, 6.0).result[0], latent)
    assert core_cfg > 0 and core_three > core_cfg
    # Steer's own bookkeeping (masks, per-sample scalars) is a few hundred bytes against megabytes of activations.
    assert steer_cfg <= core_cfg * 1.001, (steer_cfg, core_cfg)
    assert steer_three <= core_three * 1.001, (steer_three, core_three)
