"""Validation as the web UI meets it, through the real server: inputs fed by links (ComfyUI 0.3.75 hands
`validate_inputs` None for them) are accepted at queue time and checked when their value arrives; every mistake that
does not need the model is refused when the prompt is queued (HTTP 400), naming the node as the user sees it (display
name and id), the input and what is accepted."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from testbed.server import ComfyServer, PromptError

PROMPT_TIMEOUT = 300.0  # a guard against a hung server, never a speed requirement
LABELS = {"SteerScaleSchedule": "Steer Scale Schedule (SteerScaleSchedule)",
          "SteerCFGSkip": "Steer CFG Skip (SteerCFGSkip)",
          "SteerPAG": "Steer Perturbed-Attention Guidance (SteerPAG)"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    with ComfyServer(tmp_path_factory.mktemp("comfyui")) as server:
        yield server


def graph(seed: int, **steer: dict[str, Any]) -> dict[str, Any]:
    """Tiny SD1.5 checkpoint → SteerScaleSchedule → SteerCFGSkip → SteerPAG → KSampler (4 steps, 64×64) → SaveImage,
    with String / Float primitives "10", "11", "12" to link from; `steer` overrides a Steer node's inputs by id."""
    nodes: dict[str, Any] = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "steer_tiny_sd15.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse at sunset", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, watermark", "clip": ["1", 1]}},
        "4": {"class_type": "SteerScaleSchedule", "inputs": {
            "model": ["1", 0], "curve": "linear_down", "cfg_min": 2.0, "switch_at": 0.5, "exponent": 2.0,
            "custom": ""}},
        "5": {"class_type": "SteerCFGSkip", "inputs": {
            "model": ["4", 0], "mode": "percent", "start_percent": 0.0, "end_percent": 1.0, "sigma_high": 5.42,
            "sigma_low": 0.28, "threshold": 0.99}},
        "6": {"class_type": "SteerPAG", "inputs": {
            "model": ["5", 0], "scale": 2.0, "blocks": "middle.0", "start_percent": 0.0, "end_percent": 1.0}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "8": {"class_type": "KSampler", "inputs": {
            "model": ["6", 0], "seed": seed, "steps": 4, "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["7", 0], "denoise": 1.0}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "13": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "validation"}},
        "10": {"class_type": "PrimitiveString", "inputs": {"value": "9, 6, 3"}},
        "11": {"class_type": "PrimitiveString", "inputs": {"value": "middle.0"}},
        "12": {"class_type": "PrimitiveFloat", "inputs": {"value": 0.5}},
    }
    ids = {"SteerScaleSchedule": "4", "SteerCFGSkip": "5", "SteerPAG": "6"}
    nodes = copy.deepcopy(nodes)
    for class_type, inputs in steer.items():
        nodes[ids[class_type]]["inputs"].update(inputs)
    return nodes


def test_linked_strings_reach_the_nodes(server: ComfyServer) -> None:
    prompt = graph(201, SteerScaleSchedule={"curve": "custom", "custom": ["10", 0]}, SteerPAG={"blocks": ["11", 0]},
                   SteerCFGSkip={"start_percent": ["12", 0]})
    assert len(server.run(prompt, timeout=PROMPT_TIMEOUT)) == 1


@pytest.mark.parametrize(("node", "primitive", "value", "linked", "expected"), [
    ("SteerScaleSchedule", "10", "12, abc", {"curve": "custom", "custom": ["10", 0]}, "input 'custom': value 2"),
    ("SteerPAG", "11", "middle.0, mid0", {"blocks": ["11", 0]}, "input 'blocks': block 2 ('mid0')"),
    ("SteerPAG", "12", 0.9, {"start_percent": ["12", 0], "end_percent": 0.2}, "input 'start_percent' (0.9)"),
    ("SteerCFGSkip", "12", 7.0, {"end_percent": ["12", 0]}, "input 'end_percent' (7.0) is out of range"),
], ids=["custom", "blocks", "pag-window", "skip-range"])
def test_a_bad_linked_value_is_refused_when_it_arrives(server: ComfyServer, node: str, primitive: str, value: Any,
                                                      linked: dict[str, Any], expected: str) -> None:
    prompt = graph(202, **{node: linked})
    prompt[primitive]["inputs"]["value"] = value
    with pytest.raises(PromptError) as failure:
        server.run(prompt, timeout=PROMPT_TIMEOUT)
    (error,) = (data for kind, data in failure.value.details["messages"] if kind == "execution_error")
    assert error["node_type"] == node
    assert f"{LABELS[node]}: {expected}" in error["exception_message"], error["exception_message"]
    assert "8" not in error["executed"]  # refused before the sampler


@pytest.mark.parametrize(("node", "inputs", "input_name", "expected"), [
    ("SteerCFGSkip", {"start_percent": 0.8, "end_percent": 0.2}, "start_percent",
     "input 'start_percent' (0.8) must not exceed end_percent (0.2); both lie in 0.0–1.0"),
    ("SteerCFGSkip", {"mode": "sigma", "sigma_high": 1.0, "sigma_low": 2.0}, "sigma_low",
     "input 'sigma_low' (2.0) must be below sigma_high (1.0)"),
    ("SteerCFGSkip", {"start_percent": float("nan")}, "start_percent", "input 'start_percent' is NaN"),
    ("SteerPAG", {"start_percent": 0.9, "end_percent": 0.1}, "start_percent", "input 'start_percent' (0.9)"),
    ("SteerPAG", {"blocks": "mid0"}, "blocks", "input 'blocks': block 1 ('mid0')"),
    ("SteerScaleSchedule", {"curve": "custom", "custom": "1_000"}, "custom", "input 'custom': value 1 ('1_000')"),
    ("SteerScaleSchedule", {"curve": "custom", "custom": "8, 1e-400"}, "custom",
     "input 'custom': value 2 ('1e-400') is too small"),
    ("SteerScaleSchedule", {"curve": "custom", "custom": " "}, "custom",
     "input 'custom': curve is 'custom' but no scales"),
], ids=["window", "sigmas", "nan", "pag-window", "blocks", "underscore", "underflow", "empty-custom"])
def test_model_free_mistakes_are_refused_when_queued(server: ComfyServer, node: str, inputs: dict[str, Any],
                                                     input_name: str, expected: str) -> None:
    status, answer = server.post_prompt(graph(203, **{node: inputs}))
    assert status == 400, answer
    errors = answer["node_errors"][{"SteerScaleSchedule": "4", "SteerCFGSkip": "5", "SteerPAG": "6"}[node]]["errors"]
    assert any(error["type"] == "custom_validation_failed" and error["extra_info"]["input_name"] == input_name
               and f"{LABELS[node]}: {expected}" in error["details"] for error in errors), errors
