"""The example workflows without a server: the definitions in testbed/examples.py are made for a real model of their
family, the test bed's swap makes them tiny, and the UI files in example_workflows/ carry the same-seed plain-CFG
comparison, the Note, the groups, the download entries, a thumbnail, and fit a 1600×1000 window readably. A training
example (kind "training") saves a LoRA instead of an image: it is checked for its own graph, groups and card.
(tests/test_server.py converts the files back with the real node definitions and runs every one; tests/test_browser.py
loads and runs them in the real front end.)"""

from __future__ import annotations

import json
from typing import Any

import pytest
from PIL import Image

from guiders.dropout import dropped
from testbed.comfy import MODELS
from testbed.examples import EXAMPLES, EXAMPLES_DIR, FAMILIES, SD15, SD35_MEDIUM, SDXL, Example
from testbed.showcase import READABLE, fit_view_scale, with_plain_cfg
from testbed.swap import TESTBED_BLOCKS, TESTBED_SIZE, TESTBED_STEPS, for_testbed, steer_branch, swapped_value
from testbed.thumbnails import DROPOUT_CELLS, discrete_sigmas, dropped_samples, per_step, percent_to_sigma, schedule

LATENTS = {"EmptyLatentImage", "EmptySD3LatentImage"}
ENGINE_PATCHES = {"SteerScaleSchedule", "SteerDynamicThreshold", "SteerCFGSkip", "SteerNegative"}
PERTURBATIONS = {"SteerPAG", "SteerSEG", "SteerSkipLayer"}
PATCHES = ENGINE_PATCHES | PERTURBATIONS
SAMPLERS = {"KSampler", "SamplerCustomAdvanced", "SteerSweep"}
IMAGE_EXAMPLES = [key for key, example in EXAMPLES.items() if example.compare]
TRAINING_EXAMPLES = [key for key, example in EXAMPLES.items() if example.training]


def links_of(node: dict[str, Any]) -> list[list[Any]]:
    return [value for value in node["inputs"].values() if isinstance(value, list)]


def defined(key: str) -> dict[str, Any]:
    example = EXAMPLES[key]
    return example.build(example.family)


def ui_file(key: str) -> dict[str, Any]:
    return json.loads(EXAMPLES[key].path.read_text())


def only(graph: dict[str, Any], class_types: set[str]) -> dict[str, Any]:
    (node,) = (node for node in graph.values() if node["class_type"] in class_types)
    return node


def test_every_example_has_a_file_and_a_thumbnail_and_nothing_else_is_there() -> None:
    expected = {name for example in EXAMPLES.values() for name in (example.path.name,
                                                                    example.path.with_suffix(".jpg").name)}
    assert {path.name for path in EXAMPLES_DIR.iterdir()} == expected


def test_titles_are_numbered_in_order_and_fit_a_card() -> None:
    """Front end 1.32 titles a custom template by its file name and lists them unordered: "Steer NN - …" keeps the
    intended order visible (and under "sort alphabetically"); ~36 characters show on a card without an ellipsis."""
    for number, example in enumerate(EXAMPLES.values(), start=1):
        assert example.title.startswith(f"Steer {number:02d} - ") and example.title.endswith(f"({example.family.name})")
        assert len(example.title) <= 40 and not set(example.title) & set('/\\:*?"<>|'), example.title


def test_kinds_are_known() -> None:
    assert {example.kind for example in EXAMPLES.values()} == {"image", "training", "grid"}


