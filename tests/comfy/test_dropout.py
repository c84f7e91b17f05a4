"""SteerConditionDropout with ComfyUI's real TrainLoraNode: what each training step's model call sees, the rate over
many steps, reproducibility, and no trace of it outside training."""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator

import pytest
import torch
from comfy.weight_adapter import adapter_maps
from comfy_extras.nodes_train import LoraModelLoader, TrainLoraNode

from guiders.dropout import dropped
from testbed.models import tiny_inprocess_conds, tiny_inprocess_model
from testbed.sampling import core_guider, custom_advanced, ksampler, steer_guider

NODE = "SteerConditionDropout"


@pytest.fixture
def dropout(steer_nodes):
    """SteerConditionDropout as ComfyUI registered it: model → patched model."""

    def apply(model, rate: float = 0.1, seed: int = 0, null=None):
        return steer_nodes[NODE].execute(model, rate, seed, null).result[0]

    return apply


def captions(count: int) -> list:
    """One distinct CONDITIONING entry per training image (TrainLoraNode pairs entry i with image i)."""
    return [tiny_inprocess_conds(seed=10 + i)[0][0] for i in range(count)]


def null_conditioning() -> list:
    return tiny_inprocess_conds(seed=99)[0]


def train(model, positive: list, images: int = 3, steps: int = 8, seed: int = 0, batch_size: int = 1,
          latent_shape: tuple[int, ...] = (4, 8, 8), latents: list[torch.Tensor] | None = None,
          checkpointing: bool = False) -> tuple[object, dict, list]:
    """TrainLoraNode in fp32 on `latents` (default: `images` random ones), one LATENT each as a dataset loader gives
    them (0.3.75 fails on a single LATENT input); the global RNG (which it draws its batches, timesteps and LoRA init
    from) is seeded first so that two runs are comparable. Returns (model, LoRA state dict, losses)."""
    torch.manual_seed(1234)
    if latents is None:
        latents = list(torch.randn((images, 1, *latent_shape), generator=torch.Generator().manual_seed(7)))
    # The node's own defaults for the inputs set nowhere here (newer ComfyUI adds some: 0.33 has offloading, ...).
    defaults = {spec.id: [spec.default] for spec in TrainLoraNode.define_schema().inputs
                if getattr(spec, "default", None) is not None}
    out = TrainLoraNode.execute(**defaults | dict(
        model=[model], latents=[{"samples": latent} for latent in latents], positive=[positive],
        batch_size=[batch_size], grad_accumulation_steps=[1], steps=[steps], learning_rate=[1e-3], rank=[2],
        optimizer=["AdamW"], loss_function=["MSE"], seed=[seed], training_dtype=["fp32"], lora_dtype=["fp32"],
        algorithm=[next(iter(adapter_maps))], gradient_checkpointing=[checkpointing], existing_lora=["[None]"],
    ))
    outputs = dict(zip((output.display_name for output in TrainLoraNode.define_schema().outputs), out.result,
                       strict=True))
    lora = outputs["lora"]
    # 0.33 outputs the LoRA only; its workflows apply it with LoraModelLoader, as here.
    trained = outputs["model"] if "model" in outputs else LoraModelLoader.execute(model, lora, 1.0).result[0]
    return trained, {k: v.detach().clone() for k, v in lora.items()}, outputs["loss_map"]["loss"]


@contextlib.contextmanager
def conditioning_rows(model) -> Iterator[list[tuple[torch.Tensor, torch.Tensor | None]]]:
    """(context, y) of every row of every forward of the diffusion model itself, below every ComfyUI hook: of
    `model`'s diffusion model or any copy of it (0.33's TrainLoraNode trains on a fresh copy of the model)."""
    rows: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    diffusion_model = type(model.model.diffusion_model)

    def record(module, _args, kwargs, _output):
        if type(module) is not diffusion_model:
            return
        context, y = kwargs["context"], kwargs.get("y")
        for i in range(context.shape[0]):
            rows.append((context[i].detach().clone(), None if y is None else y[i].detach().clone()))

    handle = torch.nn.modules.module.register_module_forward_hook(record, with_kwargs=True)
    try:
        yield rows
    finally:
        handle.remove()


def which(context: torch.Tensor, options: list[torch.Tensor]) -> int:
    """The index of the option `context` equals exactly; fails when it equals none."""
    matches = [i for i, option in enumerate(options) if torch.equal(context, option)]
    assert len(matches) == 1, "a model row carries neither a caption nor the null conditioning"
    return matches[0]


def binomial_bound(trials: int, rate: float) -> float:
    return 4.0 * math.sqrt(trials * rate * (1.0 - rate))


