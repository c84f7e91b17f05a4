"""The quality lab's exact mixture and metrics (pure torch: no ComfyUI)."""

from __future__ import annotations

import pytest
import torch

from bench.quality.metrics import frechet_distance, sliced_wasserstein
from bench.quality.mixture import default_mixture, one_hot


@pytest.fixture(scope="module")
def mixture():
    return default_mixture()


def _brute_force_denoise(mixture, x, sigma, alpha, weights):
    """E[x0 | x] written out per component, with a [B, J, d] tensor (the reference for the fast form)."""
    variance = alpha[:, :, None] ** 2 * mixture.variances + sigma[:, :, None] ** 2
    log_density = -0.5 * (((x[:, None] - alpha[:, :, None] * mixture.means) ** 2 / variance).sum(-1)
                          + torch.log(2 * torch.pi * variance).sum(-1))
    prior = mixture.log_weights + torch.log(weights[:, mixture.classes])
    r = torch.softmax(prior + log_density, -1)
    gain = alpha[:, :, None] * mixture.variances / variance
    return (r[:, :, None] * (mixture.means + gain * (x[:, None] - alpha[:, :, None] * mixture.means))).sum(1)


@pytest.mark.parametrize("flow", [False, True])
def test_denoiser_matches_the_posterior_mean_written_out(mixture, flow):
    generator = torch.Generator().manual_seed(3)
    sigma = torch.rand(50, 1, generator=generator, dtype=torch.float64) * (0.99 if flow else 10) + 0.01
    alpha = 1 - sigma if flow else torch.ones_like(sigma)
    x0 = mixture.sample(50, None, seed=4)
    x = alpha * x0 + sigma * torch.randn(50, mixture.dim, generator=generator, dtype=torch.float64)
    weights = one_hot(torch.arange(50) % 3, 3)
    weights[::5] = 0  # empty conditioning rows: the whole mixture
    expected = _brute_force_denoise(mixture, x, sigma, alpha, torch.where(weights.sum(-1, keepdim=True) > 0, weights,
                                                                         torch.ones_like(weights)))
    torch.testing.assert_close(mixture.denoise(x, sigma, weights, alpha), expected, rtol=1e-6, atol=1e-6)


def test_denoiser_beats_every_other_estimate_in_mean_squared_error(mixture):
    """The posterior mean is the MMSE estimate: perturbing it (or using the other class's) costs error."""
    x0 = mixture.sample(4000, one_hot([1], 3), seed=5)
    x = x0 + 1.5 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    exact = mixture.denoise(x, 1.5, one_hot([1], 3))
    mse = ((exact - x0) ** 2).mean()
    assert mse < ((mixture.denoise(x, 1.5, one_hot([0], 3)) - x0) ** 2).mean()
    assert mse < ((mixture.denoise(x, 1.5) - x0) ** 2).mean()  # the unconditional denoiser knows less
    assert mse < ((0.9 * exact - x0) ** 2).mean()


def test_classes_overlap_so_guidance_has_work(mixture):
    hits = [float((mixture.most_likely_class(mixture.sample(3000, one_hot([k], 3), seed=k)) == k).double().mean())
            for k in range(3)]
    assert 0.7 < min(hits) and max(hits) < 0.97


def test_exact_moments_match_samples(mixture):
    x = mixture.sample(40000, one_hot([2], 3), seed=7)
    mean, cov = mixture.moments(one_hot([2], 3))
    torch.testing.assert_close(x.mean(0), mean, atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.05, rtol=0)


def test_distances_are_small_for_exact_samples_and_grow_with_a_distortion(mixture):
    weights = one_hot([0], 3)
    mean, cov = mixture.moments(weights)
    x, y = mixture.sample(2000, weights, seed=8), mixture.sample(2000, weights, seed=9)
    assert frechet_distance(x, mean, cov) < 1.0 < frechet_distance(1.3 * x, mean, cov)
    assert sliced_wasserstein(x, y) < 0.05 < sliced_wasserstein(1.3 * x, y)
    # in the mixture's plane, sliced Wasserstein sees one component of the class standing in for all three
    one_mode = mixture.sample(2000, weights, seed=10)
    component = mixture.responsibilities(one_mode, weights).argmax(-1)
    one_mode = one_mode[component == component.mode().values]
    n = one_mode.shape[0]
    plane = mixture.plane
    assert n > 300
    assert sliced_wasserstein(one_mode, y[:n], basis=plane) > 3 * sliced_wasserstein(x[:n], y[:n], basis=plane)
