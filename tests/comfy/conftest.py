"""In-process tests: a real ComfyUI imported on the CPU (before any test module imports comfy), its built-in nodes
loaded as at its start, Steer by ComfyUI's own custom-node loader, and the test bed's models."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from types import ModuleType

import pytest
import torch

from testbed.comfy import BASE, MODELS, import_comfy, load_core_nodes

import_comfy()
load_core_nodes()


@pytest.fixture(scope="session")
def steer() -> ModuleType:
    """The Steer package as ComfyUI loaded it from custom_nodes/ (its node classes are registered in `nodes`)."""
    import nodes

    pack = BASE / "custom_nodes" / "comfyui-steer"
    assert asyncio.run(nodes.load_custom_node(str(pack))), "ComfyUI failed to load Steer"
    return sys.modules[str(pack).replace(".", "_x_")]


@pytest.fixture(scope="session")
def steer_nodes(steer: ModuleType) -> dict[str, type]:
    """Steer's node classes exactly as ComfyUI registered them, by node id."""
    import nodes

    return {name: cls for name, cls in nodes.NODE_CLASS_MAPPINGS.items() if name.startswith("Steer")}


@pytest.fixture
def patch(steer_nodes):
    """Apply a Steer patch node by id with its schema defaults, overridden by keyword."""

    def apply(model, node_id: str, **inputs):
        cls = steer_nodes[node_id]
        schema = cls.define_schema()
        values = {i.id: getattr(i, "default", None) for i in schema.inputs if i.id != "model"}
        values.update(inputs)
        return cls.execute(model, **values).result[0]

    return apply


@pytest.fixture(scope="session")
def steer_guider_node(steer_nodes: dict[str, type]) -> type:
    return steer_nodes["SteerGuider"]


@dataclass(frozen=True)
class Bed:
    """A model with a positive and a negative that really differ, and the latent shape it samples."""

    model: object
    positive: list
    negative: list
    channels: int

    def latent(self, batch: int = 1, size: int = 8) -> torch.Tensor:
        return torch.zeros(batch, self.channels, size, size)


POSITIVE_PROMPT = "a red apple on a wooden table, studio light"
NEGATIVE_PROMPT = "blurry, low quality, watermark"


def _encode(clip, text: str) -> list:
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


@pytest.fixture(scope="session")
def inprocess_bed(steer: ModuleType) -> Bed:
    from testbed.models import tiny_inprocess_conds, tiny_inprocess_model

    positive, negative = tiny_inprocess_conds()
    return Bed(tiny_inprocess_model(), positive, negative, channels=4)


@pytest.fixture(scope="session")
def sd15_bed(steer: ModuleType) -> Bed:
    import comfy.sd

    checkpoint = MODELS / "checkpoints" / "steer_tiny_sd15.safetensors"
    model, clip, _vae, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint))
    return Bed(model, _encode(clip, POSITIVE_PROMPT), _encode(clip, NEGATIVE_PROMPT), channels=4)


@pytest.fixture(scope="session")
def sd3_bed(steer: ModuleType) -> Bed:
    import comfy.sd

    model = comfy.sd.load_diffusion_model(str(MODELS / "diffusion_models" / "steer_tiny_sd3.safetensors"))
    clip = comfy.sd.load_clip([str(MODELS / "text_encoders" / "steer_tiny_clip_l.safetensors")],
                              clip_type=comfy.sd.CLIPType.SD3)
    return Bed(model, _encode(clip, POSITIVE_PROMPT), _encode(clip, NEGATIVE_PROMPT), channels=16)


@pytest.fixture(params=["inprocess", "sd15", "sd3"])
def bed(request: pytest.FixtureRequest) -> Bed:
    """Each test bed model in turn: the in-process SD1.5-family model, the tiny SD1.5 checkpoint, the tiny SD3."""
    return request.getfixturevalue(f"{request.param}_bed")
