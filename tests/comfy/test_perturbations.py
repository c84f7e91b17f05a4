"""Perturbation guidance on every architecture × kind in the real ComfyUI: Steer's perturbed branch, computed in the
step's one batched call, equals the same perturbation run as a separate model call by an independent reference
(testbed/perturbations.py), through KSampler and SamplerCustomAdvanced alike; each call holds exactly the active
branches' rows; and the perturbation measurably changes the result."""

from __future__ import annotations

import math

import pytest
import torch

from testbed.families import load_family
from testbed.perturbations import PerturbedReference
from testbed.sampling import custom_advanced, ksampler, model_calls

STEPS = 3
NODES = {"pag": "SteerPAG", "seg": "SteerSEG", "skip": "SteerSkipLayer"}
PATCH = {"sd3": (2, 2), "flux": (2, 2), "wan": (1, 2, 2)}
# (family, kind, blocks, SEG σ): every kind on every block kind each architecture has.
CASES = [
    ("sd15", "pag", "middle.0", None), ("sd15", "seg", "middle.0", math.inf), ("sd15", "seg", "input.1", 1.0),
    ("sdxl", "pag", "middle.0", None), ("sdxl", "seg", "middle.0", 2.0),
    ("sd3", "pag", "joint.0", None), ("sd3", "seg", "double.0", 1.0), ("sd3", "skip", "double.0", None),
    ("flux", "pag", "double.0", None), ("flux", "pag", "single.0", None), ("flux", "seg", "double.0", math.inf),
    ("flux", "seg", "single.0", 1.0), ("flux", "skip", "double.0", None), ("flux", "skip", "single.0", None),
    ("flux", "skip", "double.0, single.0", None),
    ("wan", "pag", "double.0", None), ("wan", "seg", "double.0", 1.0), ("wan", "skip", "double.0", None),
]
CFG = 3.0
SCALE = 2.0


def perturbed_model(steer_nodes, family, kind: str, blocks: str, sigma: float | None, **extra):
    cls = steer_nodes[NODES[kind]]
    values = {spec.id: spec.default for spec in cls.define_schema().inputs if spec.id != "model"}
    values |= {"scale": SCALE, "blocks": blocks, "start_percent": 0.0, "end_percent": 1.0} | extra
    if kind == "seg":
        values["blur_sigma"] = -1.0 if sigma == math.inf else sigma
    return cls.execute(family.model, **values).result[0]


@pytest.mark.parametrize(("name", "kind", "blocks", "sigma"), CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2].replace(', ', '+')}" for c in CASES])
def test_batched_branch_equals_a_separate_call(steer_nodes, name, kind, blocks, sigma):
    from guiders.perturbation import parse_blocks

    family = load_family(name)
    model = perturbed_model(steer_nodes, family, kind, blocks, sigma)
    latent = family.latent(2)
    with model_calls(family.model) as rows:
        via_ksampler = ksampler(model, family.positive, family.negative, CFG, "euler", latent, steps=STEPS)
    assert rows == [3 * 2] * STEPS  # cond, uncond and the perturbed cond of both images, in one call per step
    guider = steer_nodes["SteerGuider"].execute(model, family.positive, family.negative, CFG).result[0]
    assert torch.equal(custom_advanced(guider, "euler", latent, steps=STEPS), via_ksampler)
    reference = PerturbedReference(family, CFG, SCALE, kind, parse_blocks(blocks), PATCH.get(name, (2, 2)),
                                   sigma or math.inf)
    expected = custom_advanced(reference, "euler", latent, steps=STEPS)
    assert torch.isfinite(via_ksampler).all()
    # One batched call against the reference's two: batches of different sizes round differently.
    assert ((via_ksampler - expected).norm() / expected.norm()).item() < 1e-4
    plain = ksampler(family.model, family.positive, family.negative, CFG, "euler", latent, steps=STEPS)
    assert ((via_ksampler - plain).norm() / plain.norm()).item() > 1e-3
