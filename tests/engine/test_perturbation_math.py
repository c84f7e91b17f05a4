"""The pure parts of perturbation guidance: the block grammar, window, adaptive scale and per-image rescale; PAG's
identity attention on joint text–image attention against diffusers' mask formulation; SEG's query blur against the
reference code's 2-D kernel; skip-layer's row selection."""

import math

import pytest
import torch

from guiders.pag import joint_identity_attention
from guiders.perturbation import Perturbation, format_block, parse_blocks, perturbation_term, rescaled
from guiders.seg import blur_queries
from guiders.skip_layer import skip_rows
from testbed.references import joint_pag, seg_blur


def test_block_grammar():
    assert parse_blocks("input.4, middle.0  output.1.2;joint.12") == (
        ("input", 4, None), ("middle", 0, None), ("output", 1, 2), ("double", 12, None))
    assert parse_blocks("double.7-9, single.0") == (("double", 7, None), ("double", 8, None), ("double", 9, None),
                                                    ("single", 0, None))
    assert parse_blocks("middle.0, middle.0") == (("middle", 0, None),)
    assert [format_block(b) for b in parse_blocks("output.1.2, joint.3")] == ["output.1.2", "double.3"]


@pytest.mark.parametrize(("text", "position"), [("mid0", 1), ("middle.0, output", 2), ("joint.1.2", 1),
                                                ("middle.0, up.1", 2), ("double.9-7", 1), ("single.1.0", 1)])
def test_bad_blocks_name_their_position(text, position):
    with pytest.raises(ValueError, match=f"block {position} "):
        parse_blocks(text)
    with pytest.raises(ValueError, match="no blocks"):
        parse_blocks(" , ")


def test_window_is_inclusive_in_sigma_and_zero_scale_is_off():
    window = Perturbation(scale=3.0, sigma_high=5.0, sigma_low=1.0)
    assert [window.active(s) for s in (6.0, 5.0, 3.0, 1.0, 0.5)] == [False, True, True, True, False]
    assert not Perturbation(scale=0.0).active(1.0)


def test_adaptive_scale_fades_as_the_packs_do():
    """pamparamm's adaptive_scale: s − s·a⁴·(1000 − t), never below 0."""
    fading = Perturbation(scale=3.0, adaptive_scale=0.2)
    for t in (999.0, 800.0, 400.0, 0.0):
        assert fading.scale_at(t) == pytest.approx(max(0.0, 3.0 - 3.0 * 0.2 ** 4 * (1000 - t)))
    assert fading.scale_at(0.0) == 0.0 and not fading.active(0.03, timestep=0.0)
    assert Perturbation(scale=3.0).scale_at(0.0) == 3.0


def test_rescale_is_per_image_and_matches_core_at_batch_1():
    g = torch.Generator().manual_seed(3)
    cond, perturbed, cfg_result = (torch.randn(2, 4, 6, 6, generator=g) * (i + 1) for i in range(3))
    guided = cfg_result + perturbation_term(cond, perturbed, 2.0)
    out = rescaled(guided, cond, 0.7)
    for row in range(2):
        # core SkipLayerGuidanceDiT: factor = r·std(cond)/std(result) + 1 − r, over its whole (batch-1) tensor
        factor = 0.7 * cond[row].std() / guided[row].std() + 0.3
        torch.testing.assert_close(out[row], guided[row] * factor)
    constant = torch.ones(1, 4, 6, 6)
    assert torch.equal(rescaled(constant, constant, 1.0), constant)  # no spread to match: unchanged, never NaN


def diffusers_joint_pag(q, k, v, image: slice) -> torch.Tensor:
    """diffusers' PAGJointAttnProcessor2_0's outputs for the image queries."""
    return joint_pag(q, k, v, image)[..., image, :]


@pytest.mark.parametrize("text_first", [True, False])
def test_joint_identity_attention_is_diffusers_pag(text_first):
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 3, 7 + 20, 8, generator=g) for _ in range(3))
    image = slice(7, 27) if text_first else slice(0, 20)
    expected = diffusers_joint_pag(q, k, v, image)
    torch.testing.assert_close(joint_identity_attention(q, k, v, image, chunk=6), expected)
    # The variant Steer had before (each image query its own value, the text cut off) is not PAG on joint attention:
    assert (v[..., image, :] - expected).abs().max() > 0.1
    # A masked text key is ignored, as a masked key is in attention.
    key_mask = torch.zeros(1, 1, 27)
    masked = 22 if not text_first else 3  # a text token
    key_mask[..., masked] = float("-inf")
    kept = [i for i in range(27) if i != masked]
    torch.testing.assert_close(joint_identity_attention(q, k, v, image, key_mask),
                               diffusers_joint_pag(q[..., kept, :], k[..., kept, :], v[..., kept, :],
                                                   slice(image.start - (masked < image.start),
                                                         image.stop - (masked < image.start))))


@pytest.mark.parametrize(("grid", "sigma"), [((6, 6), 1.0), ((8, 8), 0.7), ((5, 5), 3.0), ((2, 4, 4), 1.5),
                                             ((6, 6), math.inf), ((4, 4), 100.0)])
def test_query_blur_is_the_reference_codes(grid, sigma):
    g = torch.Generator().manual_seed(7)
    q = torch.randn(2, 3, math.prod(grid), 8, generator=g)
    torch.testing.assert_close(blur_queries(q, grid, sigma), seg_blur(q, grid, sigma))
    assert torch.equal(blur_queries(q, grid, 10_000.0), seg_blur(q, grid, math.inf))


def test_skip_rows_passes_the_input_through_on_chosen_rows_only():
    block_input, block_output = torch.zeros(3, 5, 4), torch.ones(3, 5, 4)
    out = skip_rows(block_input, block_output, torch.tensor([False, True, False]))
    assert torch.equal(out[1], block_input[1]) and torch.equal(out[[0, 2]], block_output[[0, 2]])
