"""SteerCFGPPSampler: CFG++ samplers (math: guiders/cfg_pp.py) for any guider, KSampler included.

The guidance scale λ is simply the guider's scale (or Steer's scheduled one): the samplers take the guided x0 D_λ the
guider returns and read the unconditional x0 D_u from a post-CFG hook, as ComfyUI's own `*_cfg_pp` samplers do. Unlike
those they are α-aware for all four methods (correct on flow models), and where no uncond was computed (BasicGuider,
no negative, a CFG-skipped step) they renoise with the cond instead of ComfyUI's all-zero placeholder.
"""

from __future__ import annotations

from collections.abc import Callable

import comfy.k_diffusion.sampling as k_sampling
import comfy.samplers
import torch
from comfy.k_diffusion.sampling import (
    default_noise_sampler,
    half_log_snr_to_sigma,
    offset_first_sigma_for_snr,
    sigma_to_half_log_snr,
)
from comfy.model_patcher import set_model_options_post_cfg_function
from comfy_api.v0_0_2 import io
from tqdm.auto import trange

from ..guiders.cfg_pp import Level, ancestral_levels, ddim_step, dpmpp_2m_step, dpmpp_2s_midpoint, dpmpp_2s_stage
from .checks import check_inputs

Denoise = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


def _model_sampling(model) -> object:
    return model.inner_model.model_patcher.get_model_object("model_sampling")


def _level(sigma: torch.Tensor, model_sampling: object) -> Level:
    """The level at σ > 0: α = σ·e^{λ(σ)} (1 for EPS, 1 − σ for flow)."""
    return Level(sigma, sigma * sigma_to_half_log_snr(sigma, model_sampling).exp())


@torch.no_grad()
def sample_euler_ancestral_cfg_pp(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                                  callback: Callable | None = None, disable: bool | None = None, eta: float = 1.0,
                                  s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """Ancestral CFG++ DDIM (Chung et al. 2024), α-aware; ComfyUI's euler_ancestral_cfg_pp on EPS and flow."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x, seed=extra_args.get("seed")) if noise_sampler is None else noise_sampler
    denoise = _cfg_pp_denoiser(model, x, extra_args)
    model_sampling = _model_sampling(model)
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised, uncond_denoised = denoise(x, sigmas[i])
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        s = _level(sigmas[i], model_sampling)
        down, sigma_up = ancestral_levels(s, _level(sigmas[i + 1], model_sampling), eta)
        x = ddim_step(x, denoised, uncond_denoised, s, down)
        if eta > 0 and s_noise > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_euler_cfg_pp(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                        callback: Callable | None = None, disable: bool | None = None) -> torch.Tensor:
    """CFG++ DDIM (Chung et al. 2024), α-aware; ComfyUI's euler_cfg_pp on EPS and flow."""
    return sample_euler_ancestral_cfg_pp(model, x, sigmas, extra_args, callback, disable, eta=0.0, s_noise=0.0)


@torch.no_grad()
def sample_dpmpp_2m_cfg_pp(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                           callback: Callable | None = None, disable: bool | None = None) -> torch.Tensor:
    """CFG++ DPM-Solver++(2M) with the uncond x0 history, α-aware; ComfyUI's dpmpp_2m_cfg_pp on EPS."""
    extra_args = {} if extra_args is None else extra_args
    denoise = _cfg_pp_denoiser(model, x, extra_args)
    model_sampling = _model_sampling(model)
    sigmas = offset_first_sigma_for_snr(sigmas, model_sampling)  # finite λ at σ = 1 on flow, as ComfyUI's SNR samplers
    previous = None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised, uncond_denoised = denoise(x, sigmas[i])
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        s = _level(sigmas[i], model_sampling)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = dpmpp_2m_step(x, denoised, uncond_denoised, s, _level(sigmas[i + 1], model_sampling), previous)
        previous = (uncond_denoised, s)
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral_cfg_pp(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                                     callback: Callable | None = None, disable: bool | None = None, eta: float = 1.0,
                                     s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """Ancestral CFG++ DPM-Solver++(2S), α-aware; ComfyUI's dpmpp_2s_ancestral_cfg_pp on EPS, with the step's own D_u
    in both stages (ComfyUI's uses the midpoint's D_u in the second)."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x, seed=extra_args.get("seed")) if noise_sampler is None else noise_sampler
    denoise = _cfg_pp_denoiser(model, x, extra_args)
    model_sampling = _model_sampling(model)
    sigmas = offset_first_sigma_for_snr(sigmas, model_sampling)  # finite λ at σ = 1 on flow, as ComfyUI's SNR samplers
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised, uncond_denoised = denoise(x, sigmas[i])
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        s = _level(sigmas[i], model_sampling)
        down, sigma_up = ancestral_levels(s, _level(sigmas[i + 1], model_sampling), eta)
        if down.sigma == 0:
            x = ddim_step(x, denoised, uncond_denoised, s, down)
        else:
            half_log_snr = dpmpp_2s_midpoint(s, down)
            sigma_mid = half_log_snr_to_sigma(half_log_snr, model_sampling)
            mid = Level(sigma_mid, sigma_mid * half_log_snr.exp())
            denoised_mid, _ = denoise(dpmpp_2s_stage(x, denoised, uncond_denoised, s, mid, denoised), sigma_mid)
            x = dpmpp_2s_stage(x, denoised, uncond_denoised, s, down, denoised_mid)
        if eta > 0 and s_noise > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


SAMPLERS = {
    "euler": sample_euler_cfg_pp,
    "euler_ancestral": sample_euler_ancestral_cfg_pp,
    "dpmpp_2m": sample_dpmpp_2m_cfg_pp,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral_cfg_pp,
}
ANCESTRAL = ("euler_ancestral", "dpmpp_2s_ancestral")


def ksampler_name(name: str) -> str:
    """The name under which KSampler and KSamplerSelect list the CFG++ form of `name`."""
    return f"steer_{name}_cfg_pp"


def register_ksampler_names() -> None:
    """Make the four samplers selectable by name in KSampler and KSamplerSelect (idempotent)."""
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
                               tooltip="euler: CFG++ DDIM. euler_ancestral: the same with fresh noise each step. "
                                       "dpmpp_2m: second-order multistep. dpmpp_2s_ancestral: second-order, two model "
                                       "evaluations per step, with fresh noise."),
                io.Float.Input("eta", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="Ancestral samplers only: the share of fresh noise per step (0 = deterministic, "
                                       "1 = the usual amount)."),
                io.Float.Input("s_noise", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="Ancestral samplers only: scale of the fresh noise (1 = exact)."),
            ],
            outputs=[io.Sampler.Output(tooltip="A sampler for SamplerCustomAdvanced / SamplerCustom.")],
        )

    @classmethod
    def execute(cls, sampler_name: str, eta: float, s_noise: float) -> io.NodeOutput:
        check_inputs(cls, {"sampler_name": sampler_name, "eta": eta, "s_noise": s_noise})
        options = {"eta": eta, "s_noise": s_noise} if sampler_name in ANCESTRAL else {}
        return io.NodeOutput(comfy.samplers.KSAMPLER(SAMPLERS[sampler_name], extra_options=options))
