"""CFG++ steps (guiders/cfg_pp.py): the defining property, plain sampling when D_u = D_λ, ComfyUI's EPS formulas
written out independently for α = 1, and exactness on the flow path x = (1 − σ)·x0 + σ·n."""

import math

import pytest
import torch

from guiders.cfg_pp import (
    Evaluation,
    Level,
    ancestral_levels,
    ddim_step,
    dpmpp_2m_step,
    dpmpp_2s_midpoint,
    dpmpp_2s_stage,
    dpmpp_sde_noise_std,
    dpmpp_sde_step,
    gradient_estimation_step,
    res_multistep_step,
)

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


# --- the samplers added later: every step is its plain solver's step from x̃_s = x_s + α_s·(D_λ − D_u) -----------------

PATH_SIGMAS = [(eps, sigmas) for sigmas in EPS_SIGMAS] + [(flow, sigmas) for sigmas in FLOW_SIGMAS]


def comfy_res_multistep(x, denoised, old_denoised, sigma_prev, sigma_s, sigma_down, old_sigma_down, uncond=None):
    """res_multistep's second-order step (α = 1), plain, or with `uncond` its cfg_pp form, as ComfyUI writes them."""
    t, t_old, t_next, t_prev = (-math.log(v) for v in (sigma_s, old_sigma_down, sigma_down, sigma_prev))
    h = t_next - t
    c2 = (t_prev - t_old) / h
    phi1 = math.expm1(-h) / -h
    phi2 = (phi1 - 1) / -h
    b1, b2 = phi1 - phi2 / c2, phi2 / c2
    if uncond is None:
        return math.exp(-h) * x + h * (b1 * denoised + b2 * old_denoised)
    return math.exp(-h) * (x + (denoised - uncond)) + h * (b1 * uncond + b2 * old_denoised)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("sigmas", EPS_SIGMAS)
def test_eps_res_multistep_is_comfyuis_plain_step_at_the_cfg_pp_point(tensors, sigmas, eta):
    x, denoised, uncond, _, previous_uncond = tensors
    sigma_r, sigma_s, sigma_t = sigmas
    r, s = eps(sigma_r), eps(sigma_s)
    previous_down, _ = ancestral_levels(r, s, eta)
    down, _ = ancestral_levels(s, eps(sigma_t), eta)
    previous = (previous_uncond, previous_down.half_log_snr - r.half_log_snr)
    x_cfg_pp = x + (denoised - uncond)
    expected = comfy_res_multistep(x_cfg_pp, denoised, previous_uncond, sigma_r, sigma_s, float(down.sigma),
                                   float(previous_down.sigma))
    close(res_multistep_step(x, denoised, uncond, s, down, previous), expected)
    close(res_multistep_step(x, denoised, denoised, s, down, previous),
          comfy_res_multistep(x, denoised, previous_uncond, sigma_r, sigma_s, float(down.sigma),
                              float(previous_down.sigma)))


@pytest.mark.parametrize("sigmas", EPS_SIGMAS)
def test_comfyuis_res_multistep_cfg_pp_integrates_the_uncond(tensors, sigmas):
    """A multistep step whose history agrees with the x0 it integrates is its first-order step: Steer's RES (like
    ComfyUI's and Steer's 2M CFG++) reduces to CFG++ DDIM, ComfyUI's res_multistep_cfg_pp misses by h·b1·(D_λ − D_u)."""
    x, denoised, uncond, *_ = tensors
    sigma_r, sigma_s, sigma_t = sigmas
    r, s, t = eps(sigma_r), eps(sigma_s), eps(sigma_t)
    previous = (denoised, s.half_log_snr - r.half_log_snr)
    first_order = ddim_step(x, denoised, uncond, s, t)
    close(res_multistep_step(x, denoised, uncond, s, t, previous), first_order)
    close(dpmpp_2m_step(x, denoised, uncond, s, t, (denoised, r)), first_order)
    comfy = comfy_res_multistep(x, denoised, denoised, sigma_r, sigma_s, sigma_t, sigma_s, uncond=uncond)
    assert (comfy - first_order).abs().max() > 0.1 * (denoised - uncond).abs().max()


@pytest.mark.parametrize("gamma", [1.0, 2.0, 2.5])
@pytest.mark.parametrize("sigmas", EPS_SIGMAS)
def test_eps_gradient_estimation_is_comfyuis(tensors, sigmas, gamma):
    x, denoised, uncond, _, previous_d = tensors
    _, sigma_s, sigma_t = sigmas
    d = (x - uncond) / sigma_s  # sample_gradient_estimation, cfg_pp=True
    expected = denoised + d * sigma_t + (gamma - 1) * (d - previous_d) * (sigma_t - sigma_s)
    x_t, derivative = gradient_estimation_step(x, denoised, uncond, eps(sigma_s), t64(sigma_t), previous_d, gamma)
    close(x_t, expected)
    close(derivative, d)


@pytest.mark.parametrize(("path", "sigmas"), PATH_SIGMAS)
def test_gradient_estimation_without_gamma_is_cfg_pp_ddim(tensors, path, sigmas):
    """Euler in σ from x̃_s is DDIM on both paths: at γ = 1 the step is x_t = α_t·D_λ + σ_t·ε_u."""
    x, denoised, uncond, _, previous_d = tensors
    _, s, t = (path(sigma) for sigma in sigmas)
    x_t, _ = gradient_estimation_step(x, denoised, uncond, s, t.sigma, previous_d, 1.0)
    close(x_t, ddim_step(x, denoised, uncond, s, t))


