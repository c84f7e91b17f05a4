"""Steer's batched branches through ComfyUI's multi-GPU `calc_cond_batch` (ComfyUI ≥ 0.2x: `multigpu_clones`).

Core's MultiGPU CFG Split node gives the model a deep clone per extra device; sampling then spreads the entries of
each `calc_cond_batch` call over the devices (each device's share in one call of its own, `cond_or_uncond` naming the
entries it holds) and gathers the results. There is one CPU here, but ComfyUI keys its devices by `torch.device`, and
`torch.device("cpu", 1)` is a device of its own for that bookkeeping whose tensors live in CPU memory: so the clone is
built as the node builds it for a second GPU, on "cpu:1", and the real multi-GPU path runs (its thread pool, its
scheduler, the clone's own weights). Steer's branches (an extra negative, PAG's perturbed cond) must land in it as in
the single-device path: the same latents, with the work really split over both models.
"""

from __future__ import annotations

import pytest
import torch

from testbed.sampling import ksampler, model_calls, relative_error

multigpu = pytest.importorskip("comfy.multigpu", reason="this ComfyUI has no multi-GPU calc_cond_batch (after 0.8)")

SECOND_DEVICE = torch.device("cpu", 1)


def split_over_two_devices(model):
    """A clone of `model` (a ModelPatcher from a core loader) with a MultiGPU work-unit clone on SECOND_DEVICE, the
    steps of comfy.multigpu.create_multigpu_deepclones for one extra device (which lists only real accelerators)."""
    split = model.clone()
    second = split.deepclone_multigpu(new_load_device=SECOND_DEVICE)
    second.is_multigpu_base_clone = True
    split.set_additional_models("multigpu", [second])
    split.match_multigpu_clones()
    multigpu.GPUOptionsGroup().register(split)
    return split


def steer_patched(patch, model, bed):
    """An extra negative and PAG on `model`: four entries per evaluation (cond, uncond, extra negative, perturbed)."""
    return patch(patch(model, "SteerNegative", negative=bed.positive, scale=0.6), "SteerPAG", scale=3.0)


@pytest.mark.parametrize("steer_first", [False, True], ids=["split-then-steer", "steer-then-split"])
def test_steer_branches_through_the_multigpu_path_give_the_same_latents(sd15_bed, patch, steer_first):
    bed = sd15_bed
    expected = ksampler(steer_patched(patch, bed.model, bed), bed.positive, bed.negative, 5.0, "euler",
                        bed.latent(2), steps=4)
    model = (split_over_two_devices(steer_patched(patch, bed.model, bed)) if steer_first
             else steer_patched(patch, split_over_two_devices(bed.model), bed))
    (second,) = model.get_additional_models_with_key("multigpu")
    with model_calls(bed.model) as first_rows, model_calls(second) as second_rows:
        actual = ksampler(model, bed.positive, bed.negative, 5.0, "euler", bed.latent(2), steps=4)
    # Four entries of two rows each, two entries per device and step: each device ran half of every evaluation.
    assert first_rows == [4] * 4 and second_rows == [4] * 4
    assert second.model is not bed.model.model and second.load_device == SECOND_DEVICE
    assert relative_error(actual, expected) < 1e-5
    plain = ksampler(bed.model, bed.positive, bed.negative, 5.0, "euler", bed.latent(2), steps=4)
    assert relative_error(actual, plain) > 1e-3  # the negative and PAG really act
