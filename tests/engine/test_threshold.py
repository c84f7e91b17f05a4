"""Dynamic thresholding: the latent (mimic-scale) variant against an independent loop reference, and Imagen's."""

import math

import pytest
import torch
from reference import quantile

from guiders.threshold import AUTO_PERCENTILE, DynamicThreshold, imagen_threshold, mimic_threshold, settings_problem


def std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def reference_mimic(guided: torch.Tensor, mimic: torch.Tensor, startpoint: str, variability: str,
                    percentile: float, phi: float, separate: bool = True) -> torch.Tensor:
    """mcmonkey's Dynamic Thresholding as plain loops in float64: centred per (sample, channel), spreads measured per
    (sample, channel) or (separate=False) per sample over all its channels; ZERO + AD measures both spreads at the
    percentile, MEAN + AD the mimic's by its max; a channel without spread is kept."""
    out = torch.empty(guided.shape, dtype=torch.float64)
    for b in range(guided.shape[0]):
        groups = [[c] for c in range(guided.shape[1])] if separate else [list(range(guided.shape[1]))]
        for channels in groups:
            cfg, cfg_c, mim_c, means = {}, {}, {}, {}
            for c in channels:
                cfg[c] = guided[b, c].double().flatten().tolist()
                mim = mimic[b, c].double().flatten().tolist()
                means[c] = sum(cfg[c]) / len(cfg[c])
                cfg_c[c] = [v - means[c] for v in cfg[c]]
                mim_c[c] = [v - sum(mim) / len(mim) for v in mim]
            all_cfg = [v for c in channels for v in cfg_c[c]]
            all_mim = [v for c in channels for v in mim_c[c]]
            if variability == "AD":
                mim_ref = quantile([abs(v) for v in all_mim], percentile) if startpoint == "ZERO" \
                    else max(abs(v) for v in all_mim)
                cfg_ref = quantile([abs(v) for v in all_cfg], percentile)
            else:
                mim_ref, cfg_ref = std(all_mim), std(all_cfg)
            for c in channels:
                if max(abs(v) for v in all_cfg) == 0 or (startpoint == "ZERO" and cfg_ref == 0):
                    values = cfg[c]
                elif startpoint == "ZERO":
                    values = [v * mim_ref / cfg_ref for v in cfg[c]]
                elif variability == "STD":
                    values = [v / cfg_ref * mim_ref + means[c] for v in cfg_c[c]]
                else:
                    m = max(mim_ref, cfg_ref)
                    values = [min(max(v, -m), m) / m * mim_ref + means[c] for v in cfg_c[c]]
                values = [phi * v + (1 - phi) * g for v, g in zip(values, cfg[c], strict=True)]
                out[b, c] = torch.tensor(values, dtype=torch.float64).view(guided.shape[2:])
    return out


def reference_imagen(x0: torch.Tensor, p: float) -> torch.Tensor:
    out = torch.empty(x0.shape, dtype=torch.float64)
    for b in range(x0.shape[0]):
        row = x0[b].double()
        s = max(1.0, quantile(row.abs().flatten().tolist(), p))
        out[b] = row.clamp(-s, s) / s
    return out


