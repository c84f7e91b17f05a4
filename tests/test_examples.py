"""The example workflows without a server: the API definitions in testbed/examples.py are well-formed and small
enough for the test bed, and the UI files in example_workflows/ are consistent with them and with themselves.
(tests/test_server.py converts the files back with the real node definitions and runs every one.)"""

from __future__ import annotations

import json
from typing import Any

import pytest

from testbed.examples import EXAMPLES, EXAMPLES_DIR

LATENTS = {"EmptyLatentImage", "EmptySD3LatentImage"}
ENGINE_PATCHES = {"SteerScaleSchedule", "SteerDynamicThreshold", "SteerCFGSkip", "SteerNegative"}
PATCHES = ENGINE_PATCHES | {"SteerPAG"}


def links_of(node: dict[str, Any]) -> list[list[Any]]:
    return [value for value in node["inputs"].values() if isinstance(value, list)]


def test_every_example_has_a_file_and_every_file_an_example() -> None:
    assert sorted(path.stem for path in EXAMPLES_DIR.glob("*.json")) == sorted(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_definition(name: str) -> None:
    """Numbered nodes, links to existing outputs, one SaveImage named after the example, a fixed 64×64 single image,
    a few steps, and Steer in the graph."""
    graph = EXAMPLES[name]()
    assert list(graph) == [str(i) for i in range(1, len(graph) + 1)]
    for node in graph.values():
        for source, slot in links_of(node):
            assert source in graph and isinstance(slot, int), node
    (save,) = (node for node in graph.values() if node["class_type"] == "SaveImage")
    assert save["inputs"]["filename_prefix"] == name
    (latent,) = (node["inputs"] for node in graph.values() if node["class_type"] in LATENTS)
    assert (latent["width"], latent["height"], latent["batch_size"]) == (64, 64, 1)
    steps = [node["inputs"]["steps"] for node in graph.values() if "steps" in node["inputs"]]
    assert steps and all(s <= 10 for s in steps)
    types = {node["class_type"] for node in graph.values()}
    assert types & (PATCHES | {"SteerGuider"})
    assert ("KSampler" in types) + ("SamplerCustomAdvanced" in types) + ("SteerSweep" in types) == 1
    if "SamplerCustomAdvanced" in types:
        assert "SteerGuider" in types


def test_every_patch_has_an_example_of_its_own_and_all_four_together() -> None:
    types = {name: {node["class_type"] for node in build().values()} for name, build in EXAMPLES.items()}
    for patch in PATCHES:
        assert any(t & PATCHES == {patch} for t in types.values()), patch
    assert ENGINE_PATCHES <= types["steer_all_four"]
    assert "KSampler" in types["steer_ksampler"] and "SteerGuider" not in types["steer_ksampler"]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_ui_file(name: str) -> None:
    """The UI file has the definition's nodes, saves under the example's name, titles its prompts, and its links
    agree with the nodes' input and output slots."""
    workflow = json.loads((EXAMPLES_DIR / f"{name}.json").read_text())
    graph = EXAMPLES[name]()
    nodes = {str(node["id"]): node for node in workflow["nodes"]}
    assert {key: node["type"] for key, node in nodes.items()} == {k: n["class_type"] for k, n in graph.items()}
    (save,) = (node for node in nodes.values() if node["type"] == "SaveImage")
    assert save["widgets_values"] == [name]
    for key, node in nodes.items():
        if node["type"] == "CLIPTextEncode":
            assert node.get("title", "").endswith("prompt"), key
    assert workflow["last_node_id"] == len(nodes) and workflow["last_link_id"] == len(workflow["links"])
    for link_id, source, slot, target, target_slot, _ in workflow["links"]:
        assert link_id in nodes[str(source)]["outputs"][slot]["links"]
        assert nodes[str(target)]["inputs"][target_slot]["link"] == link_id
    assert sum(len(links_of(node)) for node in graph.values()) == len(workflow["links"])
