"""SteerCFGPPSampler: CFG++ samplers (math: guiders/cfg_pp.py) for any guider, KSampler included.

The guidance scale λ is simply the guider's scale (or Steer's scheduled one): the samplers take the guided x0 D_λ the
guider returns and read the unconditional x0 D_u from a post-CFG hook, as ComfyUI's own `*_cfg_pp` samplers do. Unlike
those they are all α-aware (correct on flow models), and where no uncond was computed (BasicGuider, no negative, a
CFG-skipped step) they renoise with the cond instead of ComfyUI's all-zero placeholder. Each sampler is its step
function (guiders/cfg_pp.py) inside one shared loop (`_Run`); the SDE ones come from one factory, as core's `_gpu`
variants differ only in where the Brownian tree draws the noise.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import comfy.k_diffusion.sampling as k_sampling
import comfy.samplers
import torch
from comfy.k_diffusion.sampling import (
    BrownianTreeNoiseSampler,
    default_noise_sampler,
    half_log_snr_to_sigma,
    offset_first_sigma_for_snr,
    sigma_to_half_log_snr,
)
from comfy.model_patcher import set_model_options_post_cfg_function
from comfy_api.v0_0_2 import io
from tqdm.auto import trange

from ..guiders.cfg_pp import (
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
from ..guiders.steps import single_evaluations, with_stages
from .checks import check_inputs

Denoise = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Step = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _cfg_pp_denoiser(model, x: torch.Tensor, extra_args: dict) -> Denoise:
    """`denoise(x, σ) → (D_λ, D_u)`: the sampler's model with a post-CFG hook that records the uncond x0."""
    recorded: list[torch.Tensor] = []

    def record_uncond(args: dict) -> torch.Tensor:
        # Where no uncond was computed, ComfyUI's sampling_function hands hooks zeros: the cond is the uncond there.
        recorded.append(args["cond_denoised"] if args["uncond"] is None else args["uncond_denoised"])
        return args["denoised"]

    model_options = set_model_options_post_cfg_function(dict(extra_args.get("model_options", {})), record_uncond,
                                                        disable_cfg1_optimization=True)
    extra_args = {**extra_args, "model_options": model_options}
    s_in = x.new_ones([x.shape[0]])

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        recorded.clear()
        denoised = model(x, sigma * s_in, **extra_args)
        if not recorded:
            raise RuntimeError("Steer CFG++: the guider did not run ComfyUI's post-CFG hooks, so the unconditional "
                               "prediction is unknown; use CFGGuider, BasicGuider, SteerGuider or KSampler")
        return denoised, recorded[-1]

    return denoise


class _Run:
    """What every CFG++ sampler loop shares: the recording denoiser, the model's noising path and the schedule (its
    first σ moved off 1 on flow where the sampler needs a finite half-log-SNR there, as ComfyUI's SNR samplers)."""

    def __init__(self, model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None, snr: bool = False):
        extra_args = {} if extra_args is None else extra_args
        self.seed = extra_args.get("seed")
        self.denoise = _cfg_pp_denoiser(model, x, extra_args)
        self.model_sampling = model.inner_model.model_patcher.get_model_object("model_sampling")
        self.sigmas = offset_first_sigma_for_snr(sigmas, self.model_sampling) if snr else sigmas
        # Newer ComfyUI scales the noise of flow models by model_sampling.noise_scale, in sampling as in its samplers.
        self.noise_scale = getattr(self.model_sampling, "noise_scale", 1.0)

    def level(self, i: int) -> Level:
        """The level of schedule step i (σ_i > 0): α = σ·e^{λ(σ)} (1 for EPS, 1 − σ for flow)."""
        sigma = self.sigmas[i]
        return Level(sigma, sigma * sigma_to_half_log_snr(sigma, self.model_sampling).exp())

    def loop(self, x: torch.Tensor, step: Step, callback: Callable | None, disable: bool | None) -> torch.Tensor:
        """Evaluate D_λ, D_u at each σ_i, then `x = step(i, x, D_λ, D_u)`, or `x = D_λ` where σ_{i+1} = 0."""
        for i in trange(len(self.sigmas) - 1, disable=disable):
            denoised, uncond_denoised = self.denoise(x, self.sigmas[i])
            if callback is not None:
                callback({"x": x, "i": i, "sigma": self.sigmas[i], "sigma_hat": self.sigmas[i], "denoised": denoised})
            x = denoised if self.sigmas[i + 1] == 0 else step(i, x, denoised, uncond_denoised)
        return x

    def renoise(self, x: torch.Tensor, i: int, std: torch.Tensor, eta: float, s_noise: float,
                noise_sampler: NoiseSampler) -> torch.Tensor:
        """Add the step's fresh noise `z·s_noise·std` (times the model's noise scale where ComfyUI defines one)."""
        s_noise = s_noise * self.noise_scale
        if eta > 0 and s_noise > 0:
            x = x + noise_sampler(self.sigmas[i], self.sigmas[i + 1]) * s_noise * std
        return x


