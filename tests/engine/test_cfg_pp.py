"""CFG++ steps (guiders/cfg_pp.py): the defining property, plain sampling when D_u = D_λ, ComfyUI's EPS formulas
written out independently for α = 1, and exactness on the flow path x = (1 − σ)·x0 + σ·n."""

import math

import pytest
import torch

from guiders.cfg_pp import Level, ancestral_levels, ddim_step, dpmpp_2m_step, dpmpp_2s_midpoint, dpmpp_2s_stage

# (previous σ, σ_s, σ_t) triples: large EPS sigmas and flow sigmas in (0, 1).
EPS_SIGMAS = [(20.0, 14.6, 9.7), (3.0, 2.0, 1.1), (0.5, 0.3, 0.03)]
FLOW_SIGMAS = [(0.99, 0.95, 0.8), (0.7, 0.5, 0.3), (0.2, 0.1, 0.02)]


def t64(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64)


def eps(sigma: float) -> Level:
    return Level(t64(sigma), t64(1.0))


def flow(sigma: float) -> Level:
    return Level(t64(sigma), t64(1.0 - sigma))


def flow_at(half_log_snr: torch.Tensor) -> Level:
    """The flow level with half-log-SNR λ: σ = 1/(1 + e^λ) (ComfyUI's half_log_snr_to_sigma for CONST)."""
    sigma = torch.sigmoid(-half_log_snr)
    return Level(sigma, 1 - sigma)


@pytest.fixture
def tensors() -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(2, 4, 8, 8, generator=generator, dtype=torch.float64) for _ in range(5))


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


# --- the defining property, and plain sampling without guidance -----------------------------------------------------

@pytest.mark.parametrize("path", [eps, flow])
@pytest.mark.parametrize("sigmas", EPS_SIGMAS[:1] + FLOW_SIGMAS)
def test_the_step_lands_on_d_lambda_with_the_unconds_noise(tensors, path, sigmas):
    """x_t = α_t·D_λ + σ_t·ε_u with ε_u = (x_s − α_s·D_u)/σ_s: denoise with D_λ, renoise with the uncond."""
    x, denoised, uncond, _, _ = tensors
    _, s, t = (path(sigma) for sigma in sigmas)
    x_t = ddim_step(x, denoised, uncond, s, t)
    close((x_t - t.alpha * denoised) / t.sigma, (x - s.alpha * uncond) / s.sigma)
    assert not torch.allclose(x_t, ddim_step(x, denoised, denoised, s, t))  # D_u really matters


@pytest.mark.parametrize("path", [eps, flow])
@pytest.mark.parametrize("sigmas", EPS_SIGMAS[:1] + FLOW_SIGMAS)
def test_equal_predictions_give_the_plain_euler_step(tensors, path, sigmas):
    """With D_u = D_λ = D the step is ComfyUI's sample_euler step x + (σ_t − σ_s)·(x − D)/σ_s, on EPS and on flow."""
    x, denoised, *_ = tensors
    _, s, t = (path(sigma) for sigma in sigmas)
    expected = x + (t.sigma - s.sigma) * (x - denoised) / s.sigma
    close(ddim_step(x, denoised, denoised, s, t), expected)
    close(dpmpp_2m_step(x, denoised, denoised, s, t, None), expected)


# --- α = 1: ComfyUI's EPS forms (comfy/k_diffusion/sampling.py 0.3.75), written out ----------------------------------