def comfy_dpmpp_sde(x, denoised, history, s: Level, t: Level, eta, solver):
    """sample_dpmpp_2m_sde (history ≤ 1) / sample_dpmpp_3m_sde (solver "3m") without noise, α-aware as ComfyUI's."""
    h = t.half_log_snr - s.half_log_snr
    h_eta = h * (eta + 1)
    x = t.sigma / s.sigma * (-h * eta).exp() * x + t.alpha * (-h_eta).expm1().neg() * denoised
    phi_2 = h_eta.neg().expm1() / h_eta + 1
    if len(history) == 2:
        (denoised_1, h_1), (denoised_2, h_2) = history
        r0, r1 = h_1 / h, h_2 / h
        d1_0, d1_1 = (denoised - denoised_1) / r0, (denoised_1 - denoised_2) / r1
        d1, d2 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1), (d1_0 - d1_1) / (r0 + r1)
        return x + (t.alpha * phi_2) * d1 - (t.alpha * (phi_2 / h_eta - 0.5)) * d2
    if history:
        (old_denoised, h_last), = history
        if solver == "midpoint":
            return x + 0.5 * t.alpha * (-h_eta).expm1().neg() * (h / h_last) * (denoised - old_denoised)
        return x + t.alpha * ((-h_eta).expm1().neg() / (-h_eta) + 1) * (h / h_last) * (denoised - old_denoised)
    return x


@pytest.mark.parametrize("history_length", [0, 1, 2])
@pytest.mark.parametrize("solver", ["midpoint", "heun"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize(("path", "sigmas"), PATH_SIGMAS)
def test_dpmpp_sde_is_comfyuis_plain_step_at_the_cfg_pp_point(tensors, path, sigmas, eta, solver, history_length):
    x, denoised, uncond, older, previous_uncond = tensors
    sigma_q, sigma_s, sigma_t = sigmas
    q, s, t = path(sigma_q), path(sigma_s), path(sigma_t)
    history = [Evaluation(previous_uncond, s.half_log_snr - q.half_log_snr), Evaluation(older, t64(0.7))]
    history = history[:history_length]
    expected = comfy_dpmpp_sde(x + s.alpha * (denoised - uncond), denoised, history, s, t, eta, solver)
    close(dpmpp_sde_step(x, denoised, uncond, s, t, eta, history, solver), expected)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize(("path", "sigmas"), PATH_SIGMAS)
def test_dpmpp_sde_denoises_with_d_lambda_and_keeps_e_minus_eta_h_of_the_unconds_noise(tensors, path, sigmas, eta):
    """First-order part `α_t·D_λ + σ_t·e^{−ηh}·ε_u`; with the fresh noise's std the noise level is σ_t again."""
    x, denoised, uncond, *_ = tensors
    _, s, t = (path(sigma) for sigma in sigmas)
    h = t.half_log_snr - s.half_log_snr
    epsilon_u = (x - s.alpha * uncond) / s.sigma
    close(dpmpp_sde_step(x, denoised, uncond, s, t, eta, [], "midpoint"),
          t.alpha * denoised + t.sigma * (-eta * h).exp() * epsilon_u)
    close((t.sigma * (-eta * h).exp()) ** 2 + dpmpp_sde_noise_std(s, t, eta) ** 2, t.sigma**2)


@pytest.mark.parametrize(("path", "sigmas"), PATH_SIGMAS)
def test_dpmpp_2m_sde_at_eta_zero_is_dpmpp_2m(tensors, path, sigmas):
    x, denoised, uncond, _, previous_uncond = tensors
    r, s, t = (path(sigma) for sigma in sigmas)
    history = [Evaluation(previous_uncond, s.half_log_snr - r.half_log_snr)]
    close(dpmpp_sde_step(x, denoised, uncond, s, t, 0.0, history, "midpoint"),
          dpmpp_2m_step(x, denoised, uncond, s, t, (previous_uncond, r)))


@pytest.mark.parametrize("sigmas", FLOW_SIGMAS)
def test_flow_multistep_steps_stay_on_the_path(tensors, sigmas):
    """A perfect denoiser (the same x0 everywhere) keeps x on x = (1 − σ)·x0 + σ·n; the SDE steps keep the signal and
    scale the noise by e^{−ηh}."""
    x0, noise, *_ = tensors
    sigma_r, sigma_s, sigma_t = sigmas
    r, s, t = flow(sigma_r), flow(sigma_s), flow(sigma_t)
    x_s = s.alpha * x0 + s.sigma * noise
    h = t.half_log_snr - s.half_log_snr
    close(res_multistep_step(x_s, x0, x0, s, t, (x0, s.half_log_snr - r.half_log_snr)),
          t.alpha * x0 + t.sigma * noise)
    history = [Evaluation(x0, s.half_log_snr - r.half_log_snr), Evaluation(x0, t64(0.4))]
    for eta in (0.0, 1.0):
        close(dpmpp_sde_step(x_s, x0, x0, s, t, eta, history, "heun"),
              t.alpha * x0 + t.sigma * (-eta * h).exp() * noise)
