"""In-process sampling for tests: ComfyUI's own sampler nodes and samplers, and a model-call recorder."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import comfy.sample
import comfy.samplers
import torch
from comfy_extras.nodes_custom_sampler import BasicScheduler, KSamplerSelect, RandomNoise, SamplerCustomAdvanced

import nodes


def sigmas(model, steps: int, scheduler: str = "normal") -> torch.Tensor:
    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps).cpu()


def core_guider(model, bed, cfg: float) -> comfy.samplers.CFGGuider:
    """Core CFGGuider over `model` with a test bed's positive and negative (anything with those two attributes)."""
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(bed.positive, bed.negative)
    guider.set_cfg(cfg)
    return guider


def steer_guider(node, model, bed, cfg: float):
    """The SteerGuider node (class as ComfyUI registered it) over `model` with a test bed's conds."""
    return node.execute(model, bed.positive, bed.negative, cfg).result[0]


class FormulaGuider(comfy.samplers.CFGGuider):
    """An independent reference guider: core's calc_cond_batch for [positive, negative, *extra], then the method's
    formula as a test writes it. `formula(outputs, step, steps, x)` gets [D_c, D_u, *D_extra] and the schedule step
    of an evaluation (the nearest schedule sigma: right for one-evaluation samplers such as Euler)."""

    def __init__(self, model, bed, formula, extra: tuple = ()):
        super().__init__(model)
        self.inner_set_conds({"positive": bed.positive, "negative": bed.negative}
                             | {f"extra{i}": cond for i, cond in enumerate(extra)})
        self.formula, self.extra_count = formula, len(extra)

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 - core's signature
        schedule = model_options["transformer_options"]["sample_sigmas"].tolist()
        step = min(range(len(schedule)), key=lambda i: abs(schedule[i] - float(timestep[0])))
        conds = [self.conds["positive"], self.conds["negative"]]
        conds += [self.conds[f"extra{i}"] for i in range(self.extra_count)]
        outputs = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, model_options)
        return self.formula(outputs, step, len(schedule) - 1, x)


def mimic_threshold(guided: torch.Tensor, mimic: torch.Tensor) -> torch.Tensor:
    """Reference for tests: mcmonkey's MEAN/AD dynamic thresholding, per (sample, channel), percentile 1 (any number
    of spatial dims)."""
    flat, mim = guided.flatten(2), mimic.flatten(2)
    mean = flat.mean(2, keepdim=True)
    mim_ref = (mim - mim.mean(2, keepdim=True)).abs().amax(2, keepdim=True)
    limit = torch.maximum(mim_ref, (flat - mean).abs().amax(2, keepdim=True))
    return ((flat - mean).clamp(-limit, limit) / limit * mim_ref + mean).view_as(guided)


def run(guider, sampler_name: str, latent: torch.Tensor, steps: int = 6, seed: int = 1) -> torch.Tensor:
    """Sample `latent` with `guider` and a named k-diffusion sampler (no node plumbing around it)."""
    noise = comfy.sample.prepare_noise(latent, seed)
    sampler = comfy.samplers.sampler_object(sampler_name)
    return guider.sample(noise, latent, sampler, sigmas(guider.model_patcher, steps), disable_pbar=True, seed=seed)


def ksampler(model, positive, negative, cfg: float, sampler_name: str, latent: torch.Tensor, steps: int = 6,
             seed: int = 1, scheduler: str = "normal", denoise: float = 1.0) -> torch.Tensor:
    """The KSampler node, as a workflow runs it."""
    (out,) = nodes.KSampler().sample(model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                     {"samples": latent}, denoise=denoise)
    return out["samples"]


def custom_advanced(guider, sampler_name, latent: torch.Tensor, steps: int = 6, seed: int = 1,
                    scheduler: str = "normal", denoise: float = 1.0,
                    noise_mask: torch.Tensor | None = None) -> torch.Tensor:
    """SamplerCustomAdvanced with RandomNoise, KSamplerSelect (or a SAMPLER given instead of a name) and
    BasicScheduler, as a workflow runs them; `noise_mask` as SetLatentNoiseMask puts it on the latent."""
    noise = RandomNoise.execute(seed).result[0]
    sampler = KSamplerSelect.execute(sampler_name).result[0] if isinstance(sampler_name, str) else sampler_name
    schedule = BasicScheduler.execute(guider.model_patcher, scheduler, steps, denoise).result[0]
    latent_image = {"samples": latent} | ({"noise_mask": noise_mask} if noise_mask is not None else {})
    return SamplerCustomAdvanced.execute(noise, guider, sampler, schedule, latent_image).result[0]["samples"]


@contextlib.contextmanager
def model_calls(model_patcher) -> Iterator[list[int]]:
    """Record the batch rows of every forward of the diffusion model itself, below every ComfyUI hook."""
    rows: list[int] = []
    module = model_patcher.model.diffusion_model
    handle = module.register_forward_pre_hook(lambda _module, args: rows.append(int(args[0].shape[0])))
    try:
        yield rows
    finally:
        handle.remove()


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual − expected‖ / ‖expected‖: results of differently split or batched calls round differently, and the
    random test models amplify that in single elements, so they are compared as a whole."""
    return ((actual - expected).norm() / expected.norm()).item()
