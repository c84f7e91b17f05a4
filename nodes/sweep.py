"""SteerSweep: the guidance-scale sweep of the seed lesson as one node — one sampling per scale, same seed, in a
labelled grid, optionally beside the same model without its Steer patches.

Each cell is exactly what KSampler gives with that cfg (the same sampling calls: comfy.sample.sample with
KSampler's noise), decoded by the VAE. The progress bar counts the steps of every run, and the sweep stops between
and within runs when the queue is interrupted.
"""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
from comfy_api.v0_0_2 import io

from ..guiders.schedule import parse_custom
from .checks import Values, check_inputs, validation
from .drawing import labelled_grid, to_image, to_pil
from .hooks import RECIPE, without_steer

NODE = "SteerSweep"
MAX_SCALE, MAX_SCALES = 100.0, 16


def parse_scales(text: str) -> tuple[float, ...]:
    """The scales of "3, 5, 7.5" (commas and/or spaces); each 0–100, 1 to MAX_SCALES of them."""
    expected = f"expected 1–{MAX_SCALES} guidance scales 0–{MAX_SCALE:g} such as \"3, 5, 7, 9\""
    if not text.strip():
        raise ValueError(f"input 'scales': no scales given; {expected}")
    try:
        scales = parse_custom(text)
    except ValueError as error:
        raise ValueError(f"input 'scales': {error}; {expected}") from None
    if len(scales) > MAX_SCALES:
        raise ValueError(f"input 'scales': {len(scales)} scales, one sampling each; {expected}")
    for position, scale in enumerate(scales, start=1):
        if scale > MAX_SCALE:
            raise ValueError(f"input 'scales': value {position} ({scale:g}) is above {MAX_SCALE:g}; {expected}")
    return scales


def _cross(values: Values) -> None:
    if values.get("scales") is not None:  # a linked input is None until it arrives
        parse_scales(values["scales"])


class SteerSweep(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
            display_name="Steer Sweep",
            category="sampling/steer",
            description="Sample once per guidance scale with the same seed and show the images side by side, "
                        "labelled; optionally a second row with the model's Steer patches off (plain CFG) to compare.",
            inputs=[
                io.Model.Input("model", tooltip="The model, with or without Steer patches."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="The noise seed, the same for every cell."),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Sampling steps of each run."),
                io.Combo.Input("sampler_name", options=list(comfy.samplers.KSampler.SAMPLERS), default="euler",
                               tooltip="The sampler, as in KSampler."),
                io.Combo.Input("scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS), default="normal",
                               tooltip="The scheduler, as in KSampler."),
                io.Conditioning.Input("positive", tooltip="What the image should show."),
                io.Conditioning.Input("negative", tooltip="What to steer away from."),
                io.Latent.Input("latent_image", tooltip="The latent to sample (e.g. Empty Latent Image)."),
                io.Vae.Input("vae", tooltip="Decodes each result for the grid."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="As in KSampler: 1.0 samples from pure noise."),
                io.String.Input("scales", default="3, 5, 7, 9",
                                tooltip=f"The guidance scales (cfg) to sample, one column each, e.g. \"3, 5, 7, 9\": "
                                        f"1–{MAX_SCALES} values in 0–{MAX_SCALE:g}."),
                io.Boolean.Input("compare_without_steer", default=True,
                                 tooltip="Add a row sampled with the model's Steer patches off (plain CFG at the same "
                                         "scales and seed). Doubles the runs."),
            ],
            outputs=[io.Image.Output(tooltip="One grid per image of the latent batch: rows Steer / without Steer, "
                                             "columns the scales.")],
        )

    @classmethod
    def validate_inputs(cls, scales: str | None = None) -> bool | str:
        return validation(cls, {"scales": scales}, _cross)

    @classmethod
    def execute(cls, model, seed: int, steps: int, sampler_name: str, scheduler: str, positive, negative,
                latent_image: dict, vae, denoise: float, scales: str, compare_without_steer: bool) -> io.NodeOutput:
        check_inputs(cls, {"model": model, "seed": seed, "steps": steps, "sampler_name": sampler_name,
                           "scheduler": scheduler, "positive": positive, "negative": negative,
                           "latent_image": latent_image, "vae": vae, "denoise": denoise, "scales": scales,
                           "compare_without_steer": compare_without_steer}, _cross)
        values = parse_scales(scales)
        variants = [("Steer", model)]
        if compare_without_steer:
            if model.model_options.get(RECIPE) is None:
                logging.warning("%s: the model carries no Steer patches, so 'compare_without_steer' would repeat the "
                                "same images; sampling one row.", NODE)
                variants = [("no Steer patches", model)]
            else:
                variants.append(("without Steer", without_steer(model)))
        latent = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
        noise = comfy.sample.prepare_noise(latent, seed, latent_image.get("batch_index"))
        runs = [(variant, scale) for _, variant in variants for scale in values]
        progress = comfy.utils.ProgressBar(len(runs) * steps)
        decoded = []
        for index, (variant, scale) in enumerate(runs):
            comfy.model_management.throw_exception_if_processing_interrupted()

            def advance(step: int, _x0, _x, _total: int, done: int = index * steps) -> None:
                progress.update_absolute(done + step + 1)

            samples = comfy.sample.sample(variant, noise.clone(), steps, scale, sampler_name, scheduler, positive,
                                          negative, latent, denoise=denoise, noise_mask=latent_image.get("noise_mask"),
                                          callback=advance, disable_pbar=True, seed=seed)
            images = vae.decode(samples)
            decoded.append(images.reshape(-1, *images.shape[-3:]))  # video VAEs: frames as images, as VAEDecode
        rows = [label for label, _ in variants] if len(variants) > 1 else [""]
        columns = [f"cfg {scale:g}" for scale in values]
        grids = [labelled_grid([[to_pil(decoded[row * len(values) + column][image]) for column in range(len(values))]
                                for row in range(len(variants))], columns, rows)
                 for image in range(decoded[0].shape[0])]
        return io.NodeOutput(to_image(grids))
