"""Run one lab setting: Steer's nodes on the exact mixture model, sampled by ComfyUI, scored against the truth.

Every setting goes through the same door a workflow uses: Steer patch nodes on the model, SteerGuider with the
class as positive and the empty prompt as negative, a ComfyUI sampler (or SteerCFGPPSampler) and its schedule.
Each image of the batch asks for its own class (an equal share of each), so one call samples every class.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

import comfy.sample
import comfy.samplers
import torch

from testbed.sampling import model_calls, sigmas

from .metrics import class_metrics
from .model import class_conditioning, empty_conditioning, empty_latent, flat, mixture_model, mixture_of

NEGATIVE_OFFSET = "negative_class_offset"  # SteerNegative: the extra negative is class (k + offset) mod K per image


@dataclass(frozen=True)
class Setting:
    """One point of a sweep. `patches` are Steer patch nodes applied in order: (node id, inputs)."""

    method: str
    scale: float
    params: dict[str, Any] = field(default_factory=dict)
    patches: tuple[tuple[str, dict[str, Any]], ...] = ()
    sampler: str = "euler"
    cfg_pp: bool = False
    steps: int = 20
    kind: str = "eps"
    scheduler: str = "normal"

    def key(self) -> tuple:
        return (self.method, self.kind, self.sampler, self.cfg_pp, self.steps, self.scale,
                tuple(sorted(self.params.items())))


class Lab:
    """The two exact models (EPS, flow), Steer's node classes, and `per_class` images per class per run."""

    def __init__(self, steer_nodes: dict[str, type], per_class: int, num_classes: int = 3):
        self.nodes = steer_nodes
        self.models = {kind: mixture_model(kind) for kind in ("eps", "flow")}
        self.classes = torch.arange(num_classes).repeat_interleave(per_class)
        self.num_classes = num_classes

    def sample(self, setting: Setting, seed: int) -> tuple[torch.Tensor, list[int]]:
        """The latents of one run, [B, C, H, W], and the rows of every model call."""
        model = self.models[setting.kind]
        classes = self.classes.tolist()
        for node_id, inputs in setting.patches:
            inputs = dict(inputs)
            if NEGATIVE_OFFSET in inputs:
                offset = inputs.pop(NEGATIVE_OFFSET)
                inputs["negative"] = class_conditioning([(k + offset) % self.num_classes for k in classes])
            model = self.nodes[node_id].execute(model, **inputs).result[0]
        guider = self.nodes["SteerGuider"].execute(model, class_conditioning(classes), empty_conditioning(len(classes)),
                                                   setting.scale).result[0]
        sampler = (self.nodes["SteerCFGPPSampler"].execute(setting.sampler, 1.0, 1.0).result[0] if setting.cfg_pp
                   else comfy.samplers.sampler_object(setting.sampler))
        latent = empty_latent(len(classes))
        noise = comfy.sample.prepare_noise(latent, seed)
        with model_calls(model) as rows:
            out = guider.sample(noise, latent, sampler, sigmas(model, setting.steps, setting.scheduler),
                                disable_pbar=True, seed=seed)
        return out, rows

    def measure(self, setting: Setting, seeds: list[int]) -> dict[str, Any]:
        """One record: the setting, each metric's mean and standard deviation over the seeds, rows per image."""
        mixture = mixture_of(self.models[setting.kind])
        runs = []
        for seed in seeds:
            out, rows = self.sample(setting, seed)
            if not torch.isfinite(out).all():
                raise RuntimeError(f"non-finite samples for {setting}")
            x = flat(out)
            metrics = class_metrics(mixture, x, self.classes, seed)
            # share of images in class k + 1: the negated class where SteerNegative uses that offset, else a reference
            offset = next((inputs.get(NEGATIVE_OFFSET, 1) for node_id, inputs in setting.patches
                           if node_id == "SteerNegative"), 1)
            negated = (self.classes + offset) % self.num_classes
            metrics["negated_share"] = float((mixture.most_likely_class(x) == negated).double().mean())
            metrics["rows"] = sum(rows) / len(self.classes)
            runs.append(metrics)
        record: dict[str, Any] = {"method": setting.method, "model": setting.kind, "sampler": setting.sampler
                                  + ("_cfg_pp" if setting.cfg_pp else ""), "steps": setting.steps,
                                  "scale": setting.scale, "params": setting.params, "seeds": seeds,
                                  "images": len(self.classes)}
        for name in runs[0]:
            values = [run[name] for run in runs]
            record[name] = statistics.fmean(values)
            record[name + "_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        return record
