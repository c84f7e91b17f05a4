"""Hostile API input for every Steer node, through the real server: wrong types, out-of-range and non-finite
numbers, options that do not exist, empty, huge and garbage strings, missing, dangling and cross-wired links.

Every case must end in one of three ways: HTTP 400 whose `node_errors` name the node and the input; an execution
error of that node whose message names the input; or — only for values that may be valid (strings) — a real image.
No failed prompt may write a file, and afterwards the server must still give the exact result it gave before.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from PIL import Image

from testbed.graphs import Builder, Graph, node_of, text_to_image
from testbed.server import ComfyServer

TIMEOUT = 300.0  # a guard against a hung server, never a speed requirement
STEPS = 1


def _custom_sampler(prefix: str, guider: str, sampler: str) -> Graph:
    """Loader → `guider` (SteerGuider or CFGGuider) + `sampler` (KSamplerSelect or SteerCFGPPSampler) →
    SamplerCustomAdvanced → decode → save."""
    b = Builder()
    checkpoint = b.add("CheckpointLoaderSimple", ckpt_name="steer_tiny_sd15.safetensors")
    positive = b.add("CLIPTextEncode", text="a red apple", clip=[checkpoint, 1])
    negative = b.add("CLIPTextEncode", text="blurry", clip=[checkpoint, 1])
    guide = b.add(guider, model=[checkpoint, 0], positive=[positive, 0], negative=[negative, 0], cfg=5.0)
    pick = (b.add("KSamplerSelect", sampler_name="euler") if sampler == "KSamplerSelect"
            else b.add(sampler, sampler_name="euler_ancestral", eta=1.0, s_noise=1.0))
    sigmas = b.add("BasicScheduler", model=[checkpoint, 0], scheduler="normal", steps=STEPS, denoise=1.0)
    noise = b.add("RandomNoise", noise_seed=5)
    latent = b.add("EmptyLatentImage", width=64, height=64, batch_size=1)
    sampled = b.add("SamplerCustomAdvanced", noise=[noise, 0], guider=[guide, 0], sampler=[pick, 0],
                    sigmas=[sigmas, 0], latent_image=[latent, 0])
    image = b.add("VAEDecode", samples=[sampled, 0], vae=[checkpoint, 2])
    b.add("SaveImage", images=[image, 0], filename_prefix=prefix)
    return b.graph


def _trace_plot(prefix: str) -> Graph:
    """Loader → SteerTrace → KSampler; SteerTracePlot(trace, KSampler's LATENT) → save."""
    graph = text_to_image(prefix, steps=STEPS, patches=[("SteerTrace", {})])
    trace, sampled = node_of(graph, "SteerTrace"), node_of(graph, "KSampler")
    del graph[node_of(graph, "VAEDecode")]
    graph["99"] = {"class_type": "SteerTracePlot", "inputs": {"trace": [trace, 1], "samples": [sampled, 0]}}
    graph[node_of(graph, "SaveImage")]["inputs"]["images"] = ["99", 0]
    return graph


def _sweep(prefix: str) -> Graph:
    """Loader → SteerSweep (two scales) → save."""
    b = Builder()
    checkpoint = b.add("CheckpointLoaderSimple", ckpt_name="steer_tiny_sd15.safetensors")
    positive = b.add("CLIPTextEncode", text="a red apple", clip=[checkpoint, 1])
    negative = b.add("CLIPTextEncode", text="blurry", clip=[checkpoint, 1])
    latent = b.add("EmptyLatentImage", width=64, height=64, batch_size=1)
    grid = b.add("SteerSweep", model=[checkpoint, 0], seed=5, steps=STEPS, sampler_name="euler", scheduler="normal",
                 positive=[positive, 0], negative=[negative, 0], latent_image=[latent, 0], vae=[checkpoint, 2],
                 denoise=1.0, scales="3, 6", compare_without_steer=True)
    b.add("SaveImage", images=[grid, 0], filename_prefix=prefix)
    return b.graph


def valid_graph(node: str, prefix: str) -> tuple[Graph, str]:
    """A graph that runs, using `node` once; the node's id in it."""
    if node == "SteerGuider":
        graph = _custom_sampler(prefix, "SteerGuider", "KSamplerSelect")
    elif node == "SteerCFGPPSampler":
        graph = _custom_sampler(prefix, "CFGGuider", "SteerCFGPPSampler")
    elif node == "SteerTracePlot":
        graph = _trace_plot(prefix)
    elif node == "SteerSweep":
        graph = _sweep(prefix)
    else:
        graph = text_to_image(prefix, steps=STEPS, patches=[(node, {})])
    (key,) = (key for key, value in graph.items() if value["class_type"] == node)
    return graph, key


@dataclass(frozen=True)
class Case:
    node: str
    input: str
    value: Any  # MISSING removes the input
    may_run: bool  # the value can be valid (strings): a real image is an acceptable outcome

    @property
    def id(self) -> str:
        shown = "missing" if self.value is MISSING else repr(self.value)[:24]
        return f"{self.node}.{self.input}={shown}"


MISSING = object()
# Links to a node or an output that does not exist: ComfyUI refuses those itself, reporting them on the node whose
# validation walked into them (the consumer downstream), before any Steer code runs.
DANGLING_NODE, DANGLING_SLOT = ["9999", 0], ["1", 7]
WIDGET_TYPES = {"FLOAT", "INT", "STRING", "BOOLEAN", "COMBO"}
SAMPLING_NODES = {"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced"}


def cases_for(node: str, spec: dict[str, Any]) -> Iterator[Case]:
    for section in ("required", "optional"):
        for name, (kind, *rest) in spec.get(section, {}).items():
            extra = rest[0] if rest else {}
            if section == "required":
                yield Case(node, name, MISSING, False)
            if isinstance(kind, list) or kind == "COMBO":
                for value in ("__no_such_option__", "", 3, None):
                    yield Case(node, name, value, False)
            elif kind in ("FLOAT", "INT"):
                bad = [math.nan, math.inf, -math.inf, "abc", None, ["2", 0]]
                if extra.get("min") is not None:
                    bad.append(extra["min"] - 1)
                if extra.get("max") is not None:
                    bad.append(extra["max"] + 1)
                for value in bad:
                    yield Case(node, name, value, False)
                if kind == "INT":  # ComfyUI converts an INT with int() before any node sees it, as for core's seeds
                    yield Case(node, name, 1.5, True)
            elif kind == "STRING":
                for value in ("", " ", "x" * 100_000, "\x00\x01\ufffd garbage ;;; ,,", "1_000", "1e-400", "nan",
                              "-1", "9" * 400, "middle.0, middle.0.99", "joint.0", 12345):
                    yield Case(node, name, value, True)
                yield Case(node, name, ["2", 0], False)  # a CLIP output where a STRING belongs
            elif kind == "BOOLEAN":
                yield Case(node, name, ["2", 0], False)
            else:  # a socket: cross-wired (a CLIP output), a literal, dangling, or pointing at a missing slot
                for value in (["1", 1], "not a link", 7, DANGLING_NODE, DANGLING_SLOT):
                    yield Case(node, name, value, False)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    with ComfyServer(tmp_path_factory.mktemp("fuzz"), extra_args=("--cache-none",)) as server:
        yield server


def _pixels(server: ComfyServer, graph: Graph) -> np.ndarray:
    (path,) = server.run(graph, timeout=TIMEOUT)
    with Image.open(path) as image:
        return np.asarray(image)


def _names_input(text: str, case: Case) -> bool:
    return case.input in text


def _outcome(server: ComfyServer, case: Case, prefix: str) -> str:
    """Post one hostile graph; 'refused', 'failed' or 'ran', after checking that the error names node and input."""
    graph, key = valid_graph(case.node, prefix)
    if case.value is MISSING:
        del graph[key]["inputs"][case.input]
    else:
        graph[key]["inputs"][case.input] = case.value
    status, answer = server.post_prompt(graph)
    if case.value in (DANGLING_NODE, DANGLING_SLOT):
        assert status == 400 and answer.get("node_errors"), f"{case.id}: {status} {str(answer)[:400]}"
        return "refused"
    if status == 400:
        errors = answer.get("node_errors") or {}
        assert key in errors, f"{case.id}: refused without naming node {key}: {json.dumps(answer)[:600]}"
        assert _names_input(json.dumps(errors[key]), case), f"{case.id}: {json.dumps(errors[key])[:600]}"
        return "refused"
    assert status == 200, f"{case.id}: HTTP {status}: {str(answer)[:400]}"
    entry = server.finished(answer["prompt_id"], TIMEOUT)
    outcome = entry["status"]
    if outcome["status_str"] == "success":
        assert case.may_run, f"{case.id}: ran although the value is invalid"
        (output,) = [image for node in entry["outputs"].values() for image in node.get("images", [])]
        with Image.open(server.output_dir / output["subfolder"] / output["filename"]) as image:
            pixels = np.asarray(image).astype(np.float64)
        assert np.isfinite(pixels).all() and pixels.std() > 1.0, f"{case.id}: a broken image"
        return "ran"
    (error,) = [data for kind, data in outcome["messages"] if kind == "execution_error"]
    assert error["node_id"] == key, f"{case.id}: the error came from node {error['node_id']} ({error['node_type']}): " \
                                    f"{error['exception_message'][:300]}"
    assert _names_input(error["exception_message"], case), f"{case.id}: {error['exception_message'][:400]}"
    assert error["exception_message"].startswith(case.node) or case.node in error["exception_message"], \
        f"{case.id}: the message does not name the node: {error['exception_message'][:300]}"
    return "failed"


def test_hostile_inputs_get_clear_errors(server: ComfyServer) -> None:
    info = server.object_info()
    steer = sorted(name for name in info if name.startswith("Steer"))
    reference_graph, _ = valid_graph("SteerCFGSkip", "reference")
    before = _pixels(server, reference_graph)

    cases = [case for node in steer for case in cases_for(node, info[node]["input"])]
    outcomes: dict[str, int] = {}
    problems: list[str] = []
    for index, case in enumerate(cases):
        prefix = f"fuzz{index}"
        try:
            outcome = _outcome(server, case, prefix)
        except AssertionError as error:
            problems.append(str(error))
            continue
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if outcome != "ran" and list(server.output_dir.glob(f"{prefix}_*")):
            problems.append(f"{case.id}: a failed prompt wrote a file")
    print(f"{len(cases)} hostile cases over {len(steer)} Steer nodes: {outcomes}")
    assert not problems, f"{len(problems)} of {len(cases)} cases:\n" + "\n".join(problems)
    np.testing.assert_array_equal(_pixels(server, reference_graph), before)


def _combo_inputs(info: dict[str, Any]) -> Iterator[tuple[str, str, list[Any]]]:
    """(node, input, options) for every combo input of every Steer node."""
    for node in sorted(name for name in info if name.startswith("Steer")):
        for section in ("required", "optional"):
            for name, (kind, *rest) in info[node]["input"].get(section, {}).items():
                if isinstance(kind, list) or kind == "COMBO":
                    yield node, name, kind if isinstance(kind, list) else rest[0]["options"]


def _names_the_options(text: str, options: list[Any]) -> bool:
    """Every option named, or ComfyUI's own summary of a long list (it names the options of 20 or fewer)."""
    return all(str(option) in text for option in options) or f"list of length {len(options)}" in text


def test_a_bad_combo_value_gets_one_clear_message(server: ComfyServer) -> None:
    """ComfyUI 0.3.75 does not check a V3 combo's value; 0.8 and later do, except for the inputs a node's
    validate_inputs names. Either way, on every version: the prompt is refused when queued, or the node fails before
    the sampler runs; the one message (ComfyUI repeats a validate_inputs message under each input that function
    names) names the input, the value and what is accepted; never ComfyUI's and Steer's message for one mistake."""
    bad = "__no_such_option__"
    problems: list[str] = []
    outcomes: dict[str, int] = {}
    combos = list(_combo_inputs(server.object_info()))
    assert len(combos) >= 8  # every node's combos are found
    for index, (node, name, options) in enumerate(combos):
        prefix = f"combo{index}"
        graph, key = valid_graph(node, prefix)
        graph[key]["inputs"][name] = bad
        status, answer = server.post_prompt(graph)
        if status == 400:
            errors = (answer.get("node_errors") or {}).get(key, {}).get("errors", [])
            kinds = {error["type"] for error in errors}
            # A validate_inputs message comes as "<input> - <message>" once per input that function names.
            texts = {error["details"].split(" - ", 1)[-1] if error["type"] == "custom_validation_failed"
                     else error["details"] for error in errors}
            shown = f"{node}.{name}: {json.dumps(errors)[:600]}"
            if len(kinds) != 1 or len(texts) != 1:
                problems.append(f"{shown}: not exactly one message")
                continue
            (text,) = texts
            outcome = f"refused: {next(iter(kinds))}"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if not (name in text and bad in text and _names_the_options(text, options)):
                problems.append(f"{shown}: unclear")
            if kinds == {"custom_validation_failed"} and node not in text:
                problems.append(f"{shown}: Steer's message does not name the node")
            continue
        assert status == 200, f"{node}.{name}: HTTP {status}: {str(answer)[:400]}"
        entry = server.finished(answer["prompt_id"], TIMEOUT)
        errors = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
        if len(errors) != 1 or errors[0]["node_id"] != key:
            problems.append(f"{node}.{name}: ran or failed elsewhere: {str(entry['status'])[:600]}")
            continue
        text = errors[0]["exception_message"]
        outcomes["failed in the node"] = outcomes.get("failed in the node", 0) + 1
        if not (node in text and name in text and bad in text and _names_the_options(text, options)):
            problems.append(f"{node}.{name}: unclear: {text[:600]}")
        sampler = {node_key for node_key, value in graph.items() if value["class_type"] in SAMPLING_NODES}
        if node != "SteerSweep" and sampler & set(errors[0]["executed"]):
            problems.append(f"{node}.{name}: refused only after the sampler ran")
        if list(server.output_dir.glob(f"{prefix}_*")):
            problems.append(f"{node}.{name}: a failed prompt wrote a file")
    print(f"{len(combos)} bad combo values on Steer nodes: {outcomes}")
    assert not problems, "\n".join(problems)
