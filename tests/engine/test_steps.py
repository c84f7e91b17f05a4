"""Step attribution: every model evaluation of a sampler's step i gets step i.

The sigma sequences below are those ComfyUI's k-diffusion samplers (comfy/k_diffusion/sampling.py) evaluate the
model at, computed the same way in float32 and handed over as `float(tensor)` like ComfyUI's guider sees them.
Each evaluation is labelled with the loop index of the sampler that made it: that label is the expected step.
"""

from functools import partial

import pytest
import torch

from guiders.steps import (
    StepTracker,
    ancestral_evaluations,
    ancestral_flow_evaluations,
    heunpp2_evaluations,
    interval_step,
    unless_final_evaluations,
)

Evaluations = list[tuple[int, float]]  # (sampler loop index, sigma the model is evaluated at)


# --- schedules (float32, as ComfyUI builds them) -------------------------------------------------------------------

def karras(n: int, sigma_min: float = 0.03, sigma_max: float = 10.0, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv + ramp * (min_inv - max_inv)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def flow(n: int, shift: float = 3.0) -> torch.Tensor:
    """A shifted rectified-flow schedule 1 → 0 (the first sigma is exactly 1)."""
    t = torch.linspace(1, 0, n + 1)[:-1]
    sigmas = shift * t / (1 + (shift - 1) * t)
    return torch.cat([sigmas, sigmas.new_zeros([1])])


SCHEDULES = {"karras10": karras(10), "karras30": karras(30, 0.0292, 14.6), "flow10": flow(10, 3.0),
             "flow25_linear": flow(25, 1.0)}
EPS_SCHEDULES = ("karras10", "karras30")
FLOW_SHIFTS = {"flow10": 3.0, "flow25_linear": 1.0}  # None: an EPS model
FLOW_SCHEDULES = tuple(FLOW_SHIFTS)


# --- samplers ------------------------------------------------------------------------------------------------------

def _ancestral_step(sigma_from, sigma_to, eta=1.0):
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - sigma_up**2) ** 0.5


def euler(sigmas: torch.Tensor, shift: float | None = None) -> Evaluations:
    return [(i, float(sigmas[i])) for i in range(len(sigmas) - 1)]


def heun(sigmas: torch.Tensor, shift: float | None = None) -> Evaluations:
    out = []
    for i in range(len(sigmas) - 1):
        out.append((i, float(sigmas[i])))
        if sigmas[i + 1] != 0:
            out.append((i, float(sigmas[i + 1])))
    return out


def heunpp2(sigmas: torch.Tensor, shift: float | None = None) -> Evaluations:
    out, s_end = [], sigmas[-1]
    for i in range(len(sigmas) - 1):
        out.append((i, float(sigmas[i])))
        if sigmas[i + 1] == s_end:
            continue
        out.append((i, float(sigmas[i + 1])))
        if sigmas[i + 2] != s_end:
            out.append((i, float(sigmas[i + 2])))
    return out


def dpm_2(sigmas: torch.Tensor, shift: float | None = None) -> Evaluations:
    out = []
    for i in range(len(sigmas) - 1):
        out.append((i, float(sigmas[i])))
        if sigmas[i + 1] != 0:
            out.append((i, float(sigmas[i].log().lerp(sigmas[i + 1].log(), 0.5).exp())))
    return out


def dpm_2_ancestral(sigmas: torch.Tensor, shift: float | None = None) -> Evaluations:
    out = []
    for i in range(len(sigmas) - 1):
        out.append((i, float(sigmas[i])))
        if shift is not None:  # sample_dpm_2_ancestral_RF
            sigma_down = sigmas[i + 1] * (1 + (sigmas[i + 1] / sigmas[i] - 1) * 1.0)
        else:
            sigma_down = _ancestral_step(sigmas[i], sigmas[i + 1])
        if sigma_down != 0:
            out.append((i, float(sigmas[i].log().lerp(sigma_down.log(), 0.5).exp())))
    return out


def dpmpp_2s_ancestral(sigmas: torch.Tensor, shift: float | None = None, eta: float = 1.0) -> Evaluations:
    out = []
    for i in range(len(sigmas) - 1):
        out.append((i, float(sigmas[i])))
        if shift is not None:  # sample_dpmpp_2s_ancestral_RF
            if sigmas[i + 1] == 0:
                continue
            sigma_down = sigmas[i + 1] * (1 + (sigmas[i + 1] / sigmas[i] - 1) * eta)
            if sigmas[i] == 1.0:
                sigma_s = torch.tensor(0.9999)
            else:
                lam_i, lam_down = ((1 - sigmas[i]) / sigmas[i]).log(), ((1 - sigma_down) / sigma_down).log()
                sigma_s = ((lam_i + 0.5 * (lam_down - lam_i)).exp() + 1) ** -1
            out.append((i, float(sigma_s * torch.ones(1))))
        else:
            sigma_down = _ancestral_step(sigmas[i], sigmas[i + 1], eta)
            if sigma_down == 0:
                continue
            t, t_next = sigmas[i].log().neg(), sigma_down.log().neg()
            out.append((i, float((t + 0.5 * (t_next - t)).neg().exp())))
    return out