def comfy_ancestral_step(sigma_from: float, sigma_to: float, eta: float) -> tuple[float, float]:
    """get_ancestral_step."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0, 3.0])
@pytest.mark.parametrize("sigmas", EPS_SIGMAS)
def test_eps_euler_ancestral_is_comfyuis(tensors, sigmas, eta):
    x, denoised, uncond, noise, _ = tensors
    _, sigma_s, sigma_t = sigmas
    sigma_down, sigma_up = comfy_ancestral_step(sigma_s, sigma_t, eta)
    expected = denoised + sigma_down * (x - uncond) / sigma_s + noise * sigma_up  # sample_euler_ancestral_cfg_pp

    s = eps(sigma_s)
    down, up = ancestral_levels(s, eps(sigma_t), eta)
    close(ddim_step(x, denoised, uncond, s, down) + noise * up, expected)


@pytest.mark.parametrize("sigmas", EPS_SIGMAS)
def test_eps_dpmpp_2m_is_comfyuis(tensors, sigmas):
    x, denoised, uncond, _, previous_uncond = tensors
    sigma_r, sigma_s, sigma_t = sigmas
    t_s, t_t, t_r = -math.log(sigma_s), -math.log(sigma_t), -math.log(sigma_r)
    h = t_t - t_s
    r = (t_s - t_r) / h
    first = -math.exp(-h) * uncond  # sample_dpmpp_2m_cfg_pp: first step, then multistep
    second = -math.exp(-h) * uncond - math.expm1(-h) * (1 / (2 * r)) * (denoised - previous_uncond)

    s, t = eps(sigma_s), eps(sigma_t)
    close(dpmpp_2m_step(x, denoised, uncond, s, t, None), denoised + first + math.exp(-h) * x)
    close(dpmpp_2m_step(x, denoised, uncond, s, t, (previous_uncond, eps(sigma_r))),
          denoised + second + math.exp(-h) * x)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("sigmas", EPS_SIGMAS)
def test_eps_dpmpp_2s_ancestral_is_comfyuis(tensors, sigmas, eta):
    x, denoised, uncond, _, denoised_mid = tensors
    _, sigma_s, sigma_t = sigmas
    sigma_down, _ = comfy_ancestral_step(sigma_s, sigma_t, eta)
    t, t_next = -math.log(sigma_s), -math.log(sigma_down)  # sample_dpmpp_2s_ancestral_cfg_pp
    h = t_next - t
    sigma_mid = math.exp(-(t + h / 2))
    x_2 = (sigma_mid / sigma_s) * (x + (denoised - uncond)) - math.expm1(-h / 2) * denoised
    x_down = (sigma_down / sigma_s) * (x + (denoised - uncond)) - math.expm1(-h) * denoised_mid

    s = eps(sigma_s)
    down, _ = ancestral_levels(s, eps(sigma_t), eta)
    midpoint = dpmpp_2s_midpoint(s, down)
    mid = Level(midpoint.neg().exp(), t64(1.0))
    close(mid.sigma, t64(sigma_mid))
    close(dpmpp_2s_stage(x, denoised, uncond, s, mid, denoised), x_2)
    close(dpmpp_2s_stage(x, denoised, uncond, s, down, denoised_mid), x_down)


# --- flow: a perfect denoiser keeps x exactly on x = (1 − σ)·x0 + σ·n ------------------------------------------------

@pytest.mark.parametrize("sigmas", FLOW_SIGMAS)
def test_flow_steps_stay_on_the_path(tensors, sigmas):
    x0, noise, *_ = tensors
    sigma_r, sigma_s, sigma_t = sigmas
    r, s, t = flow(sigma_r), flow(sigma_s), flow(sigma_t)
    x_s = s.alpha * x0 + s.sigma * noise
    on_path = t.alpha * x0 + t.sigma * noise

    close(ddim_step(x_s, x0, x0, s, t), on_path)
    close(dpmpp_2m_step(x_s, x0, x0, s, t, (x0, r)), on_path)
    mid = flow_at(dpmpp_2s_midpoint(s, t))
    close(dpmpp_2s_stage(x_s, x0, x0, s, mid, x0), mid.alpha * x0 + mid.sigma * noise)
    close(dpmpp_2s_stage(x_s, x0, x0, s, t, x0), on_path)


@pytest.mark.parametrize("eta", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("sigmas", FLOW_SIGMAS + [(1.0, 1.0, 0.8)])
def test_flow_ancestral_steps_keep_signal_and_noise_level(tensors, sigmas, eta):
    """The deterministic part lands at α_t·x0 + σ_down·n, and the fresh noise brings the std back to σ_t."""
    x0, noise, *_ = tensors
    _, s, t = (flow(sigma) for sigma in sigmas)
    x_s = s.alpha * x0 + s.sigma * noise
    down, sigma_up = ancestral_levels(s, t, eta)
    assert 0 < sigma_up <= t.sigma
    close(down.sigma**2 + sigma_up**2, t.sigma**2)
    close(down.alpha, t.alpha)
    close(ddim_step(x_s, x0, x0, s, down), t.alpha * x0 + down.sigma * noise)
    if down.sigma > 0 and s.alpha > 0:  # 2S needs a finite λ_s: its sampler moves σ = 1 to 1 − 1e-4 first
        mid = flow_at(dpmpp_2s_midpoint(s, down))
        close(dpmpp_2s_stage(x_s, x0, x0, s, mid, x0), mid.alpha * x0 + mid.sigma * noise)
        close(dpmpp_2s_stage(x_s, x0, x0, s, down, x0), t.alpha * x0 + down.sigma * noise)


def test_from_pure_noise_on_flow(tensors):
    """At σ_s = 1 (α_s = 0) the step is finite: DDIM gives α_t·D_λ + σ_t·x, ancestral at η = 1 all fresh noise."""
    x, denoised, uncond, *_ = tensors
    s, t = flow(1.0), flow(0.8)
    close(ddim_step(x, denoised, uncond, s, t), t.alpha * denoised + t.sigma * x)
    down, sigma_up = ancestral_levels(s, t, 1.0)
    close(down.sigma, t64(0.0))
    close(sigma_up, t.sigma)
