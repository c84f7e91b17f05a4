"""PAG's pure parts: the block grammar, the window, the guidance term and the MMDiT image-query identity."""

import pytest
import torch

from guiders.pag import PerturbedAttention, format_block, pag_term, parse_blocks, perturb_image_queries


def test_block_grammar():
    assert parse_blocks("input.4, middle.0  output.1.2;joint.12") == (
        ("input", 4, None), ("middle", 0, None), ("output", 1, 2), ("joint", 12, None))
    assert parse_blocks("middle.0, middle.0") == (("middle", 0, None),)
    assert [format_block(b) for b in parse_blocks("output.1.2, joint.3")] == ["output.1.2", "joint.3"]


@pytest.mark.parametrize(("text", "position"), [("mid0", 1), ("middle.0, output", 2), ("joint.1.2", 1),
                                                ("middle.0, up.1", 2)])
def test_bad_blocks_name_their_position(text, position):
    with pytest.raises(ValueError, match=f"block {position} "):
        parse_blocks(text)
    with pytest.raises(ValueError, match="no blocks"):
        parse_blocks(" , ")


def test_window_and_zero_scale():
    window = PerturbedAttention(scale=3.0, start_percent=0.25, end_percent=0.5)
    assert [window.active(step, 9) for step in range(9)] == [False, False, True, True, True, False, False, False,
                                                              False]
    assert not PerturbedAttention(scale=0.0).active(0, 9)


def test_pag_term_moves_away_from_the_perturbed_prediction():
    g = torch.Generator().manual_seed(0)
    d_c, d_p = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    torch.testing.assert_close(pag_term(d_c, d_p, 3.0), 3.0 * d_c - 3.0 * d_p)
    assert torch.equal(pag_term(d_c, d_c, 3.0), torch.zeros_like(d_c))


def test_image_queries_keep_their_own_values_and_text_queries_are_untouched():
    g = torch.Generator().manual_seed(1)
    attention_out, v = torch.randn(2, 5 + 16, 12, generator=g), torch.randn(2, 5 + 16, 12, generator=g)
    out = perturb_image_queries(attention_out, v, image_tokens=16)
    assert torch.equal(out[:, :5], attention_out[:, :5])
    assert torch.equal(out[:, 5:], v[:, 5:])
    assert not torch.equal(attention_out[:, 5:], v[:, 5:])  # the inputs differ, so the check above means something
