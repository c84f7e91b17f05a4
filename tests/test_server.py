"""The real ComfyUI, started once for the module as a subprocess with Steer in its custom_nodes, driven over HTTP like
the web UI does: the nodes' definitions in /object_info, every example workflow served as a template and run end to
end (steer_cfg pixel-identical to core CFGGuider, KSampler pixel-identical to SteerGuider with the same patches), and
malformed prompts rejected with useful errors while the server keeps working."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

from testbed import run_example
from testbed.comfy import BASE, ROOT
from testbed.examples import EXAMPLES, EXAMPLES_DIR, cannot_load_here, write_dataset
from testbed.server import ComfyServer
from testbed.swap import for_testbed, steer_branch
from testbed.workflow import api_to_ui, default_value, input_specs, is_widget, ui_to_api

PROMPT_TIMEOUT = 300.0  # a guard against a hung server, never a speed requirement
EXAMPLE = EXAMPLES["steer_cfg"].path
EXAMPLE_FILES = sorted(EXAMPLES_DIR.glob("*.json"))
FILES = {example.path: key for key, example in EXAMPLES.items()}
TRAINING_EXAMPLES = {key for key, example in EXAMPLES.items() if example.training}  # they save a LoRA, not an image
STEER_NODES = ("SteerGuider", "SteerScaleSchedule", "SteerDynamicThreshold", "SteerCFGSkip", "SteerNegative")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    write_dataset(BASE / "input")  # the training example's image folder
    with ComfyServer(tmp_path_factory.mktemp("comfyui")) as server:
        yield server


@pytest.fixture(scope="module")
def object_info(server: ComfyServer) -> dict[str, Any]:
    return server.object_info()


@pytest.fixture(scope="module")
def pack() -> str:
    """Steer's folder name in the test bed's custom_nodes/."""
    (name,) = (path.name for path in (BASE / "custom_nodes").iterdir() if path.resolve() == ROOT)
    return name


@pytest.fixture(scope="module")
def workflows(object_info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The Steer side of every file in example_workflows/ as the API prompt the web UI would queue, by example key,
    swapped onto the test bed's tiny models (64², 8 steps)."""
    return {FILES[path]: for_testbed(steer_branch(ui_to_api(json.loads(path.read_text()), object_info)))
            for path in EXAMPLE_FILES}


@pytest.fixture(scope="module")
def example(workflows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """example_workflows/steer_cfg.json as the API prompt the web UI would queue."""
    return workflows["steer_cfg"]


@pytest.fixture(scope="module")
def example_pixels(server: ComfyServer, workflows: dict[str, dict[str, Any]]) -> Callable[[str], np.ndarray]:
    """The image of an example workflow, rendered once per module (a re-posted prompt would only hit the cache)."""
    rendered: dict[str, np.ndarray] = {}

    def pixels(name: str) -> np.ndarray:
        if name not in rendered:
            rendered[name] = render(server, workflows[name], prefix=name)
        return rendered[name]

    return pixels


@pytest.fixture(scope="module")
def steer_pixels(example_pixels: Callable[[str], np.ndarray]) -> np.ndarray:
    return example_pixels("steer_cfg")


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


def render(server: ComfyServer, prompt: dict[str, Any], prefix: str | None = None) -> np.ndarray:
    """Run `prompt`, which saves one image (named `prefix`… when given), and return its pixels."""
    (path,) = server.run(prompt, timeout=PROMPT_TIMEOUT)
    assert prefix is None or path.name.startswith(prefix), path
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image)


def as_custom_sampler(prompt: dict[str, Any]) -> dict[str, Any]:
    """`prompt` with its KSampler replaced by SteerGuider + RandomNoise + KSamplerSelect + BasicScheduler +
    SamplerCustomAdvanced with the same model, conds, cfg, seed, steps, sampler, scheduler and denoise."""
    prompt = copy.deepcopy(prompt)
    key = node_id(prompt, "KSampler")
    ks = prompt[key]["inputs"]
    first = max(map(int, prompt)) + 1
    guider, noise, sampler, sigmas = (str(first + i) for i in range(4))
    prompt[guider] = {"class_type": "SteerGuider", "inputs": {
        "model": ks["model"], "positive": ks["positive"], "negative": ks["negative"], "cfg": ks["cfg"]}}
    prompt[noise] = {"class_type": "RandomNoise", "inputs": {"noise_seed": ks["seed"]}}
    prompt[sampler] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": ks["sampler_name"]}}
    prompt[sigmas] = {"class_type": "BasicScheduler", "inputs": {
        "model": ks["model"], "scheduler": ks["scheduler"], "steps": ks["steps"], "denoise": ks["denoise"]}}
    prompt[key] = {"class_type": "SamplerCustomAdvanced", "inputs": {  # output 0 is the latent, as KSampler's
        "noise": [noise, 0], "guider": [guider, 0], "sampler": [sampler, 0], "sigmas": [sigmas, 0],
        "latent_image": ks["latent_image"]}}
    return prompt


