"""SteerConditionDropout: the training half of classifier-free guidance for ComfyUI's own LoRA training
(decisions: guiders/dropout.py).

TrainLoraNode drives a Guider_Basic with its TrainSampler: each training step puts the batch's positive entries into
`guider.conds["positive"]` and calls the guider, which runs the PREDICT_NOISE wrappers. Three wrappers (chained, as
ComfyUI's WrappersMP does) act only when the sampler of the run is that TrainSampler, so sampling with the same MODEL
runs exactly as without the node:
  - OUTER_SAMPLE: adds the null conditioning to the guider's conds (one zeroed copy of each positive when no null is
    given), so ComfyUI prepares it for the model like any cond (model conds, pooled output, areas, ControlNets);
  - SAMPLER_SAMPLE: pairs every prepared positive entry (one per training image) with its prepared null entries and
    starts the run's step counter, in this run's own model_options;
  - PREDICT_NOISE: for each training step, swaps the dropped entries of the batch for their null entries for the
    length of the call, then restores the batch.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import comfy.supported_models
import torch
from comfy.patcher_extension import WrappersMP
from comfy.sampler_helpers import convert_cond
from comfy_api.v0_0_2 import io

from ..guiders.dropout import MASK64, dropped
from .checks import check_inputs, node_label, validation

NODE = "SteerConditionDropout"
KEY = "steer_dropout"
SETTINGS = "steer_dropout"  # model_options: the node's Dropout
RUN = "steer_dropout_run"  # a training run's model_options: its DropoutRun
NULL = "steer_dropout_null"  # the guider's conds during training: the prepared null entries
# Families whose reference unconditional is the zeroed conditioning: SDXL's trainer (generative-models) drops text
# embeddings to zeros and diffusers' SDXL pipelines zero the empty prompt (force_zeros_for_empty_prompt); ComfyUI's
# SD3 workflows zero the negative (ConditioningZeroOut). Elsewhere (SD1.x/2.x: the empty caption) zeros are a
# conditioning the model never saw, so the user must connect the null conditioning.
ZERO_NULL_FAMILIES = (comfy.supported_models.SDXL, comfy.supported_models.SDXLRefiner, comfy.supported_models.SD3)
ZEROED_KEYS = ("cross_attn", "pooled_output", "conditioning_lyrics")  # what core ConditioningZeroOut zeroes


@dataclass(frozen=True)
class Dropout:
    rate: float
    seed: int
    null: list | None  # CONDITIONING; None: a zeroed copy of each sample's own conditioning


@dataclass
class DropoutRun:
    """One training run: the entries that replace each positive entry, by the entry's uuid (ComfyUI gives every
    cond entry one, and copies keep it), and the step count. A plain object, not a list or tensor: TrainSampler
    slices those in model_options per batch."""

    settings: Dropout
    nulls: dict[uuid.UUID, list[dict]]
    step: int = field(default=0)

    def null_for(self, entry: dict) -> list[dict]:
        nulls = self.nulls.get(entry.get("uuid"))
        if nulls is None:
            raise RuntimeError(f"{NODE}: a training batch holds a conditioning entry this run did not prepare")
        return nulls


def is_training(sampler: Any) -> bool:
    """Whether a run is driven by ComfyUI's trainer (TrainSampler of comfy_extras/nodes_train.py, or a subclass).
    Matched by name: ComfyUI loads comfy_extras under a path-based module name, so a class imported from
    `comfy_extras.nodes_train` would not be the one TrainLoraNode uses."""
    return any(cls.__name__ == "TrainSampler" and cls.__module__.endswith("nodes_train")
               for cls in type(sampler).__mro__)


def zeroed(entry: dict) -> dict:
    """A copy of a cond entry (convert_cond's form) with its text conditioning zeroed, as ConditioningZeroOut does."""
    out = entry | {"uuid": uuid.uuid4()}
    for key in ZEROED_KEYS:
        if isinstance(out.get(key), torch.Tensor):
            out[key] = torch.zeros_like(out[key])
    return out


def check_null(node: type[io.ComfyNode], model, null: list | None) -> None:
    if null is None:
        config = model.model.model_config
        if not isinstance(config, ZERO_NULL_FAMILIES):
            raise ValueError(
                f"{node_label(node)}: connect input 'null_conditioning' (the empty prompt's encoding, CLIPTextEncode "
                f"with no text) for this {type(config).__name__} model; zeros are used without it only for the SDXL "
                "and SD3 families, whose unconditional is the zeroed conditioning")
    elif not isinstance(null, list) or not null:
        raise ValueError(f"{node_label(node)}: input 'null_conditioning' is empty; connect a CONDITIONING (the empty "
                         "prompt's encoding)")


def with_dropout(model, settings: Dropout):
    """A clone of `model` whose training runs (TrainLoraNode) drop conditioning as `settings` say; the last
    SteerConditionDropout applied to a model decides."""
    patched = model.clone()
    patched.model_options[SETTINGS] = settings
    if not patched.get_wrappers(WrappersMP.PREDICT_NOISE, KEY):
        patched.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, KEY, _outer_sample)
        patched.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, KEY, _sampler_sample)
        patched.add_wrapper_with_key(WrappersMP.PREDICT_NOISE, KEY, _predict_noise)
    return patched