def dpmpp_sde(sigmas: torch.Tensor, shift: float | None = None) -> Evaluations:
    if shift is not None:
        def lambda_fn(s):
            return s.logit().neg()

        def sigma_fn(lam):
            return lam.neg().sigmoid()

        if sigmas[0] >= 1:  # offset_first_sigma_for_snr: percent_to_sigma(1e-4) of a shifted flow model
            sigmas = sigmas.clone()
            sigmas[0] = shift * (1 - 1e-4) / (1 + (shift - 1) * (1 - 1e-4))
    else:
        def lambda_fn(s):
            return s.log().neg()

        def sigma_fn(lam):
            return lam.neg().exp()
    out = []
    for i in range(len(sigmas) - 1):
        out.append((i, float(sigmas[i])))
        if sigmas[i + 1] != 0:
            lambda_s, lambda_t = lambda_fn(sigmas[i]), lambda_fn(sigmas[i + 1])
            out.append((i, float(sigma_fn(lambda_s + 0.5 * (lambda_t - lambda_s)))))
    return out


# sampler name, flow model → the rule nodes/stages.py maps it to
RULES = {("heun", False): unless_final_evaluations, ("dpm_2", False): unless_final_evaluations,
         ("dpm_2", True): unless_final_evaluations, ("dpmpp_sde", False): unless_final_evaluations,
         ("dpmpp_sde", True): unless_final_evaluations, ("heunpp2", False): heunpp2_evaluations,
         ("dpm_2_ancestral", False): ancestral_evaluations, ("dpm_2_ancestral", True): ancestral_flow_evaluations,
         ("dpmpp_2s_ancestral", False): ancestral_evaluations, ("dpmpp_2s_ancestral", True): unless_final_evaluations}


def attribute(sigmas: torch.Tensor, evaluations: Evaluations, rule) -> list[tuple[int, int, float]]:
    """(expected step, attributed step, sigma) for every evaluation, in order, through one fresh tracker that
    counts evaluations with a `rule` of guiders/steps.py, or goes by sigma intervals where `rule` is None (no
    callbacks: this is the count alone)."""
    tracker = StepTracker(sigmas.tolist(), rule and rule(sigmas))
    return [(expected, tracker.step(sigma), sigma) for expected, sigma in evaluations]


def assert_attributed(sigmas, evaluations, rule):
    wrong = [row for row in attribute(sigmas, evaluations, rule) if row[0] != row[1]]
    assert not wrong, f"(expected, got, sigma): {wrong}"


# --- single-evaluation samplers by interval, two-stage samplers by counting ------------------------------------------

PLAIN_CASES = (
    [(euler, name) for name in SCHEDULES]
    + [(dpm_2, name) for name in SCHEDULES]
    + [(dpmpp_sde, name) for name in SCHEDULES]
    + [(dpmpp_2s_ancestral, name) for name in FLOW_SCHEDULES]  # the RF variant ComfyUI uses for flow models
)


@pytest.mark.parametrize(("sampler", "schedule"), PLAIN_CASES,
                         ids=[f"{s.__name__}-{n}" for s, n in PLAIN_CASES])
def test_midpoint_samplers(sampler, schedule):
    sigmas = SCHEDULES[schedule]
    evaluations = sampler(sigmas, shift=FLOW_SHIFTS.get(schedule))
    steps = len(sigmas) - 1
    if sampler is not euler:  # two evaluations per step except the last (σ_next = 0: Euler)
        assert len(evaluations) == 2 * steps - 1
    rule = None if sampler is euler else RULES[sampler.__name__, schedule in FLOW_SHIFTS]
    assert_attributed(sigmas, evaluations, rule)
    if sampler is not euler:  # these midpoints lie strictly inside their step: intervals get them right as well
        assert_attributed(sigmas, evaluations, None)


def test_midpoints_are_strictly_inside_their_step():
    """The simulated midpoints really lie between s_{i+1} and s_i (so the test above tests midpoints)."""
    for name, sigmas in SCHEDULES.items():
        for sampler in (dpm_2, dpmpp_sde):
            for step, sigma in sampler(sigmas, shift=FLOW_SHIFTS.get(name)):
                assert float(sigmas[step + 1]) < sigma <= float(sigmas[step])


# dpm_2_ancestral (both variants) and the EPS dpmpp_2s_ancestral at eta 1 put their second evaluation at
# exp(mean(log σ_i, log σ_down)) with σ_down = σ_{i+1}²/σ_i, which is exactly σ_{i+1}: the boundary of the next step.
BOUNDARY_CASES = ([(dpmpp_2s_ancestral, name) for name in EPS_SCHEDULES]
                  + [(dpm_2_ancestral, name) for name in SCHEDULES])