def as_ksampler(prompt: dict[str, Any]) -> dict[str, Any]:
    """`prompt` with SteerGuider + SamplerCustomAdvanced (and its noise, sampler and sigmas nodes) replaced by one
    KSampler with the same settings."""
    prompt = copy.deepcopy(prompt)
    key = node_id(prompt, "SamplerCustomAdvanced")
    inputs = prompt[key]["inputs"]
    guider, noise, sampler, sigmas = (prompt.pop(inputs[name][0])["inputs"]
                                      for name in ("guider", "noise", "sampler", "sigmas"))
    assert guider["model"] == sigmas["model"]
    prompt[key] = {"class_type": "KSampler", "inputs": {
        "model": guider["model"], "seed": noise["noise_seed"], "steps": sigmas["steps"], "cfg": guider["cfg"],
        "sampler_name": sampler["sampler_name"], "scheduler": sigmas["scheduler"], "positive": guider["positive"],
        "negative": guider["negative"], "latent_image": inputs["latent_image"], "denoise": sigmas["denoise"]}}
    return prompt


def without_patches(prompt: dict[str, Any]) -> dict[str, Any]:
    """`prompt` with every Steer MODEL→MODEL patch removed (its consumers take the patch's own input model)."""
    prompt = copy.deepcopy(prompt)
    patches = {key for key, node in prompt.items()
               if node["class_type"].startswith("Steer") and node["class_type"] != "SteerGuider"}

    def unpatched(value: Any) -> Any:
        while isinstance(value, list) and value[0] in patches:
            value = prompt[value[0]]["inputs"]["model"]
        return value

    for node in prompt.values():
        node["inputs"] = {name: unpatched(value) for name, value in node["inputs"].items()}
    return {key: node for key, node in prompt.items() if key not in patches}


def assert_a_real_image(pixels: np.ndarray) -> None:
    """A 64×64 RGB image with finite values that is not a single colour (as NaN latents or a dead VAE give)."""
    assert pixels.shape == (64, 64, 3)
    assert np.isfinite(pixels.astype(np.float64)).all()
    assert pixels.min() != pixels.max(), "the image is constant"
    assert pixels.astype(np.float64).std() > 1.0, "the image is nearly constant"


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


def test_steer_node_definitions(object_info: dict[str, Any], pack: str) -> None:
    """Every node of the pack (at least the five below) is named Steer…, sits under sampling/steer, and explains
    itself: a display name, a description, and a tooltip on every input and output."""
    ours = {name: info for name, info in object_info.items() if info.get("python_module") == f"custom_nodes.{pack}"}
    assert set(STEER_NODES) <= set(ours), sorted(ours)
    for name, info in ours.items():
        assert name.startswith("Steer"), name
        assert info["category"] == "sampling/steer" or info["category"].startswith("sampling/steer/"), name
        assert info["display_name"].startswith("Steer") and info["description"], name
        for input_name, spec, _ in input_specs(info):
            assert len(spec) > 1 and spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
        assert len(info["output_tooltips"]) == len(info["output"]) and all(info["output_tooltips"]), name
    for name in STEER_NODES[1:]:  # the patches: MODEL in, MODEL out, usable with any sampler
        first_input, spec, _ = next(input_specs(ours[name]))
        assert (first_input, spec[0], ours[name]["output"]) == ("model", "MODEL", ["MODEL"]), name