def _outer_sample(executor, noise, latent_image, sampler, *args, **kwargs):
    guider = executor.class_obj
    settings: Dropout | None = guider.model_options.get(SETTINGS)
    if settings is not None and is_training(sampler):
        positive = guider.conds.get("positive", [])
        guider.conds[NULL] = ([zeroed(entry) for entry in positive] if settings.null is None
                              else convert_cond(settings.null))
    return executor(noise, latent_image, sampler, *args, **kwargs)


def _sampler_sample(executor, guider, sigmas, extra_args, *args, **kwargs):
    model_options = extra_args["model_options"]
    settings: Dropout | None = model_options.get(SETTINGS)
    if settings is not None and NULL in guider.conds and is_training(executor.class_obj):
        positive, null = guider.conds["positive"], guider.conds[NULL]
        # Zeros: entry i's own zeroed copy (process_conds keeps the order and only appends); else the whole null.
        pairs = zip(positive, ([[entry] for entry in null] if settings.null is None else [null] * len(positive)),
                    strict=False)
        model_options[RUN] = DropoutRun(settings, {entry["uuid"]: nulls for entry, nulls in pairs})
    return executor(guider, sigmas, extra_args, *args, **kwargs)


def _predict_noise(executor, x, timestep, model_options, seed):
    run: DropoutRun | None = model_options.get(RUN)
    if run is None:
        return executor(x, timestep, model_options, seed)
    guider = executor.class_obj
    batch = guider.conds["positive"]
    drop = dropped(run.settings.seed, run.step, len(batch), run.settings.rate).tolist()
    run.step += 1
    guider.conds["positive"] = [new for entry, off in zip(batch, drop, strict=True)
                                for new in (run.null_for(entry) if off else [entry])]
    try:
        return executor(x, timestep, model_options, seed)
    finally:
        guider.conds["positive"] = batch


class SteerConditionDropout(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
            display_name="Steer Condition Dropout",
            category="sampling/steer/training",
            description="Put before Train LoRA: during training each sample's conditioning is replaced, with "
                        "probability rate, by the null conditioning, so the LoRA also learns the unconditional "
                        "prediction that CFG subtracts (Ho & Salimans 2022: 0.1–0.2). No effect on sampling.",
            inputs=[
                io.Model.Input("model", tooltip="The model Train LoRA trains; sampling with the output is unchanged."),
                io.Float.Input("rate", default=0.1, min=0.0, max=1.0, step=0.01,
                               tooltip="Probability that a sample's conditioning is replaced by the null one, drawn "
                                       "per sample and per training step. 0.1–0.2 as in the CFG paper; 0 = off."),
                io.Int.Input("seed", default=0, min=0, max=MASK64, control_after_generate=True,
                             tooltip="Seed of the dropout draws: the same seed drops the same samples at the same "
                                     "steps (Train LoRA's own seed drives its noise and timesteps)."),
                io.Conditioning.Input("null_conditioning", optional=True,
                                      tooltip="What a dropped sample sees instead of its caption: encode an empty "
                                              "prompt with the training model's CLIP (its pooled output and other "
                                              "conds replace the sample's too). Leave empty only for SDXL and SD3 "
                                              "models, which then get the zeroed conditioning."),
            ],
            outputs=[io.Model.Output(tooltip="The model for Train LoRA, with condition dropout during training.")],
        )

    @classmethod
    def validate_inputs(cls, rate: float | None = None, seed: int | None = None) -> bool | str:
        return validation(cls, {"rate": rate, "seed": seed})

    @classmethod
    def execute(cls, model, rate: float, seed: int, null_conditioning: list | None = None) -> io.NodeOutput:
        check_inputs(cls, {"model": model, "rate": rate, "seed": seed, "null_conditioning": null_conditioning})
        check_null(cls, model, null_conditioning)
        return io.NodeOutput(with_dropout(model, Dropout(rate, seed, null_conditioning)))
