"""SteerSweep in the real ComfyUI: each cell is KSampler's image at that scale and seed (with and without the Steer
patches), a ComfyUI progress bar over every step, interruptible between runs, bad scale lists refused by name."""

from __future__ import annotations

import comfy.model_management
import comfy.sd
import comfy.utils
import numpy as np
import pytest
import torch

from testbed.comfy import MODELS
from testbed.sampling import ksampler, model_calls


@pytest.fixture(scope="module")
def checkpoint(steer):
    path = MODELS / "checkpoints" / "steer_tiny_sd15.safetensors"
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(path))
    positive, negative = (clip.encode_from_tokens_scheduled(clip.tokenize(text))
                          for text in ("a red apple on a wooden table", "blurry, low quality"))
    return model, vae, positive, negative


def sweep(steer_nodes, model, vae, positive, negative, latent, scales="3, 9", compare=True, seed=5, steps=3):
    return steer_nodes["SteerSweep"].execute(model, seed, steps, "euler", "normal", positive, negative,
                                             {"samples": latent}, vae, 1.0, scales, compare).result[0]


def pixels(vae, latent):
    return (vae.decode(latent)[0].detach().clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def test_each_cell_is_ksamplers_image_with_and_without_steer(steer_nodes, checkpoint):
    base, vae, positive, negative = checkpoint
    model = steer_nodes["SteerDynamicThreshold"].execute(base, "latent", 4.0, -1.0, "MEAN", "AD", 1.0).result[0]
    latent = np.zeros((1, 4, 8, 8), dtype=np.float32)
    latent = torch.from_numpy(latent)
    (grid,) = sweep(steer_nodes, model, vae, positive, negative, latent).numpy()
    grid = (grid * 255).round().astype(np.uint8)
    band, left = grid.shape[0] - 2 * 64, grid.shape[1] - 2 * 64  # the column and row labels
    assert band > 10 and left > 10 and grid.shape[2] == 3
    for row, variant in enumerate((model, base)):
        for column, cfg in enumerate((3.0, 9.0)):
            cell = grid[band + row * 64:band + (row + 1) * 64, left + column * 64:left + (column + 1) * 64]
            expected = pixels(vae, ksampler(variant, positive, negative, cfg, "euler", latent, steps=3, seed=5))
            np.testing.assert_array_equal(cell, expected)
    assert not np.array_equal(grid[band:band + 64, left + 64:], grid[band + 64:, left + 64:])  # threshold acts
    assert grid[:band].min() < 100 and grid[band:, :left].min() < 100  # labels are drawn


def test_progress_counts_every_step_and_an_interrupt_stops_between_runs(steer_nodes, checkpoint):
    model, vae, positive, negative = checkpoint
    seen: list[tuple[int, int]] = []

    def hook(value, total, preview, node_id=None):
        seen.append((value, total))
        if value == 4:  # the first run's last step: interrupt before the second run starts
            comfy.model_management.interrupt_current_processing(True)

    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with model_calls(model) as rows, pytest.raises(comfy.model_management.InterruptProcessingException):
            sweep(steer_nodes, model, vae, positive, negative, torch.zeros(1, 4, 8, 8), scales="3, 5, 7", steps=4)
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)
        comfy.model_management.interrupt_current_processing(False)
    assert seen == [(1, 12), (2, 12), (3, 12), (4, 12)]  # no compare row: the model has no Steer patches
    assert len(rows) == 4


def test_one_grid_per_image_of_the_batch(steer_nodes, checkpoint):
    model, vae, positive, negative = checkpoint
    grids = sweep(steer_nodes, model, vae, positive, negative, torch.zeros(2, 4, 8, 8), scales="2 6 8", steps=2)
    assert grids.shape[0] == 2 and grids.shape[2:] == (3 * 64, 3)  # one row, no row label: no Steer patches here
    assert 10 < grids.shape[1] - 64 < 64  # the column labels' band
    assert not torch.equal(grids[0], grids[1])


@pytest.mark.parametrize(("scales", "message"), [
    ("", "Steer Sweep (SteerSweep): input 'scales': no scales given"),
    ("3, abc", "Steer Sweep (SteerSweep): input 'scales': value 2 ('abc') is not a decimal number"),
    ("3, 250", "Steer Sweep (SteerSweep): input 'scales': value 2 (250) is above 100"),
    ("1 " * 17, "Steer Sweep (SteerSweep): input 'scales': 17 scales, one sampling each; expected 1–16"),
    ("-2", "Steer Sweep (SteerSweep): input 'scales': value 1 ('-2')"),
])
def test_bad_scale_lists_are_refused_by_name(steer_nodes, checkpoint, scales, message):
    node = steer_nodes["SteerSweep"]
    assert message in node.validate_inputs(scales=scales)
    model, vae, positive, negative = checkpoint
    with pytest.raises(ValueError) as refused:
        sweep(steer_nodes, model, vae, positive, negative, torch.zeros(1, 4, 8, 8), scales=scales)
    assert message in str(refused.value)


def test_a_linked_scale_list_is_checked_when_it_arrives(steer_nodes):
    assert steer_nodes["SteerSweep"].validate_inputs(scales=None) is True