def test_example_files_are_the_defined_examples() -> None:
    """example_workflows/ holds exactly what testbed/examples.py defines (run `python -m testbed.examples`)."""
    assert set(EXAMPLE_FILES) == set(FILES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_is_what_testbed_examples_defines(workflows: dict[str, dict[str, Any]], object_info: dict[str, Any],
                                                  name: str) -> None:
    """The UI file's Steer side converts back with ui_to_api to its definition (after editing that, run
    `python -m testbed.examples`); on a newer ComfyUI, widgets a node gained since the file was saved hold their
    defaults, as the front end gives them."""
    if reason := cannot_load_here(name, object_info):
        pytest.skip(reason)
    example = EXAMPLES[name]
    defined = for_testbed(example.build(example.family))
    loaded = copy.deepcopy(workflows[name])
    for key, node in loaded.items():
        for input_name, spec, _ in input_specs(object_info[node["class_type"]]):
            gained = key in defined and input_name not in defined[key]["inputs"] and is_widget(spec)
            if gained and input_name in node["inputs"] and node["inputs"][input_name] == default_value(spec):
                del node["inputs"][input_name]
    assert {key: (node["class_type"], node["inputs"]) for key, node in loaded.items()} == {
        key: (node["class_type"], node["inputs"]) for key, node in defined.items()}


def test_examples_are_served_as_templates(server: ComfyServer, pack: str) -> None:
    status, templates = server.get("/workflow_templates")
    assert status == 200 and sorted(templates[pack]) == [path.stem for path in EXAMPLE_FILES]
    for path in EXAMPLE_FILES:
        status, served = server.get(f"/api/workflow_templates/{pack}/{quote(path.name)}")
        assert status == 200 and served == json.loads(path.read_text()), path.name


@pytest.mark.parametrize("name", sorted(set(EXAMPLES) - TRAINING_EXAMPLES))
def test_example_runs(example_pixels: Callable[[str], np.ndarray], name: str) -> None:
    """Queued as the web UI would, the example saves one PNG (named after it) showing a real image (for a sweep's
    grid: every cell)."""
    if name == "steer_sweep":
        for cell in sweep_cells(example_pixels(name), rows=2, columns=4):
            assert_a_real_image(cell)
    else:
        assert_a_real_image(example_pixels(name))


@pytest.mark.parametrize("name", sorted(TRAINING_EXAMPLES))
def test_training_example_runs(server: ComfyServer, workflows: dict[str, dict[str, Any]], object_info: dict[str, Any],
                               name: str) -> None:
    """Queued as the web UI would, the training example (TrainLoraNode loaded by ComfyUI itself, the dataset
    encoded by MakeTrainingDataset) saves a LoRA file named after it, with finite weights that training moved off
    their zero init."""
    if reason := cannot_load_here(name, object_info):
        pytest.skip(reason)
    from safetensors.torch import load_file

    loras = server.output_dir / "loras"
    before = set(loras.glob(f"{name}_*.safetensors")) if loras.exists() else set()
    assert server.run(workflows[name], timeout=PROMPT_TIMEOUT) == []
    (saved,) = set(loras.glob(f"{name}_*.safetensors")) - before
    weights = load_file(str(saved))
    assert weights and all(bool(tensor.float().isfinite().all()) for tensor in weights.values())
    assert any(bool(tensor.float().abs().sum() > 0) for name, tensor in weights.items() if "up" in name)


@pytest.mark.parametrize("name", ["steer_sd3_flow", "steer_ksampler", "steer_all_four"])  # SD3 right after its run
def test_ksampler_equals_steer_guider(server: ComfyServer, workflows: dict[str, dict[str, Any]],
                                      example_pixels: Callable[[str], np.ndarray], name: str) -> None:
    """The same patched model, seed, steps, sampler and scheduler give the same pixels through KSampler and through
    SteerGuider + SamplerCustomAdvanced (BasicScheduler): both doors run the same engine."""
    prompt = workflows[name]
    other = as_ksampler(prompt) if "SamplerCustomAdvanced" in {n["class_type"] for n in prompt.values()} \
        else as_custom_sampler(prompt)
    pixels = example_pixels(name)
    assert_a_real_image(pixels)
    np.testing.assert_array_equal(render(server, other), pixels)


def test_patches_change_the_image(server: ComfyServer, workflows: dict[str, dict[str, Any]],
                                  example_pixels: Callable[[str], np.ndarray]) -> None:
    """Without its four patches steer_all_four gives another image, so the equalities above compare patched runs."""
    plain = without_patches(workflows["steer_all_four"])
    assert {n["class_type"] for n in plain.values()} & set(STEER_NODES) == {"SteerGuider"}
    assert not np.array_equal(render(server, plain), example_pixels("steer_all_four"))


def test_widget_fed_by_a_link_round_trips(object_info: dict[str, Any]) -> None:
    """A widget input driven by another node (noise_seed from PrimitiveInt, both with a control value) survives
    api_to_ui → ui_to_api, and the UI file lists it as a linked widget slot."""
    prompt = EXAMPLES["steer_cfg"].build(EXAMPLES["steer_cfg"].family)
    prompt["12"] = {"class_type": "PrimitiveInt", "inputs": {"value": 7}}
    prompt[node_id(prompt, "RandomNoise")]["inputs"]["noise_seed"] = ["12", 0]
    workflow = api_to_ui(prompt, object_info)
    (noise,) = (node for node in workflow["nodes"] if node["type"] == "RandomNoise")
    (slot,) = noise["inputs"]
    noise_id = int(node_id(prompt, "RandomNoise"))
    assert slot["widget"] == {"name": "noise_seed"} and workflow["links"][slot["link"] - 1][1:5] == [12, 0, noise_id, 0]
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


def test_bad_custom_schedule_is_rejected_with_its_position(server: ComfyServer,
                                                            workflows: dict[str, dict[str, Any]]) -> None:
    """A typo in SteerScaleSchedule's per-step list is refused at validation (HTTP 400, nothing runs), naming the
    node, the `custom` input, and which value is wrong."""
    prompt = edited(workflows["steer_scale_schedule"], "SteerScaleSchedule", curve="custom", custom="12, abc")
    status, answer = server.post_prompt(prompt)
    assert status == 400, answer
    node = answer["node_errors"][node_id(prompt, "SteerScaleSchedule")]
    assert node["class_type"] == "SteerScaleSchedule"
    (error,) = (error for error in node["errors"] if error["extra_info"].get("input_name") == "custom")
    assert error["type"] == "custom_validation_failed"
    assert "value 2" in error["details"] and "'abc'" in error["details"], error
    assert server.get("/system_stats")[0] == 200


def test_cfg_skip_interval_backwards_is_refused_when_queued(server: ComfyServer,
                                                           workflows: dict[str, dict[str, Any]]) -> None:
    """start_percent 0.8 > end_percent 0.2 (each lies in 0–1) is refused at validation (HTTP 400, nothing runs),
    naming the node as the user sees it and start_percent; the server goes on running prompts."""
    prompt = edited(workflows["steer_cfg_skip"], "SteerCFGSkip", mode="percent", start_percent=0.8, end_percent=0.2)
    status, answer = server.post_prompt(prompt)
    assert status == 400, answer
    errors = answer["node_errors"][node_id(prompt, "SteerCFGSkip")]["errors"]
    assert any("Steer CFG Skip (SteerCFGSkip): input 'start_percent'" in error["details"] for error in errors), errors
    assert server.get("/system_stats")[0] == 200
    assert_a_real_image(render(server, edited(workflows["steer_cfg_skip"], "RandomNoise", noise_seed=104)))


def test_run_example_prints_the_pngs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What scripts/run.sh does after setup: a fresh server runs the example on the tiny models and the PNG paths go
    to stdout (the saved Steer image in --output; the plain-CFG preview went to ComfyUI's temp folder, which it
    empties when it stops)."""
    assert run_example.main([str(EXAMPLE), "--output", str(tmp_path)]) == 0
    lines = [Path(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and all(path.suffix == ".png" for path in lines)
    (saved,) = (path for path in lines if path.parent == tmp_path)
    assert saved.name.startswith("steer_cfg") and saved.is_file()


# --- SteerSweep and SteerTrace through the API ----------------------------------------------------------------------

def sweep_cells(grid: np.ndarray, rows: int, columns: int, size: int = 64) -> list[np.ndarray]:
    """The cells of a SteerSweep grid, row by row (the labels sit above and left of the cells)."""
    band, left = grid.shape[0] - rows * size, grid.shape[1] - columns * size
    assert band > 10 and left >= 0 and grid.shape[2] == 3, grid.shape
    return [grid[band + r * size:band + (r + 1) * size, left + c * size:left + (c + 1) * size]
            for r in range(rows) for c in range(columns)]


def test_sweep_compares_steer_with_plain_cfg(example_pixels: Callable[[str], np.ndarray]) -> None:
    """steer_sweep: cfg 4, 8, 12, 16 with thresholding to cfg 7's spread (row 1) and without (row 2). At cfg 4 the
    guided spread is below the mimic's, so thresholding leaves it (nearly) alone; at 16 it changes the image."""
    cells = sweep_cells(example_pixels("steer_sweep"), rows=2, columns=4)
    assert np.abs(cells[0].astype(int) - cells[4]).max() <= 2
    assert np.abs(cells[3].astype(int) - cells[7]).mean() > 1.0
    assert len({cell.tobytes() for cell in cells}) == 8


@pytest.mark.parametrize(("scales", "detail"), [("4, abc", "value 2 ('abc') is not a decimal number"),
                                                 ("4, 300", "value 2 (300) is above 100"), ("", "no scales given")])
def test_sweep_refuses_bad_scale_lists(server: ComfyServer, workflows: dict[str, dict[str, Any]], scales: str,
                                       detail: str) -> None:
    prompt = edited(workflows["steer_sweep"], "SteerSweep", scales=scales)
    status, answer = server.post_prompt(prompt)
    assert status == 400, answer
    node = answer["node_errors"][node_id(prompt, "SteerSweep")]
    (error,) = (error for error in node["errors"] if error["extra_info"].get("input_name") == "scales")
    assert "Steer Sweep (SteerSweep): input 'scales'" in error["details"] and detail in error["details"], error


def traced(cfg: float, prefix: str) -> dict[str, Any]:
    """steer_ksampler's patched model through SteerTrace into KSampler; the image and SteerTracePlot's chart of the
    run (from KSampler's LATENT) are saved as <prefix>_image / <prefix>_trace."""
    example = EXAMPLES["steer_ksampler"]
    prompt = edited(for_testbed(example.build(example.family)), "KSampler", cfg=cfg)
    sampler = node_id(prompt, "KSampler")
    first = max(map(int, prompt)) + 1
    trace, plot, save = (str(first + i) for i in range(3))
    prompt[trace] = {"class_type": "SteerTrace", "inputs": {"model": prompt[sampler]["inputs"]["model"]}}
    prompt[sampler]["inputs"]["model"] = [trace, 0]
    prompt[plot] = {"class_type": "SteerTracePlot", "inputs": {"trace": [trace, 1], "samples": [sampler, 0]}}
    prompt[save] = {"class_type": "SaveImage", "inputs": {"images": [plot, 0], "filename_prefix": f"{prefix}_trace"}}
    for node in prompt.values():
        if node["class_type"] == "SaveImage" and node["inputs"]["filename_prefix"] == "steer_ksampler":
            node["inputs"]["filename_prefix"] = f"{prefix}_image"
    return prompt


def run_traced(server: ComfyServer, cfg: float, prefix: str) -> np.ndarray:
    paths = server.run(traced(cfg, prefix), timeout=PROMPT_TIMEOUT)
    (chart,) = (path for path in paths if path.name.startswith(f"{prefix}_trace"))
    with Image.open(chart) as image:
        return np.asarray(image)


def test_trace_plot_follows_requeues_with_other_settings(server: ComfyServer) -> None:
    """SteerTrace → KSampler → SteerTracePlot from the API: a chart per image; queued again with another cfg (the
    trace and plot nodes' own inputs unchanged, so only the sampler re-runs upstream of the plot) the chart changes,
    and queued with the first cfg again it is the first chart again."""
    first = run_traced(server, 10.0, "trace_a")
    assert first.ndim == 3 and first.shape[2] == 3 and first.std() > 10
    other = run_traced(server, 4.0, "trace_b")
    assert first.shape == other.shape and not np.array_equal(first, other)
    np.testing.assert_array_equal(run_traced(server, 10.0, "trace_c"), first)


def test_prompts_saved_before_the_new_threshold_inputs_run_as_before(
        server: ComfyServer, workflows: dict[str, dict[str, Any]], example_pixels: Callable[[str], np.ndarray]) -> None:
    """An API prompt saved before SteerDynamicThreshold had mimic_curve, mimic_scale_min, mimic_curve_value and
    separate_feature_channels (all optional) passes validation and gives the same pixels as with their defaults."""
    prompt = edited(workflows["steer_dynamic_threshold"], "SteerDynamicThreshold", mimic_curve=None,
                    mimic_scale_min=None, mimic_curve_value=None, separate_feature_channels=None)
    prompt = edited(prompt, "SaveImage", filename_prefix="saved_before")
    np.testing.assert_array_equal(render(server, prompt, prefix="saved_before"),
                                  example_pixels("steer_dynamic_threshold"))