def _brownian_noise(x: torch.Tensor, sigmas: torch.Tensor, seed: int | None, cpu: bool) -> NoiseSampler:
    """ComfyUI's SDE noise: a Brownian tree over the schedule, on the CPU or (the `_gpu` samplers) on x's device."""
    return BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=seed, cpu=cpu)


@torch.no_grad()
def sample_euler_ancestral_cfg_pp(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                                  callback: Callable | None = None, disable: bool | None = None, eta: float = 1.0,
                                  s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """Ancestral CFG++ DDIM (Chung et al. 2024), α-aware; ComfyUI's euler_ancestral_cfg_pp on EPS and flow."""
    run = _Run(model, x, sigmas, extra_args)
    noise_sampler = default_noise_sampler(x, seed=run.seed) if noise_sampler is None else noise_sampler

    def step(i: int, x: torch.Tensor, denoised: torch.Tensor, uncond_denoised: torch.Tensor) -> torch.Tensor:
        s = run.level(i)
        down, sigma_up = ancestral_levels(s, run.level(i + 1), eta)
        return run.renoise(ddim_step(x, denoised, uncond_denoised, s, down), i, sigma_up, eta, s_noise, noise_sampler)

    return run.loop(x, step, callback, disable)


@torch.no_grad()
def sample_euler_cfg_pp(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                        callback: Callable | None = None, disable: bool | None = None) -> torch.Tensor:
    """CFG++ DDIM (Chung et al. 2024), α-aware; ComfyUI's euler_cfg_pp on EPS and flow."""
    return sample_euler_ancestral_cfg_pp(model, x, sigmas, extra_args, callback, disable, eta=0.0, s_noise=0.0)


@torch.no_grad()
def sample_dpmpp_2m_cfg_pp(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                           callback: Callable | None = None, disable: bool | None = None) -> torch.Tensor:
    """CFG++ DPM-Solver++(2M) with the uncond x0 history, α-aware; ComfyUI's dpmpp_2m_cfg_pp on EPS."""
    run = _Run(model, x, sigmas, extra_args, snr=True)
    previous = None

    def step(i: int, x: torch.Tensor, denoised: torch.Tensor, uncond_denoised: torch.Tensor) -> torch.Tensor:
        nonlocal previous
        s = run.level(i)
        x = dpmpp_2m_step(x, denoised, uncond_denoised, s, run.level(i + 1), previous)
        previous = (uncond_denoised, s)
        return x

    return run.loop(x, step, callback, disable)


@torch.no_grad()
def sample_dpmpp_2s_ancestral_cfg_pp(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                                     callback: Callable | None = None, disable: bool | None = None, eta: float = 1.0,
                                     s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """Ancestral CFG++ DPM-Solver++(2S), α-aware; ComfyUI's dpmpp_2s_ancestral_cfg_pp on EPS, with the step's own D_u
    in both stages (ComfyUI's uses the midpoint's D_u in the second)."""
    run = _Run(model, x, sigmas, extra_args, snr=True)
    noise_sampler = default_noise_sampler(x, seed=run.seed) if noise_sampler is None else noise_sampler

    def step(i: int, x: torch.Tensor, denoised: torch.Tensor, uncond_denoised: torch.Tensor) -> torch.Tensor:
        s = run.level(i)
        down, sigma_up = ancestral_levels(s, run.level(i + 1), eta)
        if down.sigma == 0:
            x = ddim_step(x, denoised, uncond_denoised, s, down)
        else:
            half_log_snr = dpmpp_2s_midpoint(s, down)
            sigma_mid = half_log_snr_to_sigma(half_log_snr, run.model_sampling)
            mid = Level(sigma_mid, sigma_mid * half_log_snr.exp())
            denoised_mid, _ = run.denoise(dpmpp_2s_stage(x, denoised, uncond_denoised, s, mid, denoised), sigma_mid)
            x = dpmpp_2s_stage(x, denoised, uncond_denoised, s, down, denoised_mid)
        return run.renoise(x, i, sigma_up, eta, s_noise, noise_sampler)

    return run.loop(x, step, callback, disable)


@torch.no_grad()
def sample_res_multistep_ancestral_cfg_pp(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                                          callback: Callable | None = None, disable: bool | None = None,
                                          eta: float = 1.0, s_noise: float = 1.0,
                                          noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """Ancestral CFG++ RES multistep, α-aware: the CFG++ RES step (D_λ denoised, ε_u and the uncond history renoised)
    to the ancestral σ_down at α_t, then fresh noise back to σ_t; ComfyUI's res_multistep_ancestral without guidance."""
    run = _Run(model, x, sigmas, extra_args, snr=True)
    noise_sampler = default_noise_sampler(x, seed=run.seed) if noise_sampler is None else noise_sampler
    previous = None

    def step(i: int, x: torch.Tensor, denoised: torch.Tensor, uncond_denoised: torch.Tensor) -> torch.Tensor:
        nonlocal previous
        s = run.level(i)
        down, sigma_up = ancestral_levels(s, run.level(i + 1), eta)
        x = res_multistep_step(x, denoised, uncond_denoised, s, down, previous if down.sigma > 0 else None)
        previous = (uncond_denoised, down.half_log_snr - s.half_log_snr)
        return run.renoise(x, i, sigma_up, eta, s_noise, noise_sampler)

    return run.loop(x, step, callback, disable)


@torch.no_grad()
def sample_res_multistep_cfg_pp(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                                callback: Callable | None = None, disable: bool | None = None) -> torch.Tensor:
    """CFG++ RES multistep, α-aware: from x̃_s with D_λ and the uncond history; ComfyUI's res_multistep without
    guidance on EPS (ComfyUI's res_multistep_cfg_pp integrates D_u after its first step)."""
    return sample_res_multistep_ancestral_cfg_pp(model, x, sigmas, extra_args, callback, disable, eta=0.0,
                                                 s_noise=0.0)


@torch.no_grad()
def sample_gradient_estimation_cfg_pp(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                                      callback: Callable | None = None, disable: bool | None = None,
                                      ge_gamma: float = 2.0) -> torch.Tensor:
    """CFG++ gradient estimation, α-aware: Euler from x̃_s with D_λ (so D_λ denoised, ε_u renoised) plus the
    (γ − 1)-weighted change of that Euler derivative; ComfyUI's gradient_estimation_cfg_pp on EPS."""
    run = _Run(model, x, sigmas, extra_args)
    previous = None

    def step(i: int, x: torch.Tensor, denoised: torch.Tensor, uncond_denoised: torch.Tensor) -> torch.Tensor:
        nonlocal previous
        x, previous = gradient_estimation_step(x, denoised, uncond_denoised, run.level(i), run.sigmas[i + 1],
                                               previous, ge_gamma)
        return x

    return run.loop(x, step, callback, disable)


def _dpmpp_sde_cfg_pp(name: str, history: int, solver: str) -> Callable:
    """The CFG++ form of core's DPM-Solver++ SDE sampler `name`, keeping `history` earlier uncond x0s (1: 2M, 2: 3M);
    the `_gpu` ones draw their Brownian tree on x's device, the others on the CPU, as core's."""
    cpu_noise = not name.endswith("_gpu")

    @torch.no_grad()
    def sample(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
               callback: Callable | None = None, disable: bool | None = None, eta: float = 1.0, s_noise: float = 1.0,
               noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
        if len(sigmas) <= 1:
            return x
        run = _Run(model, x, sigmas, extra_args, snr=True)
        noise_sampler = _brownian_noise(x, sigmas, run.seed, cpu_noise) if noise_sampler is None else noise_sampler
        earlier: list[Evaluation] = []

        def step(i: int, x: torch.Tensor, denoised: torch.Tensor, uncond_denoised: torch.Tensor) -> torch.Tensor:
            s, t = run.level(i), run.level(i + 1)
            x = dpmpp_sde_step(x, denoised, uncond_denoised, s, t, eta, earlier, solver)
            earlier[:] = [Evaluation(uncond_denoised, t.half_log_snr - s.half_log_snr), *earlier][:history]
            return run.renoise(x, i, dpmpp_sde_noise_std(s, t, eta), eta, s_noise, noise_sampler)

        return run.loop(x, step, callback, disable)

    sample.__doc__ = (f"CFG++ DPM-Solver++({history + 1}M) SDE, α-aware: from x̃_s with D_λ and the uncond history, "
                      "so x_t = α_t·D_λ + σ_t·(e^{−ηh}·ε_u + √(1 − e^{−2ηh})·z) + the multistep terms; ComfyUI's "
                      f"{name} without guidance.")
    return sample


def dpmpp_2s_ancestral_evaluations(sigmas: torch.Tensor, model_sampling: object, eta: float = 1.0,
                                   **options: object) -> list[int]:
    """Evaluations per step of `sample_dpmpp_2s_ancestral_cfg_pp`, with its own operations: no midpoint where the
    step ends at σ = 0 or σ_down = 0 (eta > 1)."""
    sigmas = offset_first_sigma_for_snr(sigmas, model_sampling)

    def level(sigma: torch.Tensor) -> Level:  # as _Run.level
        return Level(sigma, sigma * sigma_to_half_log_snr(sigma, model_sampling).exp())

    return with_stages([bool(sigmas[i + 1] != 0) and bool(ancestral_levels(level(sigmas[i]), level(sigmas[i + 1]),
                                                                           eta)[0].sigma != 0)
                        for i in range(len(sigmas) - 1)])


SAMPLERS = {
    "euler": sample_euler_cfg_pp,
    "euler_ancestral": sample_euler_ancestral_cfg_pp,
    "dpmpp_2m": sample_dpmpp_2m_cfg_pp,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral_cfg_pp,
    "res_multistep": sample_res_multistep_cfg_pp,
    "res_multistep_ancestral": sample_res_multistep_ancestral_cfg_pp,
    "gradient_estimation": sample_gradient_estimation_cfg_pp,
    **{name: _dpmpp_sde_cfg_pp(name, 1, "heun" if "heun" in name else "midpoint")
       for name in ("dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu")},
    **{name: _dpmpp_sde_cfg_pp(name, 2, "heun") for name in ("dpmpp_3m_sde", "dpmpp_3m_sde_gpu")},
}
# The samplers that take the node's eta and s_noise (the others are deterministic).
NOISE_OPTIONS = {name for name, function in SAMPLERS.items() if "eta" in inspect.signature(function).parameters}
# Evaluations per step (sigmas, model_sampling, **options) of the samplers above that make more than one per step.
MULTI_STAGE = {"dpmpp_2s_ancestral": dpmpp_2s_ancestral_evaluations}


def evaluations_rules() -> dict[Callable, Callable[..., list[int]]]:
    """Each sampler above → its evaluations per step `(sigmas, model_sampling, **options)` (one unless MULTI_STAGE)."""
    def single(sigmas: torch.Tensor, model_sampling: object, **options: object) -> list[int]:
        return single_evaluations(sigmas)

    return {sampler: MULTI_STAGE.get(name, single) for name, sampler in SAMPLERS.items()}


def ksampler_name(name: str) -> str:
    """The name under which KSampler and KSamplerSelect list the CFG++ form of `name`."""
    return f"steer_{name}_cfg_pp"


def register_ksampler_names() -> None:
    """Make the CFG++ samplers selectable by name in KSampler and KSamplerSelect (idempotent)."""
    # ComfyUI has no sampler registry: a name resolves through comfy.samplers.ksampler(name) to
    # getattr(comfy.k_diffusion.sampling, "sample_" + name), and the menus list comfy.samplers.KSAMPLER_NAMES and
    # SAMPLER_NAMES (= KSampler.SAMPLERS). So new attributes are added and new names appended in place, where every
    # holder of those lists sees them; nothing ComfyUI defines is replaced or wrapped.
    for name, function in SAMPLERS.items():
        if not hasattr(k_sampling, "sample_" + ksampler_name(name)):
            setattr(k_sampling, "sample_" + ksampler_name(name), function)
    listings = (comfy.samplers.KSAMPLER_NAMES, comfy.samplers.SAMPLER_NAMES, comfy.samplers.KSampler.SAMPLERS)
    for listing in {id(listing): listing for listing in listings}.values():
        listing += [ksampler_name(name) for name in SAMPLERS if ksampler_name(name) not in listing]


class SteerCFGPPSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SteerCFGPPSampler",
            display_name="Steer CFG++ Sampler",
            category="sampling/steer",
            description="CFG++ (Chung et al. 2024): denoise with the guided prediction, renoise with the unconditional "
                        "one. The guider's cfg is CFG++'s λ (typically 0.4–1.5, not 4–8). Correct on EPS and flow "
                        "models, with every guider; also in KSampler's list as steer_<sampler>_cfg_pp.",
            inputs=[
                io.Combo.Input("sampler_name", options=list(SAMPLERS), default="euler",
                               tooltip="The CFG++ form of the core sampler of that name. euler: CFG++ DDIM. "
                                       "euler_ancestral, res_multistep_ancestral, dpmpp_2s_ancestral: with fresh "
                                       "noise each step. dpmpp_2m, res_multistep, gradient_estimation: deterministic "
                                       "multistep. dpmpp_2m_sde(_heun), dpmpp_3m_sde: SDE samplers with Brownian-tree "
                                       "noise (_gpu: drawn on the model's device, as core's _gpu samplers)."),
                io.Float.Input("eta", default=1.0, min=0.0, max=100.0, step=0.01,
                               tooltip="Ancestral and SDE samplers only: the share of fresh noise per step "
                                       "(0 = deterministic, 1 = the usual amount)."),
                io.Float.Input("s_noise", default=1.0, min=0.0, max=100.0, step=0.01,
                               tooltip="Ancestral and SDE samplers only: scale of the fresh noise (1 = exact; "
                                       "multiplied by the model's noise scale where ComfyUI defines one)."),
            ],
            outputs=[io.Sampler.Output(tooltip="A sampler for SamplerCustomAdvanced / SamplerCustom.")],
        )

    @classmethod
    def execute(cls, sampler_name: str, eta: float, s_noise: float) -> io.NodeOutput:
        check_inputs(cls, {"sampler_name": sampler_name, "eta": eta, "s_noise": s_noise})
        options = {"eta": eta, "s_noise": s_noise} if sampler_name in NOISE_OPTIONS else {}
        return io.NodeOutput(comfy.samplers.KSAMPLER(SAMPLERS[sampler_name], extra_options=options))