@pytest.mark.parametrize(("sampler", "schedule"), BOUNDARY_CASES,
                         ids=[f"{s.__name__}-{n}" for s, n in BOUNDARY_CASES])
def test_ancestral_second_evaluation_belongs_to_its_step(sampler, schedule):
    sigmas = SCHEDULES[schedule]
    evaluations = sampler(sigmas, shift=FLOW_SHIFTS.get(schedule))
    assert_attributed(sigmas, evaluations, RULES[sampler.__name__, schedule in FLOW_SHIFTS])
    # Sigma intervals alone would hand the second evaluation to the next step: that is why stages are counted.
    assert any(expected != got for expected, got, _ in attribute(sigmas, evaluations, None))


def test_dpmpp_2s_ancestral_second_evaluation_sits_on_the_next_sigma():
    """Documents why the case above is hard: the 'midpoint' is σ_{i+1} to float32 precision."""
    sigmas = SCHEDULES["karras10"]
    evaluations = dpmpp_2s_ancestral(sigmas)
    seconds = [evaluations[k] for k in range(1, len(evaluations)) if evaluations[k - 1][0] == evaluations[k][0]]
    assert len(seconds) == len(sigmas) - 2
    for step, sigma in seconds:
        assert sigma == pytest.approx(float(sigmas[step + 1]), rel=1e-6)


def test_dpmpp_2s_ancestral_below_eta_one_is_a_true_midpoint():
    sigmas = SCHEDULES["karras10"]
    assert_attributed(sigmas, dpmpp_2s_ancestral(sigmas, eta=0.5), partial(ancestral_evaluations, eta=0.5))
    assert_attributed(sigmas, dpmpp_2s_ancestral(sigmas, eta=0.5), None)


# --- corrector samplers: every evaluation of a step gets that step --------------------------------------------------

CORRECTOR_CASES = [(heun, name) for name in SCHEDULES] + [(heunpp2, name) for name in SCHEDULES]


@pytest.mark.parametrize(("sampler", "schedule"), CORRECTOR_CASES,
                         ids=[f"{s.__name__}-{n}" for s, n in CORRECTOR_CASES])
def test_corrector_samplers(sampler, schedule):
    sigmas = SCHEDULES[schedule]
    evaluations = sampler(sigmas)
    steps = len(sigmas) - 1
    assert len(evaluations) == (2 * steps - 1 if sampler is heun else 3 * steps - 3)
    assert_attributed(sigmas, evaluations, RULES[sampler.__name__, False])


def test_corrector_evaluations_would_be_misattributed_by_intervals_alone():
    """The Heun corrector sits on the next step's sigma: by intervals alone it lands in the next step."""
    sigmas = SCHEDULES["karras10"]
    rows = attribute(sigmas, heun(sigmas), None)
    assert sum(expected != got for expected, got, _ in rows) == len(sigmas) - 2


def test_heun_on_a_schedule_not_ending_at_zero():
    """A split schedule (e.g. the high part of SplitSigmas) has a corrector even in the last step."""
    sigmas = SCHEDULES["karras10"][:6]
    evaluations = heun(sigmas)
    assert len(evaluations) == 2 * (len(sigmas) - 1)
    assert_attributed(sigmas, evaluations, unless_final_evaluations)


# --- interval_step directly ------------------------------------------------------------------------------------------

SCHEDULE = [14.6, 8.0, 5.42, 2.9, 1.0, 0.28, 0.0]


@pytest.mark.parametrize(("sigma", "step"), [
    (20.0, 0), (14.6, 0), (14.59, 0), (8.0001, 0), (8.0, 1), (6.0, 1), (5.42, 2), (5.4199, 2), (2.9, 3),
    (1.0, 4), (0.5, 4), (0.28, 5), (0.1, 5), (1e-6, 5), (0.0, 5),
])
def test_interval_step(sigma, step):
    assert interval_step(sigma, SCHEDULE) == step


def test_interval_step_with_float32_rounded_sigmas():
    """σ = float(float32(s_i)) may round above s_i; it still belongs to step i, never to step i − 1."""
    schedule = [14.614641996282326 * 0.57**k for k in range(12)] + [0.0]
    rounded = [float(torch.tensor(s, dtype=torch.float32)) for s in schedule]
    assert any(r > s for r, s in zip(rounded, schedule, strict=True))  # the case under test occurs
    for i in range(len(schedule) - 1):
        assert interval_step(rounded[i], schedule) == i
        geometric_mid = float(torch.tensor((schedule[i] * schedule[i + 1]) ** 0.5, dtype=torch.float32))
        if schedule[i + 1] > 0:
            assert interval_step(geometric_mid, schedule) == i