@pytest.mark.parametrize("key", list(EXAMPLES))
def test_definition_is_for_a_real_model(key: str) -> None:
    """Numbered nodes, links to existing outputs, the family's checkpoint, Steer in the graph; an image example saves
    one image named after it at the family's native size and steps, a training example one LoRA named after it."""
    example: Example = EXAMPLES[key]
    graph = defined(key)
    assert list(graph) == [str(i) for i in range(1, len(graph) + 1)]
    for node in graph.values():
        for source, slot in links_of(node):
            assert source in graph and isinstance(slot, int), node
    assert only(graph, {"CheckpointLoaderSimple"})["inputs"]["ckpt_name"] == example.family.checkpoint
    types = {node["class_type"] for node in graph.values()}
    if example.training:
        assert not types & ({"SaveImage", "PreviewImage"} | SAMPLERS | LATENTS)
        assert only(graph, {"SaveLoRA"})["inputs"]["prefix"] == f"loras/{key}"
        train = only(graph, {"TrainLoraNode"})["inputs"]
        assert graph[train["model"][0]]["class_type"] == "SteerConditionDropout" and train["steps"] >= 100
        return
    assert only(graph, {"SaveImage"})["inputs"]["filename_prefix"] == key
    latent = only(graph, LATENTS)
    assert latent["class_type"] == example.family.latent
    assert (latent["inputs"]["width"], latent["inputs"]["height"]) == (example.family.size,) * 2
    assert {node["inputs"]["steps"] for node in graph.values() if "steps" in node["inputs"]} == {example.family.steps}
    assert types & (PATCHES | {"SteerGuider"})
    assert len(types & SAMPLERS) == 1 and ("SamplerCustomAdvanced" not in types or "SteerGuider" in types)


@pytest.mark.parametrize("key", list(EXAMPLES))
def test_testbed_swap_makes_it_tiny(key: str) -> None:
    """The test bed runs the example on its own models (files that exist), at 64² and ≤ 8 steps, with perturbation
    blocks the tiny model has (testbed/swap.py); nothing else changes."""
    graph = defined(key)
    tiny = for_testbed(graph)
    assert (MODELS / "checkpoints" / only(tiny, {"CheckpointLoaderSimple"})["inputs"]["ckpt_name"]).is_file()
    if not EXAMPLES[key].training:
        latent = only(tiny, LATENTS)["inputs"]
        assert (latent["width"], latent["height"], latent["batch_size"]) == (TESTBED_SIZE, TESTBED_SIZE, 1)
    steps = [node["inputs"]["steps"] for node in tiny.values() if isinstance(node["inputs"].get("steps"), int)]
    assert steps and all(0 < count <= TESTBED_STEPS for count in steps)
    changed = {(key, name) for key in graph for name, value in graph[key]["inputs"].items()
               if tiny[key]["inputs"][name] != value}
    assert {name for _, name in changed} <= {"ckpt_name", "width", "height", "steps", "blocks"}
    family = EXAMPLES[key].family
    for node_key, node in tiny.items():
        if node["class_type"] in PERTURBATIONS:
            assert node["inputs"]["blocks"] == (family.testbed_blocks or graph[node_key]["inputs"]["blocks"])


def test_blocks_swap_only_where_the_tiny_model_lacks_them() -> None:
    """SD1.5 and SDXL examples keep their blocks (the tiny UNet has middle.0, what "auto" means there); the SD3.5
    families' go to the tiny MMDiT's one block; a checkpoint of the user's own is left alone."""
    assert TESTBED_BLOCKS == {family.checkpoint: "double.0" for family in FAMILIES if family.flow}
    assert SD35_MEDIUM.checkpoint in TESTBED_BLOCKS and SDXL.checkpoint not in TESTBED_BLOCKS
    own = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "mine.safetensors"}},
           "2": {"class_type": "SteerSkipLayer", "inputs": {"model": ["1", 0], "blocks": "double.7-9"}}}
    assert for_testbed(own) == own


def test_swapped_value_leaves_other_values_alone() -> None:
    assert swapped_value("ckpt_name", "my_own_model.safetensors") == "my_own_model.safetensors"
    assert swapped_value("steps", 4) == 4 and swapped_value("width", 2048) == TESTBED_SIZE
    assert swapped_value("cfg", 12.0) == 12.0 and swapped_value("width", ["3", 0]) == ["3", 0]
    assert {family.testbed_checkpoint for family in FAMILIES} <= {
        path.name for path in (MODELS / "checkpoints").iterdir()}


def test_every_patch_has_an_example_of_its_own_and_all_four_together() -> None:
    types = {key: {node["class_type"] for node in defined(key).values()} for key in EXAMPLES}
    for patch in PATCHES:
        assert any(t & PATCHES == {patch} for t in types.values()), patch
    assert ENGINE_PATCHES <= types["steer_all_four"]
    assert "KSampler" in types["steer_ksampler"] and "SteerGuider" not in types["steer_ksampler"]
    assert any("SteerConditionDropout" in types[key] for key in TRAINING_EXAMPLES)
    assert {example.family for example in EXAMPLES.values()} == set(FAMILIES)


