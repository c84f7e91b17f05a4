"""The real ComfyUI, started as a subprocess with Steer in its custom_nodes, driven over HTTP like the web UI does:
SteerGuider's definition, the example workflow served as a template and run end to end (pixel-identical to core
CFGGuider), and malformed prompts rejected with useful errors while the server keeps working."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from testbed import run_example
from testbed.comfy import BASE, ROOT
from testbed.examples import EXAMPLES, EXAMPLES_DIR
from testbed.server import ComfyServer
from testbed.workflow import api_to_ui, input_specs, ui_to_api

PROMPT_TIMEOUT = 300.0  # a guard against a hung server, never a speed requirement
EXAMPLE = EXAMPLES_DIR / "steer_cfg.json"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    with ComfyServer(tmp_path_factory.mktemp("comfyui")) as server:
        yield server


@pytest.fixture(scope="module")
def object_info(server: ComfyServer) -> dict[str, Any]:
    return server.object_info()


@pytest.fixture(scope="module")
def example(object_info: dict[str, Any]) -> dict[str, Any]:
    """example_workflows/steer_cfg.json as the API prompt the web UI would queue."""
    return ui_to_api(json.loads(EXAMPLE.read_text()), object_info)


@pytest.fixture(scope="module")
def steer_pixels(server: ComfyServer, example: dict[str, Any]) -> np.ndarray:
    return render(server, example)


def node_id(prompt: dict[str, Any], class_type: str) -> str:
    (key,) = (key for key, node in prompt.items() if node["class_type"] == class_type)
    return key


def edited(prompt: dict[str, Any], class_type: str, new_type: str | None = None, **inputs: Any) -> dict[str, Any]:
    """A copy of `prompt` whose `class_type` node has new inputs (None removes one) and optionally a new type."""
    prompt = copy.deepcopy(prompt)
    node = prompt[node_id(prompt, class_type)]
    node["class_type"] = new_type or class_type
    node["inputs"].update(inputs)
    node["inputs"] = {name: value for name, value in node["inputs"].items() if value is not None}
    return prompt


def render(server: ComfyServer, prompt: dict[str, Any]) -> np.ndarray:
    """Run `prompt`, which saves one image, and return its pixels."""
    (path,) = server.run(prompt, timeout=PROMPT_TIMEOUT)
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image)


def test_steer_guider_definition(object_info: dict[str, Any]) -> None:
    info = object_info["SteerGuider"]
    assert info["display_name"] and info["category"] and info["description"]
    assert info["output"] == ["GUIDER"]
    specs = {name: spec for name, spec, _ in input_specs(info)}
    assert list(specs) == ["model", "positive", "negative", "cfg"]
    assert [spec[0] for spec in specs.values()] == ["MODEL", "CONDITIONING", "CONDITIONING", "FLOAT"]
    for name, spec in specs.items():
        assert spec[1].get("tooltip"), f"input {name} has no tooltip"
    assert {k: specs["cfg"][1][k] for k in ("default", "min", "max")} == {"default": 7.0, "min": 0.0, "max": 100.0}


def test_example_is_served_as_a_template(server: ComfyServer) -> None:
    (pack,) = (path.name for path in (BASE / "custom_nodes").iterdir() if path.resolve() == ROOT)
    status, templates = server.get("/workflow_templates")
    assert status == 200 and "steer_cfg" in templates[pack]
    status, served = server.get(f"/api/workflow_templates/{pack}/steer_cfg.json")
    assert status == 200 and served == json.loads(EXAMPLE.read_text())


def test_example_is_what_testbed_examples_defines(example: dict[str, Any]) -> None:
    """The UI file converts back to its definition (after editing that, run `python -m testbed.examples`)."""
    assert {key: (node["class_type"], node["inputs"]) for key, node in example.items()} == {
        key: (node["class_type"], node["inputs"]) for key, node in EXAMPLES["steer_cfg"]().items()}


def test_widget_fed_by_a_link_round_trips(object_info: dict[str, Any]) -> None:
    """A widget input driven by another node (noise_seed from PrimitiveInt, both with a control value) survives
    api_to_ui → ui_to_api, and the UI file lists it as a linked widget slot."""
    prompt = EXAMPLES["steer_cfg"]()
    prompt["12"] = {"class_type": "PrimitiveInt", "inputs": {"value": 7}}
    prompt[node_id(prompt, "RandomNoise")]["inputs"]["noise_seed"] = ["12", 0]
    workflow = api_to_ui(prompt, object_info)
    (noise,) = (node for node in workflow["nodes"] if node["type"] == "RandomNoise")
    (slot,) = noise["inputs"]
    assert slot["widget"] == {"name": "noise_seed"} and workflow["links"][slot["link"] - 1][1:5] == [12, 0, 5, 0]
    assert {key: (node["class_type"], node["inputs"]) for key, node in ui_to_api(workflow, object_info).items()} == {
        key: (node["class_type"], node["inputs"]) for key, node in prompt.items()}


def test_example_equals_core_cfg_guider(server: ComfyServer, example: dict[str, Any],
                                        steer_pixels: np.ndarray) -> None:
    core = render(server, edited(example, "SteerGuider", "CFGGuider"))
    assert steer_pixels.shape == (64, 64, 3)
    assert steer_pixels.min() != steer_pixels.max(), "the image is constant: the comparison would prove nothing"
    np.testing.assert_array_equal(steer_pixels, core)


def test_cfg_changes_the_image(server: ComfyServer, example: dict[str, Any], steer_pixels: np.ndarray) -> None:
    other = render(server, edited(example, "SteerGuider", cfg=2.0))
    assert not np.array_equal(steer_pixels, other)


@pytest.mark.parametrize(("inputs", "input_name", "error_type", "seed"), [
    ({"cfg": "abc"}, "cfg", "invalid_input_type", 101),
    ({"cfg": 1e9}, "cfg", "value_bigger_than_max", 102),
    ({"negative": None}, "negative", "required_input_missing", 103),
], ids=["cfg-not-a-number", "cfg-too-big", "negative-missing"])
def test_malformed_prompt_is_rejected(server: ComfyServer, example: dict[str, Any], inputs: dict[str, Any],
                                      input_name: str, error_type: str, seed: int) -> None:
    status, answer = server.post_prompt(edited(example, "SteerGuider", **inputs))
    assert status == 400, answer
    guider = answer["node_errors"][node_id(example, "SteerGuider")]
    assert guider["class_type"] == "SteerGuider"
    assert any(error["type"] == error_type and error["extra_info"]["input_name"] == input_name
               for error in guider["errors"]), guider
    assert server.get("/system_stats")[0] == 200
    assert render(server, edited(example, "RandomNoise", noise_seed=seed)).shape == (64, 64, 3)


def test_run_example_prints_the_pngs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What scripts/run.sh does after setup: a fresh server runs the example and the PNG paths go to stdout."""
    assert run_example.main([str(EXAMPLE), "--output", str(tmp_path)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert Path(line).parent == tmp_path and Path(line).name.startswith("steer_cfg") and Path(line).suffix == ".png"
