"""Runtime faults through the real server: an interrupt mid-sampling, one GUIDER or one patched MODEL feeding two
samplers in one graph, a queue of 20 varied prompts, and workflows saved with an older set of Steer inputs.

The server runs with --cache-none, so that every prompt really samples: a repeated prompt is a real repetition, not
a cache hit.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from PIL import Image

from testbed.graphs import Builder, Graph, node_of, text_to_image
from testbed.server import ComfyServer
from testbed.workflow import ui_to_api

TIMEOUT = 300.0  # a guard against a hung server, never a speed requirement
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    with ComfyServer(tmp_path_factory.mktemp("faults"), extra_args=("--cache-none",)) as server:
        yield server


def pixels(paths: list[Path]) -> np.ndarray:
    (path,) = paths
    with Image.open(path) as image:
        return np.asarray(image)


def render(server: ComfyServer, graph: Graph) -> np.ndarray:
    return pixels(server.run(graph, timeout=TIMEOUT))


def saved(server: ComfyServer, prefix: str) -> list[Path]:
    return sorted(server.output_dir.glob(f"{prefix}_*.png"))


STATEFUL = [("SteerScaleSchedule", {"curve": "cosine_down", "cfg_min": 2.0}),
            ("SteerCFGSkip", {"mode": "adaptive", "threshold": 0.9}),
            ("SteerPAG", {"scale": 2.0})]


async def _interrupt_at(server: ComfyServer, graph: Graph, step: int) -> str:
    """Queue `graph`, and POST /interrupt once its sampler reports progress `step`; the prompt id."""
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{server.url}/ws?clientId={server.client_id}") as ws:
            prompt_id = await asyncio.to_thread(server.submit, graph)
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(message.data)
                data = event.get("data", {})
                if event["type"] == "progress" and data.get("prompt_id") == prompt_id and data["value"] >= step:
                    await asyncio.to_thread(server._request, "POST", "/interrupt", {})
                    return prompt_id
                if event["type"] == "executing" and data.get("prompt_id") == prompt_id and data["node"] is None:
                    raise AssertionError("the prompt finished before it could be interrupted")
    raise AssertionError("the websocket closed")


def test_interrupt_mid_sampling_then_a_clean_run(server: ComfyServer) -> None:
    steps = 12
    clean = render(server, text_to_image("clean", steps=steps, patches=STATEFUL))
    cut = asyncio.run(_interrupt_at(server, text_to_image("cut", steps=steps, patches=STATEFUL), step=3))
    status = server.finished(cut, TIMEOUT)["status"]
    assert status["status_str"] == "error"
    assert any(kind == "execution_interrupted" for kind, _ in status["messages"]), status["messages"]
    assert not saved(server, "cut"), "an interrupted prompt wrote an image"
    again = render(server, text_to_image("again", steps=steps, patches=STATEFUL))
    np.testing.assert_array_equal(again, clean)


def _shared(node: str) -> tuple[Graph, list[Graph]]:
    """One graph where one `node` output (a SteerGuider, or a patched MODEL) feeds two samplers with different
    seeds and step counts, and the two graphs that run each sampler alone."""
    settings = [(3, 5), (11, 7)]

    def build(which: list[int]) -> Graph:
        b = Builder()
        checkpoint = b.add("CheckpointLoaderSimple", ckpt_name="steer_tiny_sd15.safetensors")
        positive = b.add("CLIPTextEncode", text="a red apple", clip=[checkpoint, 1])
        negative = b.add("CLIPTextEncode", text="blurry", clip=[checkpoint, 1])
        model = [b.add("SteerScaleSchedule", model=[checkpoint, 0], curve="linear_down", cfg_min=2.0, switch_at=0.5,
                       exponent=2.0, custom=""), 0]
        model = [b.add("SteerCFGSkip", model=model, mode="adaptive", start_percent=0.4, end_percent=1.0,
                       sigma_high=5.42, sigma_low=0.28, threshold=0.9), 0]
        latent = b.add("EmptyLatentImage", width=64, height=64, batch_size=1)
        guider = b.add("SteerGuider", model=model, positive=[positive, 0], negative=[negative, 0], cfg=7.0)
        for index in which:
            seed, steps = settings[index]
            if node == "guider":
                sigmas = b.add("BasicScheduler", model=model, scheduler="karras", steps=steps, denoise=1.0)
                sampler = b.add("KSamplerSelect", sampler_name="heun")
                noise = b.add("RandomNoise", noise_seed=seed)
                sampled = b.add("SamplerCustomAdvanced", noise=[noise, 0], guider=[guider, 0], sampler=[sampler, 0],
                                sigmas=[sigmas, 0], latent_image=[latent, 0])
            else:
                sampled = b.add("KSampler", model=model, seed=seed, steps=steps, cfg=7.0, sampler_name="heun",
                                scheduler="karras", positive=[positive, 0], negative=[negative, 0],
                                latent_image=[latent, 0], denoise=1.0)
            image = b.add("VAEDecode", samples=[sampled, 0], vae=[checkpoint, 2])
            b.add("SaveImage", images=[image, 0], filename_prefix=f"{node}_{''.join(map(str, which))}_{index}")
        if node != "guider":
            del b.graph[guider]
        return b.graph

    return build([0, 1]), [build([0]), build([1])]


@pytest.mark.parametrize("node", ["guider", "model"])
def test_one_output_feeding_two_samplers(server: ComfyServer, node: str) -> None:
    together, alone = _shared(node)
    images = {path.name.split("_")[2]: pixels([path]) for path in server.run(together, timeout=TIMEOUT)}
    assert len(images) == 2
    for index, graph in enumerate(alone):
        np.testing.assert_array_equal(images[str(index)], render(server, graph))
    assert not np.array_equal(images["0"], images["1"])


VARIED: list[list[tuple[str, dict[str, Any]]]] = [
    [],
    [("SteerScaleSchedule", {"curve": "linear_up", "cfg_min": 1.0})],
    [("SteerScaleSchedule", {"curve": "custom", "custom": "9, 7, 5, 3"})],
    [("SteerScaleSchedule", {"curve": "step_down", "switch_at": 0.3, "cfg_min": 1.0})],
    [("SteerDynamicThreshold", {"mimic_scale": 4.0})],
    [("SteerDynamicThreshold", {"mode": "imagen", "threshold_percentile": 0.995})],
    [("SteerCFGSkip", {"mode": "percent", "start_percent": 0.0, "end_percent": 0.5})],
    [("SteerCFGSkip", {"mode": "sigma", "sigma_high": 8.0, "sigma_low": 1.0})],
    [("SteerCFGSkip", {"mode": "adaptive", "threshold": 0.95})],
    [("SteerNegative", {"scale": 0.7, "mode": "perpendicular"})],
    [("SteerNegative", {"scale": 1.2})],
    [("SteerPAG", {"scale": 2.0})],
    [("SteerPAG", {"blocks": "input.1, output.1", "end_percent": 0.6})],
    [("SteerScaleSchedule", {"curve": "cosine_down", "cfg_min": 3.0}), ("SteerDynamicThreshold", {})],
    [("SteerCFGSkip", {"mode": "adaptive", "threshold": 0.9}), ("SteerPAG", {})],
    [("SteerNegative", {}), ("SteerCFGSkip", {}), ("SteerScaleSchedule", {"curve": "power_up"})],
]


def test_twenty_queued_prompts_succeed_and_repeat(server: ComfyServer) -> None:
    settings = [(patches, 30 + index, ["euler", "heun", "dpmpp_2m", "euler_ancestral"][index % 4], 4 + index % 3)
                for index, patches in enumerate(VARIED + VARIED[:4])]
    assert len(settings) == 20
    rounds = []
    for round_ in range(2):
        queued = [server.submit(text_to_image(f"queue{round_}_{index}", seed=seed, sampler=sampler, steps=steps,
                                              cfg=5.0 + index % 4, patches=patches))
                  for index, (patches, seed, sampler, steps) in enumerate(settings)]
        rounds.append([pixels(server.wait(prompt_id, TIMEOUT)) for prompt_id in queued])
    for first, second in zip(*rounds, strict=True):
        np.testing.assert_array_equal(first, second)
    assert len({image.tobytes() for image in rounds[0]}) == 20, "different settings gave the same image"


# Each Steer node's inputs as released in 0.1.0 (the first published set), in their order. UI-format workflows store
# widget values by position, so a saved workflow keeps working only if these stay a prefix of the current inputs.
RELEASED = json.loads((DATA / "steer_inputs_0.1.0.json").read_text())


def test_released_inputs_stay_a_prefix(server: ComfyServer) -> None:
    info = server.object_info()
    for node, released in RELEASED.items():
        spec = info[node]["input"]
        current = [(name, section) for section in ("required", "optional") for name in spec.get(section, {})]
        names = [name for name, _ in current]
        assert names[:len(released)] == [name for name, _ in released], node
        for (name, options), (_, section) in zip(released, current, strict=False):
            if options is not None:
                kind, extra = spec[section][name][0], spec[section][name][1] if len(spec[section][name]) > 1 else {}
                new_options = kind if isinstance(kind, list) else extra.get("options", [])
                assert set(options) <= set(new_options), f"{node}.{name} lost options {set(options) - set(new_options)}"
        for name, section in current[len(released):]:
            assert section == "optional" or "default" in spec[section][name][1], (
                f"{node}.{name} is new and has no default: workflows saved before it cannot run")


def test_a_workflow_saved_with_the_released_inputs_runs(server: ComfyServer) -> None:
    """example_workflows/steer_all_four.json as 0.1.0 shipped it (UI format), loaded and queued as the UI would."""
    saved_workflow = json.loads((DATA / "steer_all_four_0.1.0.json").read_text())
    prompt = ui_to_api(saved_workflow, server.object_info())
    prompt[node_of(prompt, "SaveImage")]["inputs"]["filename_prefix"] = "released"
    image = render(server, prompt)
    assert image.std() > 1.0


def test_an_api_prompt_missing_a_new_input_says_which(server: ComfyServer) -> None:
    """An API prompt written against 0.1.0 lacks inputs added since: it runs (defaults) or is refused naming them."""
    info = server.object_info()
    for node, released in RELEASED.items():
        if node in ("SteerGuider", "SteerCFGPPSampler"):
            continue
        graph = text_to_image(f"old_{node}", patches=[(node, {})])
        key = node_of(graph, node)
        inputs = graph[key]["inputs"]
        graph[key]["inputs"] = {name: value for name, value in inputs.items()
                                if name in {"model", "negative"} | {n for n, _ in released}}
        required = set(info[node]["input"].get("required", {}))
        missing = sorted(required - set(graph[key]["inputs"]))
        status, answer = server.post_prompt(copy.deepcopy(graph))
        if not missing:
            assert status == 200, answer
            server.wait(answer["prompt_id"], TIMEOUT)
        else:
            assert status == 400
            text = json.dumps(answer["node_errors"][key])
            assert all(name in text for name in missing), text