@pytest.mark.parametrize("key", IMAGE_EXAMPLES)
def test_plain_cfg_comparison_shares_seed_latent_and_prompts(key: str) -> None:
    """The added branch samples the unpatched model from the same noise, latent and prompts (cfg and sampler as the
    example says) and previews its image; the Steer side keeps its ids and is what steer_branch returns."""
    example = EXAMPLES[key]
    steer = defined(key)
    graph = with_plain_cfg(steer, example.plain)
    assert {k: graph[k] for k in steer} == steer and steer_branch(graph) == steer
    added = {k: node for k, node in graph.items() if k not in steer}
    plain, original = only(added, SAMPLERS), only(steer, SAMPLERS)
    checkpoint = next(k for k, node in steer.items() if node["class_type"] == "CheckpointLoaderSimple")
    assert only(added, {"PreviewImage"})["inputs"]["images"][0] in added
    if plain["class_type"] == "KSampler":
        assert plain["inputs"]["model"] == [checkpoint, 0]
        for name in ("seed", "steps", "scheduler", "positive", "negative", "latent_image", "denoise"):
            assert plain["inputs"][name] == original["inputs"][name], name
        assert plain["inputs"]["cfg"] == example.plain.get("cfg", original["inputs"]["cfg"])
    else:
        guider = graph[plain["inputs"]["guider"][0]]
        assert guider["class_type"] == "CFGGuider" and guider["inputs"]["model"] == [checkpoint, 0]
        steer_guider = steer[original["inputs"]["guider"][0]]["inputs"]
        assert guider["inputs"]["positive"] == steer_guider["positive"]
        assert guider["inputs"]["cfg"] == example.plain.get("cfg", steer_guider["cfg"])
        for name in ("noise", "sigmas", "latent_image"):
            assert plain["inputs"][name] == original["inputs"][name], name


def test_sweep_compares_in_its_own_grid() -> None:
    """The sweep example has no added plain-CFG side: its grid has a row without the Steer patches, same seed."""
    assert [key for key, example in EXAMPLES.items() if example.kind == "grid"] == ["steer_sweep"]
    sweep = only(defined("steer_sweep"), {"SteerSweep"})["inputs"]
    assert sweep["compare_without_steer"] is True and len(sweep["scales"].split(",")) > 1
    assert {group["title"] for group in ui_file("steer_sweep")["groups"]} == {
        "Model (SD1.5), prompts, size", "Steer", "With Steer"}


@pytest.mark.parametrize("key", list(EXAMPLES))
def test_ui_file_is_made_for_people(key: str) -> None:
    """A Note naming the model with its link, the loader's download entry, groups around the parts, both images (a
    training example: no image, the trainer and SaveLoRA in their group), and Fit View at 1600×1000 at readable zoom
    (tests/test_browser.py measures it in the real front end)."""
    example = EXAMPLES[key]
    workflow = ui_file(key)
    nodes = {node["id"]: node for node in workflow["nodes"]}
    (note,) = (node for node in nodes.values() if node["type"] == "MarkdownNote")
    assert example.family.checkpoint in note["widgets_values"][0] and "**Try:**" in note["widgets_values"][0]
    (loader,) = (node for node in nodes.values() if node["type"] == "CheckpointLoaderSimple")
    assert loader["properties"]["models"] == [{"name": example.family.checkpoint, "url": example.family.url,
                                               "directory": "checkpoints"}]
    assert loader["widgets_values"] == [example.family.checkpoint]
    groups = {group["title"]: group["bounding"] for group in workflow["groups"]}
    if example.training:
        assert not {"Plain CFG, same seed", "With Steer"} & set(groups)
        assert not any(node["type"] in ("SaveImage", "PreviewImage") for node in nodes.values())
        shown = (("Training, saves a LoRA", "TrainLoraNode"), ("Training, saves a LoRA", "SaveLoRA"),
                 ("Steer", "SteerConditionDropout"), (f"Model ({example.family.name}), dataset", "MakeTrainingDataset"))
    else:  # a sweep's grid compares by itself: no plain-CFG side
        shown = (("Plain CFG, same seed", "PreviewImage"),) * example.compare + (("With Steer", "SaveImage"),)
    for title, node_type in shown:
        (node,) = (node for node in nodes.values() if node["type"] == node_type)
        x, y, w, h = groups[title]
        assert x <= node["pos"][0] and node["pos"][0] + node["size"][0] <= x + w, title
        assert y <= node["pos"][1] - 30 and node["pos"][1] + node["size"][1] <= y + h, title
    assert fit_view_scale(workflow) >= READABLE + 0.02
    assert workflow["last_node_id"] == max(nodes) and workflow["last_link_id"] == len(workflow["links"])
    for link_id, source, slot, target, target_slot, _ in workflow["links"]:
        assert link_id in nodes[source]["outputs"][slot]["links"]
        assert nodes[target]["inputs"][target_slot]["link"] == link_id