def loras_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- what the model call sees ----------------------------------------------------------------------------------------

def test_observed_rate_and_exact_null_rows(steer, dropout):
    """Over many training steps (batch 2), the share of entries that reach the model call as the null conditioning
    matches `rate` within its binomial spread; every row carries exactly one caption or exactly the null; the
    dropped entries are the ones the seeded draw names, each on its own draw. ComfyUI evaluates each entry of a
    batch against every latent of it, so an entry fills a chunk of 2 rows, the batch's last entry first."""
    steps, rate, seed = 150, 0.2, 5
    entries, null = captions(2), null_conditioning()
    model = tiny_inprocess_model()
    with conditioning_rows(model) as rows:
        train(dropout(model, rate=rate, seed=seed, null=null), entries, images=2, steps=steps, batch_size=2)
    assert len(rows) == 4 * steps
    options = [entry[0][0] for entry in entries] + [null[0][0][0]]
    null_rows = torch.tensor([which(context, options) == len(entries) for context, _y in rows]).view(steps, 2, 2)
    assert torch.equal(null_rows[:, :, 0], null_rows[:, :, 1])  # a chunk is one entry
    observed = null_rows[:, :, 0].flip(1)
    assert abs(int(observed.sum()) - 2 * steps * rate) <= binomial_bound(2 * steps, rate)
    assert torch.equal(observed, torch.stack([dropped(seed, step, 2, rate) for step in range(steps)]))


def test_each_sample_of_a_multi_resolution_dataset(steer, dropout):
    """Latents of different sizes: TrainLoraNode calls the model once per sample of a step; each call is a training
    step of its own for the draw, and gradient checkpointing (recomputed forwards) changes nothing."""
    steps, rate, seed = 12, 0.5, 8
    entries, null = captions(2), null_conditioning()
    model = tiny_inprocess_model()
    latents = [torch.randn((1, 4, 8, 8)), torch.randn((1, 4, 4, 4))]
    with conditioning_rows(model) as rows:
        train(dropout(model, rate=rate, seed=seed, null=null), entries, steps=steps, batch_size=2, latents=latents,
              checkpointing=True)
    assert len(rows) == 2 * steps
    options = [entry[0][0] for entry in entries] + [null[0][0][0]]
    assert [which(context, options) == len(entries) for context, _y in rows] == [
        bool(dropped(seed, call, 1, rate)) for call in range(2 * steps)]


def test_pooled_output_is_replaced_with_the_null(sd3_bed, dropout):
    """SD3 (pooled output → y): a dropped row carries the null's context and the null's pooled output, a kept row
    the caption's."""
    steps, rate = 40, 0.5
    model = sd3_bed.model.clone()
    null = sd3_bed.negative
    with conditioning_rows(model) as rows:
        train(dropout(model, rate=rate, seed=1, null=null), sd3_bed.positive, images=2, steps=steps,
              latent_shape=(16, 8, 8))
    positive, null_entry = sd3_bed.positive[0], null[0]
    assert not torch.equal(positive[1]["pooled_output"], null_entry[1]["pooled_output"])
    kinds = []
    for context, y in rows:
        kind = which(context, [positive[0][0], null_entry[0][0]])
        assert torch.equal(y, (positive, null_entry)[kind][1]["pooled_output"][0])
        kinds.append(kind)
    assert kinds == [int(dropped(1, step, 1, rate)) for step in range(steps)]


def test_zeros_where_the_family_allows_them(sd3_bed, dropout):
    """SD3 without a null conditioning: a dropped row's context and pooled output are zeros (ConditioningZeroOut)."""
    steps, rate = 30, 0.5
    model = sd3_bed.model.clone()
    with conditioning_rows(model) as rows:
        train(dropout(model, rate=rate, seed=4), sd3_bed.positive, images=2, steps=steps, latent_shape=(16, 8, 8))
    positive = sd3_bed.positive[0]
    zero_rows = []
    for context, y in rows:
        zero = not context.any()
        assert torch.equal(context, torch.zeros_like(context) if zero else positive[0][0])
        assert torch.equal(y, torch.zeros_like(y) if zero else positive[1]["pooled_output"][0])
        zero_rows.append(zero)
    assert zero_rows == [bool(dropped(4, step, 1, rate)) for step in range(steps)]


# --- the LoRA ---------------------------------------------------------------------------------------------------------

