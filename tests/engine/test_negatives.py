"""Extra negatives: the subtract direction D_n − D_u and its part orthogonal to D_c − D_u (Perp-Neg), per sample."""

import pytest
import torch

from guiders.negatives import ExtraNegative, negative_direction


@pytest.fixture
def denoised() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(20)
    d_u = torch.randn(3, 4, 8, 8, generator=g)
    d_c = d_u + 0.5 * torch.randn(3, 4, 8, 8, generator=g)
    # The negative shares a part of the positive's direction, so the perpendicular part differs from the whole.
    d_n = d_u + 0.7 * (d_c - d_u) + 0.5 * torch.randn(3, 4, 8, 8, generator=g)
    return d_c, d_u, d_n


def per_sample_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.double().flatten(1) * b.double().flatten(1)).sum(dim=1)


def reference_perpendicular(d_n, d_u, d_c) -> torch.Tensor:
    out = torch.empty(d_n.shape, dtype=torch.float64)
    for b in range(d_n.shape[0]):
        away = (d_n[b] - d_u[b]).double()
        toward = (d_c[b] - d_u[b]).double()
        norm2 = float((toward * toward).sum())
        parallel = toward * (float((away * toward).sum()) / norm2) if norm2 > 0 else torch.zeros_like(toward)
        out[b] = away - parallel
    return out


def test_subtract_is_the_difference_exactly(denoised):
    d_c, d_u, d_n = denoised
    assert torch.equal(negative_direction(d_n, d_u, d_c, "subtract"), d_n - d_u)


def test_perpendicular_matches_reference(denoised):
    d_c, d_u, d_n = denoised
    got = negative_direction(d_n, d_u, d_c, "perpendicular")
    assert got.shape == d_n.shape
    torch.testing.assert_close(got.double(), reference_perpendicular(d_n, d_u, d_c), rtol=1e-5, atol=1e-5)


def test_perpendicular_is_orthogonal_per_sample(denoised):
    d_c, d_u, d_n = denoised
    direction = negative_direction(d_n, d_u, d_c, "perpendicular")
    toward = d_c - d_u
    cosine = per_sample_dot(direction, toward) / (per_sample_dot(direction, direction).sqrt()
                                                  * per_sample_dot(toward, toward).sqrt())
    assert cosine.abs().max() < 1e-5
    # The batch-global projection would not be orthogonal per sample: make sure the data can tell them apart.
    away = (d_n - d_u).double()
    global_coefficient = float((away * toward.double()).sum() / (toward.double() ** 2).sum())
    global_direction = away - global_coefficient * toward.double()
    assert (per_sample_dot(global_direction, toward).abs() / per_sample_dot(toward, toward)).max() > 1e-3


def test_perpendicular_plus_parallel_reconstructs_the_difference(denoised):
    d_c, d_u, d_n = denoised
    direction = negative_direction(d_n, d_u, d_c, "perpendicular")
    toward = (d_c - d_u).double()
    away = (d_n - d_u).double()
    coefficient = per_sample_dot(away, toward) / per_sample_dot(toward, toward)
    parallel = coefficient.view(-1, 1, 1, 1) * toward
    torch.testing.assert_close(direction.double() + parallel, away, rtol=1e-5, atol=1e-5)
    assert (coefficient > 0.3).all()  # a real parallel part was removed


def test_perpendicular_rows_are_independent(denoised):
    d_c, d_u, d_n = denoised
    whole = negative_direction(d_n, d_u, d_c, "perpendicular")
    changed_c = d_c.clone()
    changed_c[0] = torch.flip(changed_c[0], dims=(1,))
    changed = negative_direction(d_n, d_u, changed_c, "perpendicular")
    assert torch.equal(changed[1], whole[1]) and torch.equal(changed[2], whole[2])
    assert not torch.allclose(changed[0], whole[0])


def test_perpendicular_with_zero_positive_direction(denoised):
    """D_c = D_u for one sample: nothing to be orthogonal to, the whole difference is kept, and it is finite."""
    d_c, d_u, d_n = denoised
    d_c = d_c.clone()
    d_c[1] = d_u[1]
    got = negative_direction(d_n, d_u, d_c, "perpendicular")
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got[1], d_n[1] - d_u[1])
    torch.testing.assert_close(got.double()[[0, 2]], reference_perpendicular(d_n, d_u, d_c)[[0, 2]],
                               rtol=1e-5, atol=1e-5)
    zeros = torch.zeros(2, 4, 4, 4)
    assert torch.equal(negative_direction(zeros, zeros, zeros, "perpendicular"), zeros)


def test_perpendicular_of_a_parallel_negative_is_zero(denoised):
    d_c, d_u, _ = denoised
    d_n = d_u + 2.5 * (d_c - d_u)
    got = negative_direction(d_n, d_u, d_c, "perpendicular")
    assert got.abs().max() < 1e-5
    assert (d_n - d_u).abs().max() > 0.5


def test_perpendicular_keeps_a_non_contiguous_layout():
    g = torch.Generator().manual_seed(21)
    d_u, d_c, d_n = (torch.randn(4, 8, 8, 3, generator=g).permute(0, 3, 1, 2) for _ in range(3))
    assert not d_n.is_contiguous()
    got = negative_direction(d_n, d_u, d_c, "perpendicular")
    torch.testing.assert_close(got.double(), reference_perpendicular(d_n, d_u, d_c), rtol=1e-5, atol=1e-5)


def test_extra_negative_defaults_and_identity():
    a, b = ExtraNegative("cond"), ExtraNegative("cond")
    assert (a.scale, a.mode) == (1.0, "subtract")
    assert a != b  # compared by identity: conditionings are opaque, never compared by value


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_perpendicular_half_precision_on_a_large_latent_is_finite(dtype):
    # 4·128·128 elements of magnitude ~3: a half-precision sum of squares overflows (fp16 max 65504).
    g = torch.Generator().manual_seed(21)
    d_u = 3 * torch.randn(2, 4, 128, 128, generator=g)
    d_c = d_u + 3 * torch.randn(2, 4, 128, 128, generator=g)
    d_n = d_u + 3 * torch.randn(2, 4, 128, 128, generator=g)
    half = negative_direction(d_n.to(dtype), d_u.to(dtype), d_c.to(dtype), "perpendicular")
    assert half.dtype == dtype and torch.isfinite(half).all()
    expected = reference_perpendicular(d_n.to(dtype).float(), d_u.to(dtype).float(), d_c.to(dtype).float())
    torch.testing.assert_close(half.double(), expected, rtol=2e-2, atol=2e-2)