def test_thumbnails_are_512_jpegs() -> None:
    for example in EXAMPLES.values():
        with Image.open(example.path.with_suffix(".jpg")) as image:
            assert (image.format, image.size) == ("JPEG", (512, 512))


def test_thumbnail_chart_follows_the_settings() -> None:
    """The card's numbers come from Steer's own math: the schedule's end points, the sigma interval, PAG rows."""
    schedule = per_step(defined("steer_scale_schedule"), {})
    assert (schedule["scale"][0], schedule["scale"][-1], schedule["plain"][0]) == (12.0, 4.0, 12.0)
    skip = per_step(defined("steer_cfg_skip"), {})
    assert skip["guided"] == [0.28 < sigma <= 5.42 for sigma in discrete_sigmas(SDXL.steps)]
    assert 0 < sum(skip["guided"]) < SDXL.steps and skip["rows"] == [2 if g else 1 for g in skip["guided"]]
    both = per_step(defined("steer_pag_cfg_skip"), {})
    assert both["rows"][0] == 2 and both["rows"][-1] == 2 and 3 in both["rows"]
    assert both["perturbed"] == [["PAG"] if sigma >= percent_to_sigma(0.7) else [] for sigma in discrete_sigmas(25)]
    sweep = per_step(defined("steer_sweep"), {})
    assert sweep["scale"] == [16.0] * SD15.steps and all(sweep["guided"])
    sigmas = discrete_sigmas(20)
    assert sigmas == sorted(sigmas, reverse=True) and 14.0 < sigmas[0] < 15.0 and sigmas[-1] < 0.05


@pytest.mark.parametrize(("key", "name"), [("steer_pag", "PAG"), ("steer_seg", "SEG"),
                                           ("steer_skip_layer", "skip-layer")])
def test_perturbation_cards_show_the_steps_each_acts_on(key: str, name: str) -> None:
    """PAG and SEG act on every step (window 0–1), skip-layer only inside 1 %–15 % of SD3.5's flow schedule (σ of
    ComfyUI's percent_to_sigma, sgm_uniform steps): one more model row on those steps and only there."""
    example = EXAMPLES[key]
    data = per_step(defined(key), {}, example.family.flow)
    steps = schedule(example.family.steps, example.family.flow)
    if key == "steer_skip_layer":
        high, low = percent_to_sigma(0.01, flow=True), percent_to_sigma(0.15, flow=True)
        expected = [low <= sigma <= high for sigma, _ in steps]
        assert 0 < sum(expected) < len(steps) // 4 and not expected[0]  # σ 1 lies before 1 % of the run
    else:
        expected = [True] * len(steps)
    assert data["perturbed"] == [[name] if on else [] for on in expected]
    assert data["rows"] == [2 + on for on in expected]


@pytest.mark.parametrize("key", TRAINING_EXAMPLES)
def test_training_card_shows_the_dropout_draws(key: str) -> None:
    """The training card's grid is Steer's own draw for the example's rate and seed: sample s of step t dropped as
    guiders.dropout decides (batch 1: one sample per step), some of them and far from all at rate 0.1."""
    graph = defined(key)
    (dropout,) = (node["inputs"] for node in graph.values() if node["class_type"] == "SteerConditionDropout")
    samples = dropped_samples(graph)
    assert len(samples) == DROPOUT_CELLS
    assert samples == [bool(dropped(dropout["seed"], step, 1, dropout["rate"])[0]) for step in range(DROPOUT_CELLS)]
    assert 0 < sum(samples) < DROPOUT_CELLS * 3 * dropout["rate"]
