"""CFG combination in x0 space: the identities that define it (no ComfyUI)."""

import pytest
import torch

from guiders import engine
from guiders.cfg import cfg


@pytest.fixture
def branches() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)


def test_scale_one_is_cond_exactly(branches):
    d_c, d_u = branches
    assert torch.equal(cfg(d_c, d_u, 1.0), d_c)


def test_scale_zero_is_uncond_exactly(branches):
    d_c, d_u = branches
    assert torch.equal(cfg(d_c, d_u, 0.0), d_u)


def test_linear_in_scale(branches):
    d_c, d_u = branches
    a, b = cfg(d_c, d_u, 2.0), cfg(d_c, d_u, 6.0)
    torch.testing.assert_close(cfg(d_c, d_u, 4.0), (a + b) / 2)
    torch.testing.assert_close(b - a, 4.0 * (d_c - d_u))


def test_swapping_cond_and_uncond_changes_the_result(branches):
    d_c, d_u = branches
    guided = cfg(d_c, d_u, 7.0)
    # Guidance moves away from the uncond, past the cond: D − D_c = (s − 1)(D_c − D_u).
    torch.testing.assert_close(guided - d_c, 6.0 * (d_c - d_u))
    assert not torch.allclose(cfg(d_u, d_c, 7.0), guided)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(branches, dtype):
    d_c, d_u = branches
    guided = cfg(d_c.to(dtype), d_u.to(dtype), 7.0)
    assert guided.dtype == dtype
    torch.testing.assert_close(guided.float(), cfg(d_c, d_u, 7.0), rtol=0.02, atol=0.05)


def test_batch_rows_are_independent(branches):
    d_c, d_u = branches
    whole = cfg(d_c, d_u, 5.0)
    changed_u = d_u.clone()
    changed_u[1] += 10.0
    other = cfg(d_c, changed_u, 5.0)
    for row in range(3):
        assert torch.equal(whole[row], cfg(d_c[row : row + 1], d_u[row : row + 1], 5.0)[0])
    assert torch.equal(other[0], whole[0]) and torch.equal(other[2], whole[2])
    assert not torch.equal(other[1], whole[1])


@pytest.mark.parametrize(("scale", "keep", "expected"), [(1.0, False, False), (1.0 + 1e-12, False, False),
                                                         (1.0, True, True), (1.5, False, True), (0.0, False, True)])
def test_uncond_needed_only_where_it_changes_the_result(scale, keep, expected):
    assert engine.needs_uncond(scale, keep) is expected
