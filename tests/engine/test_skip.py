"""CFG-skip: which steps are guided (percent, sigma) and the per-sample noise cosine of the adaptive mode."""

import pytest
import torch

from guiders.skip import CFGSkip, noise_cosine


def guided_steps(skip: CFGSkip, schedule: list[float]) -> list[int]:
    steps = len(schedule) - 1
    return [i for i in range(steps) if skip.guides_step(i, steps, schedule[i])]


def uniform(steps: int) -> list[float]:
    return [float(steps - i) for i in range(steps + 1)]


@pytest.mark.parametrize(("start", "end", "steps", "expected"), [
    (0.4, 1.0, 10, [4, 5, 6, 7, 8, 9]),  # p = i/9: 3/9 < 0.4 ≤ 4/9
    (0.0, 1.0, 10, list(range(10))),
    (0.0, 0.5, 11, [0, 1, 2, 3, 4, 5]),  # p = 0.5 at step 5 is inside (end inclusive)
    (0.3, 0.7, 11, [3, 4, 5, 6, 7]),  # both ends hit exactly
    (0.5, 0.5, 3, [1]),
    (0.6, 0.4, 10, []),
    (1.0, 1.0, 20, [19]),
    (0.0, 0.0, 20, [0]),
    (0.25, 1.0, 5, [1, 2, 3, 4]),
])
def test_percent_mode(start, end, steps, expected):
    skip = CFGSkip(mode="percent", start_percent=start, end_percent=end)
    assert guided_steps(skip, uniform(steps)) == expected


def test_percent_mode_ignores_sigmas():
    skip = CFGSkip(mode="percent", start_percent=0.4, end_percent=1.0)
    assert guided_steps(skip, [14.6, 9.0, 6.0, 4.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.05, 0.0]) == [4, 5, 6, 7, 8, 9]


@pytest.mark.parametrize(("low", "high", "expected"), [
    (0.28, 5.42, [2, 3, 4, 5]),  # σ 5.42 is in (0.28, 5.42]; σ 0.28 is not
    (0.0, 100.0, [0, 1, 2, 3, 4, 5, 6]),
    (1.0, 2.9, [3, 4]),  # 2.9 in, 1.0 out
    (0.9, 2.8, [4, 5]),
    (1.0, 1.5, [4]),
    (20.0, 30.0, []),
])
def test_sigma_mode_uses_the_step_sigma(low, high, expected):
    schedule = [14.6, 8.0, 5.42, 2.9, 1.5, 1.0, 0.28, 0.0]
    skip = CFGSkip(mode="sigma", sigma_low=low, sigma_high=high)
    assert guided_steps(skip, schedule) == expected


def test_adaptive_mode_guides_every_step_statically():
    skip = CFGSkip(mode="adaptive", start_percent=0.9, end_percent=0.9, sigma_low=50.0, sigma_high=60.0)
    assert guided_steps(skip, uniform(10)) == list(range(10))


def reference_cosine(x, d_c, d_u) -> list[float]:
    out = []
    for b in range(x.shape[0]):
        a = (x[b] - d_c[b]).double().flatten()
        c = (x[b] - d_u[b]).double().flatten()
        out.append(float((a * c).sum() / (a.norm() * c.norm())))
    return out


def test_noise_cosine_per_sample():
    g = torch.Generator().manual_seed(30)
    x = torch.randn(4, 4, 8, 8, generator=g) * 3
    d_c = torch.randn(4, 4, 8, 8, generator=g)
    d_u = d_c + torch.randn(4, 4, 8, 8, generator=g) * torch.tensor([0.01, 0.3, 1.0, 5.0]).view(4, 1, 1, 1)
    got = noise_cosine(x, d_c, d_u)
    assert got.shape == (4,)
    expected = reference_cosine(x, d_c, d_u)
    assert got.tolist() == pytest.approx(expected, abs=1e-5)
    assert expected[0] > 0.99 > expected[3]  # the data spans both sides of a typical threshold


def test_noise_cosine_extremes_and_independence():
    g = torch.Generator().manual_seed(31)
    x = torch.randn(3, 2, 4, 4, generator=g)
    d_c = torch.randn(3, 2, 4, 4, generator=g)
    d_u = d_c.clone()
    d_u[1] = 2 * x[1] - d_c[1]  # x − D_u = −(x − D_c)
    d_u[2] = x[2] - 3 * (x[2] - d_c[2])  # same direction, three times as long
    got = noise_cosine(x, d_c, d_u)
    assert got.tolist() == pytest.approx([1.0, -1.0, 1.0], abs=1e-6)
    changed = d_u.clone()
    changed[1] += 1.0
    other = noise_cosine(x, d_c, changed)
    assert other[0] == got[0] and other[2] == got[2] and other[1] != got[1]


def test_noise_cosine_half_precision_is_finite():
    g = torch.Generator().manual_seed(32)
    x, d_c, d_u = (torch.randn(2, 4, 16, 16, generator=g).half() * 20 for _ in range(3))
    got = noise_cosine(x, d_c, d_u)
    assert torch.isfinite(got).all()
    assert got.tolist() == pytest.approx(reference_cosine(x, d_c, d_u), abs=1e-3)


def test_noise_cosine_on_flow_compares_the_noise_predictions():
    # Flow path x = (1 − σ)x0 + σn: the noise prediction is (x − (1 − σ)·D)/σ, not ∝ x − D (that is the velocity).
    g = torch.Generator().manual_seed(41)
    sigma = torch.tensor([0.3, 0.8]).view(-1, 1, 1, 1)
    x, d_c, d_u = (torch.randn(2, 16, 8, 8, generator=g) for _ in range(3))
    n_c, n_u = ((x - (1 - sigma) * d) / sigma for d in (d_c, d_u))
    expected = torch.nn.functional.cosine_similarity(n_c.flatten(1).double(), n_u.flatten(1).double(), dim=1)
    torch.testing.assert_close(noise_cosine(x, d_c, d_u, 1 - sigma).double(), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(noise_cosine(x, d_c, d_u).double(), expected, atol=1e-2)