def branches(seed: int, shape=(2, 4, 7, 9)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """D_c, D_u and an x with per-channel offsets and spreads (SD-latent-like, not centred, not unit)."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randn(shape[0], shape[1], *([1] * (len(shape) - 2)), generator=g)
    spread = torch.rand(shape[0], shape[1], *([1] * (len(shape) - 2)), generator=g) * 2 + 0.3
    d_u = torch.randn(shape, generator=g) * spread + offsets
    d_c = d_u + torch.randn(shape, generator=g) * spread * 0.4
    return d_c, d_u, torch.randn(shape, generator=g)


def guided_and_mimic(seed: int, scale: float = 12.0, mimic_scale: float = 4.0, shape=(2, 4, 7, 9)):
    d_c, d_u, _ = branches(seed, shape)
    return d_u + (d_c - d_u) * scale, d_u + (d_c - d_u) * mimic_scale


@pytest.mark.parametrize("startpoint", ["MEAN", "ZERO"])
@pytest.mark.parametrize("variability", ["AD", "STD"])
@pytest.mark.parametrize("percentile", [1.0, 0.9])
@pytest.mark.parametrize("phi", [1.0, 0.5, 0.3])
@pytest.mark.parametrize(("seed", "scale", "mimic_scale"), [(0, 12.0, 4.0), (1, 9.0, 7.0), (2, 3.0, 7.0)])
@pytest.mark.parametrize("separate", [True, False])
def test_latent_matches_reference(startpoint, variability, percentile, phi, seed, scale, mimic_scale, separate):
    """Guided spread above the mimic's (clamped), close to it, and below it (m = mim_ref: nothing clamped); spreads
    per (sample, channel) and, with separate_feature_channels off, per sample over all its channels."""
    guided, mimic = guided_and_mimic(seed, scale, mimic_scale)
    settings = DynamicThreshold(mode="latent", threshold_percentile=percentile, startpoint=startpoint,
                                variability=variability, interpolate_phi=phi, separate_feature_channels=separate)
    got = mimic_threshold(guided, mimic, settings)
    assert got.shape == guided.shape and got.dtype == guided.dtype
    expected = reference_mimic(guided, mimic, startpoint, variability, percentile, phi, separate)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)


def test_latent_mean_ad_clamps_only_when_the_guided_spread_is_larger():
    """Both branches of m = max(mim_ref, cfg_ref) are exercised by the data above; check the effect directly."""
    guided, mimic = guided_and_mimic(3)
    out = mimic_threshold(guided, mimic, DynamicThreshold())
    # MEAN + AD at percentile 1: every (sample, channel) ends with max |x − mean| = max |mimic − mean(mimic)|.
    for b in range(guided.shape[0]):
        for c in range(guided.shape[1]):
            got = (out[b, c] - guided[b, c].mean()).abs().max()
            want = (mimic[b, c] - mimic[b, c].mean()).abs().max()
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(out[b, c].mean(), guided[b, c].mean(), rtol=1e-5, atol=1e-5)


def test_latent_with_five_dims():
    guided, mimic = guided_and_mimic(4, shape=(2, 3, 2, 4, 5))
    settings = DynamicThreshold(threshold_percentile=0.9, variability="AD", startpoint="MEAN")
    expected = reference_mimic(guided, mimic, "MEAN", "AD", 0.9, 1.0)
    torch.testing.assert_close(mimic_threshold(guided, mimic, settings).double(), expected, rtol=1e-6, atol=1e-6)


ALL_SETTINGS = [DynamicThreshold(startpoint=s, variability=v, threshold_percentile=p, interpolate_phi=phi,
                                  separate_feature_channels=separate)
                for s in ("MEAN", "ZERO") for v in ("AD", "STD") for p in (1.0, 0.9) for phi in (1.0, 0.5)
                for separate in (True, False)]


@pytest.mark.parametrize("settings", ALL_SETTINGS)
def test_latent_all_zero_is_zero(settings):
    zeros = torch.zeros(2, 4, 8, 8)
    out = mimic_threshold(zeros, zeros.clone(), settings)
    assert torch.isfinite(out).all()
    assert torch.equal(out, zeros)


@pytest.mark.parametrize("settings", ALL_SETTINGS)
def test_latent_flat_channels_are_finite(settings):
    """Constant tensors, flat channels next to normal ones, a flat mimic and a flat guided channel."""
    guided, mimic = guided_and_mimic(5)
    guided[0, 1] = 0.37
    mimic[0, 2] = -1.25
    guided[1, 3] = 0.0
    mimic[1, 3] = 0.0
    for g_in, m_in in [(guided, mimic), (torch.full((2, 4, 8, 8), 0.1), torch.full((2, 4, 8, 8), 0.3)),
                       (torch.full((1, 4, 8, 8), 2.0), torch.zeros(1, 4, 8, 8)),
                       (torch.zeros(1, 4, 8, 8), torch.full((1, 4, 8, 8), -3.0))]:
        out = mimic_threshold(g_in, m_in, settings)
        assert torch.isfinite(out).all()
    if not settings.separate_feature_channels:
        return  # one image's channels share their statistics there
    # Channels that are not flat are untouched by their flat neighbours.
    clean_g, clean_m = guided_and_mimic(5)
    clean = mimic_threshold(clean_g, clean_m, settings)
    out = mimic_threshold(guided, mimic, settings)
    assert torch.equal(out[0, 0], clean[0, 0]) and torch.equal(out[1, 0], clean[1, 0])


@pytest.mark.parametrize("variability", ["AD", "STD"])
@pytest.mark.parametrize("startpoint", ["MEAN", "ZERO"])
def test_latent_flat_channel_equal_in_both_branches_is_kept(startpoint, variability):
    """D_c = D_u on a constant channel: guided and mimic coincide, so the channel stays as it is."""
    value = torch.tensor([0.1, -0.7, 1.3, 4.62])
    guided = value.view(1, 4, 1, 1).expand(1, 4, 9, 7).contiguous()
    settings = DynamicThreshold(startpoint=startpoint, variability=variability)
    torch.testing.assert_close(mimic_threshold(guided, guided.clone(), settings), guided, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("a", "b", "size"), [(0.1, 0.3, 8), (0.1, 0.3, 7), (1.3, 2.1, 8), (0.7, 0.1, 8)])
@pytest.mark.parametrize("settings", ALL_SETTINGS[::3])
def test_latent_flat_channel_stays_as_it_is(a, b, size, settings):
    """A flat guided channel has no spread (only float rounding residue after centring): it stays as it is."""
    guided = torch.full((1, 1, size, size), a)
    mimic = torch.full((1, 1, size, size), b)
    out = mimic_threshold(guided, mimic, settings)
    torch.testing.assert_close(out, guided, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("settings", ALL_SETTINGS[::3])
def test_latent_batch_rows_and_channels_are_independent(settings):
    guided, mimic = guided_and_mimic(6, shape=(3, 4, 8, 8))
    whole = mimic_threshold(guided, mimic, settings)
    changed_g, changed_m = guided.clone(), mimic.clone()
    changed_g[1] = changed_g[1] * 5 + 3
    changed_m[1] = -changed_m[1]
    changed = mimic_threshold(changed_g, changed_m, settings)
    assert torch.equal(changed[0], whole[0]) and torch.equal(changed[2], whole[2])
    assert not torch.allclose(changed[1], whole[1])
    for row in range(3):  # alone == in a batch
        alone = mimic_threshold(guided[row:row + 1], mimic[row:row + 1], settings)
        torch.testing.assert_close(alone[0], whole[row], rtol=0, atol=0)
    one_channel = guided.clone()
    one_channel[:, 2] *= 3
    other = mimic_threshold(one_channel, mimic, settings)
    # Per channel, the other channels are untouched; per image (separate_feature_channels off) they rescale too.
    assert torch.equal(other[:, [0, 1, 3]], whole[:, [0, 1, 3]]) is settings.separate_feature_channels


@pytest.mark.parametrize("settings", ALL_SETTINGS)
def test_latent_half_precision(settings):
    guided, mimic = guided_and_mimic(7)
    out = mimic_threshold(guided.half(), mimic.half(), settings)
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all()
    full = mimic_threshold(guided.half().float(), mimic.half().float(), settings)
    torch.testing.assert_close(out.float(), full, rtol=1e-2, atol=2e-2)


def test_latent_changes_the_guided_result():
    """Not the identity: a guided spread larger than the mimic's is reduced."""
    guided, mimic = guided_and_mimic(8)
    out = mimic_threshold(guided, mimic, DynamicThreshold())
    assert (out - out.mean(dim=(2, 3), keepdim=True)).abs().amax() < (guided - guided.mean()).abs().amax()
    assert not torch.allclose(out, guided)


# --- imagen ----------------------------------------------------------------------------------------------------------

def imagen_input(seed: int, shape=(3, 4, 6, 6)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g)
    return x0 * torch.tensor([0.3, 1.5, 4.0]).view(3, *([1] * (len(shape) - 1)))[: shape[0]]


@pytest.mark.parametrize("p", [0.995, 0.9, 0.5, 1.0])
@pytest.mark.parametrize("shape", [(3, 4, 6, 6), (3, 2, 3, 4, 5)])
def test_imagen_matches_reference(p, shape):
    x0 = imagen_input(int(p * 1000), shape)
    out = imagen_threshold(x0, p)
    assert out.shape == x0.shape and out.dtype == x0.dtype
    torch.testing.assert_close(out.double(), reference_imagen(x0, p), rtol=1e-6, atol=1e-6)
    assert out.abs().max() <= 1.0


def test_imagen_rescales_only_rows_beyond_one():
    x0 = imagen_input(11)
    out = imagen_threshold(x0, 0.995)
    assert torch.equal(out[0], x0[0])  # spread 0.3: its 99.5th percentile of |x0| is < 1
    assert not torch.equal(out[2], x0[2])
    assert out[2].abs().max() == 1.0  # clamped at ±s then divided by s


def test_imagen_rows_are_independent():
    x0 = imagen_input(12)
    whole = imagen_threshold(x0, 0.995)
    changed = x0.clone()
    changed[1] *= 10
    out = imagen_threshold(changed, 0.995)
    assert torch.equal(out[0], whole[0]) and torch.equal(out[2], whole[2])
    assert not torch.equal(out[1], whole[1])


def test_imagen_is_the_identity_within_one():
    g = torch.Generator().manual_seed(13)
    x0 = torch.rand(2, 4, 8, 8, generator=g) * 2 - 1
    x0[0, 0, 0, 0] = 1.0
    x0[1, 0, 0, 0] = -1.0
    assert torch.equal(imagen_threshold(x0, 0.995), x0)
    assert torch.equal(imagen_threshold(torch.zeros(2, 3, 4, 4), 0.995), torch.zeros(2, 3, 4, 4))


def test_imagen_half_precision():
    x0 = imagen_input(14).half()
    out = imagen_threshold(x0, 0.995)
    assert out.dtype == torch.float16 and torch.isfinite(out).all() and out.abs().max() <= 1.0
    torch.testing.assert_close(out.float(), reference_imagen(x0.float(), 0.995).float(), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("startpoint", ["MEAN", "ZERO"])
def test_std_on_one_element_channels_is_left_alone(startpoint):
    # A channel of one element has no spread (its sample std is undefined): it stays as it is, never NaN.
    g = torch.Generator().manual_seed(31)
    guided, mimic = torch.randn(2, 4, 1, 1, generator=g) * 5, torch.randn(2, 4, 1, 1, generator=g)
    out = mimic_threshold(guided, mimic, DynamicThreshold(startpoint=startpoint, variability="STD"))
    assert torch.equal(out, guided)


# --- small percentiles, the per-mode default (issue 7 items 6 and 11) -------------------------------------------------

@pytest.mark.parametrize("percentile", [0.0, 1e-4, 0.01, 0.3])
@pytest.mark.parametrize("separate", [True, False])
def test_latent_small_percentiles_clamp_at_the_mimic_spread(percentile, separate):
    """MEAN + AD at p ≈ 0 on a large latent: no channel is taken for flat and left alone (flatness is judged by the
    real spread, not the percentile); each is clamped at the mimic's largest deviation."""
    guided, mimic = guided_and_mimic(20, shape=(2, 4, 96, 96))
    settings = DynamicThreshold(threshold_percentile=percentile, separate_feature_channels=separate)
    out = mimic_threshold(guided, mimic, settings)
    dims = (2, 3) if separate else (1, 2, 3)
    got = (out - guided.mean(dim=(2, 3), keepdim=True)).abs().amax(dim=dims)
    want = (mimic - mimic.mean(dim=(2, 3), keepdim=True)).abs().amax(dim=dims)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not any(torch.equal(out[b, c], guided[b, c]) for b in range(2) for c in range(4))


@pytest.mark.parametrize("percentile", [0.0, 0.01])
def test_latent_small_percentiles_match_the_reference(percentile):
    guided, mimic = guided_and_mimic(21, shape=(1, 4, 24, 24))
    got = mimic_threshold(guided, mimic, DynamicThreshold(threshold_percentile=percentile))
    torch.testing.assert_close(got.double(), reference_mimic(guided, mimic, "MEAN", "AD", percentile, 1.0),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("percentile", [0.5, 0.8, 0.995, 1.0])
@pytest.mark.parametrize("separate", [True, False])
def test_zero_start_maps_a_scaled_copy_onto_the_mimic_at_every_allowed_percentile(percentile, separate):
    """ZERO + AD compares like with like (the same p-quantile on both sides): a guided result that is the mimic
    scaled by 3 comes back as the mimic, where mcmonkey's max/p-quantile ratio would scale by up to ~5× more."""
    _, mimic = guided_and_mimic(22, shape=(2, 4, 32, 32))
    settings = DynamicThreshold(startpoint="ZERO", threshold_percentile=percentile, separate_feature_channels=separate)
    torch.testing.assert_close(mimic_threshold(mimic * 3.0, mimic, settings), mimic, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("settings", "problem"), [
    (("latent", 0.49, "ZERO", "AD"), "input 'threshold_percentile' (0.49) is below 0.5 with startpoint ZERO"),
    (("latent", 0.0, "ZERO", "AD"), "use 0.5–1.0, or startpoint MEAN"),
    (("latent", 1.5, "MEAN", "AD"), "input 'threshold_percentile' (1.5) is outside 0.0–1.0"),
    (("imagen", -0.5, "MEAN", "AD"), "input 'threshold_percentile' (-0.5) is outside 0.0–1.0 (or -1"),
    (("latent", 0.0, "MEAN", "AD"), None),
    (("latent", 0.0, "ZERO", "STD"), None),
    (("imagen", 0.0, "ZERO", "AD"), None),
    (("latent", 0.5, "ZERO", "AD"), None),
    (("latent", AUTO_PERCENTILE, "ZERO", "AD"), None),
])
def test_settings_problem(settings, problem):
    got = settings_problem(*settings)
    assert got is None if problem is None else problem in got, got


def test_auto_percentile_is_each_modes_own():
    """New nodes get AUTO: mcmonkey's 1.0 for latent, the paper's 0.995 for imagen; a set value is kept as it is."""
    assert DynamicThreshold().percentile == 1.0
    assert DynamicThreshold(mode="imagen").percentile == 0.995
    assert DynamicThreshold(mode="imagen", threshold_percentile=1.0).percentile == 1.0
    assert DynamicThreshold(threshold_percentile=0.0).percentile == 0.0