def test_rate_zero_trains_the_same_lora_as_no_node(steer, dropout):
    """Rate 0: the same LoRA and losses, bit for bit, as TrainLoraNode without the node, and the trained MODEL (which
    still carries the node's wrappers) samples the same latents; a rate above 0 changes the LoRA (so the comparison
    can fail)."""
    entries, null = captions(3), null_conditioning()
    plain_model, plain, plain_losses = train(tiny_inprocess_model(), entries)
    off_model, off, off_losses = train(dropout(tiny_inprocess_model(), rate=0.0, null=null), entries)
    _, on, _ = train(dropout(tiny_inprocess_model(), rate=0.5, seed=0, null=null), entries)
    assert loras_equal(plain, off) and plain_losses == off_losses
    assert not loras_equal(plain, on)
    positive, negative = tiny_inprocess_conds()
    latent = torch.zeros(1, 4, 8, 8)
    assert torch.equal(ksampler(off_model, positive, negative, 6.0, "euler", latent),
                       ksampler(plain_model, positive, negative, 6.0, "euler", latent))


def test_same_seed_same_lora(steer, dropout):
    entries, null = captions(3), null_conditioning()
    first, again, other = (train(dropout(tiny_inprocess_model(), rate=0.5, seed=seed, null=null), entries)[1]
                           for seed in (3, 3, 4))
    assert loras_equal(first, again)
    assert not loras_equal(first, other)


# --- outside training -------------------------------------------------------------------------------------------------

def test_sampling_with_the_patched_model_is_unchanged(inprocess_bed, dropout, steer_guider_node, steer_nodes):
    """KSampler, a CFGGuider and SteerGuider over other Steer patches give the same latents, bit for bit, with and
    without the node, whatever its rate."""
    bed = inprocess_bed
    patched = dropout(bed.model, rate=1.0, null=null_conditioning())
    latent = bed.latent()
    for sampler_name in ("euler", "dpmpp_2m"):
        assert torch.equal(ksampler(patched, bed.positive, bed.negative, 6.0, sampler_name, latent),
                           ksampler(bed.model, bed.positive, bed.negative, 6.0, sampler_name, latent))
    assert torch.equal(custom_advanced(core_guider(patched, bed, 6.0), "euler", latent),
                       custom_advanced(core_guider(bed.model, bed, 6.0), "euler", latent))
    skip = steer_nodes["SteerCFGSkip"].execute(bed.model, "percent", 0.4, 1.0, 5.42, 0.28, 0.99).result[0]
    both = dropout(skip, rate=1.0, null=null_conditioning())
    assert torch.equal(custom_advanced(steer_guider(steer_guider_node, both, bed, 6.0), "euler", latent),
                       custom_advanced(steer_guider(steer_guider_node, skip, bed, 6.0), "euler", latent))


def test_training_is_told_by_the_trainer_class(steer):
    """TrainLoraNode's sampler counts as training whether ComfyUI loaded nodes_train under its path-based module name
    (the server) or as comfy_extras.nodes_train (in-process); sampling's KSAMPLER does not."""
    import comfy.samplers
    from comfy_extras.nodes_train import TrainSampler

    dropout_module = sys.modules[f"{steer.__name__}.nodes.dropout"]
    path_loaded = type("TrainSampler", (TrainSampler,), {"__module__": "/opt/ComfyUI/comfy_extras/nodes_train"})
    assert dropout_module.is_training(TrainSampler(None, None))
    assert dropout_module.is_training(path_loaded(None, None))
    assert not dropout_module.is_training(comfy.samplers.sampler_object("euler"))


# --- bad input --------------------------------------------------------------------------------------------------------

def test_sd15_without_null_is_refused(steer, dropout):
    with pytest.raises(ValueError, match=r"\(SteerConditionDropout\): connect input 'null_conditioning' .* SD15"):
        dropout(tiny_inprocess_model(), rate=0.1)


@pytest.mark.parametrize(("inputs", "message"), [
    ({"rate": 1.5}, r"\(SteerConditionDropout\): input 'rate' \(1.5\) is out of range; accepted range 0.0–1.0"),
    ({"rate": -0.1}, r"input 'rate' \(-0.1\) is out of range; accepted range 0.0–1.0"),
    ({"rate": float("nan")}, r"input 'rate' is NaN; accepted range 0.0–1.0"),
    ({"rate": float("inf")}, r"input 'rate' is infinite; accepted range 0.0–1.0"),
    ({"rate": "0.1"}, r"input 'rate' \('0.1'\) is not a number"),
    ({"seed": 1.5}, r"input 'seed' \(1.5\) is not a whole number"),
    ({"seed": -1}, r"input 'seed' \(-1\) is out of range; accepted range 0–18446744073709551615"),
    ({"null": []}, r"\(SteerConditionDropout\): input 'null_conditioning' is empty"),
])
def test_bad_input(steer, dropout, inputs, message):
    with pytest.raises(ValueError, match=message):
        dropout(tiny_inprocess_model(), **({"null": null_conditioning()} | inputs))
