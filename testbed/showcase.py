"""An example's API graph made into a workflow for people: the same-seed plain-CFG comparison, a Note, groups, the
`models` download entries and a layout that is readable at Fit View in a 1600×1000 window. A training example gets
no comparison (it saves a LoRA, not an image): its dataset nodes join the inputs, the trainer and SaveLoRA form the
result group.

Layout (x → right):  Note + model, prompts, size | Steer patches | shared sampling nodes | samplers + decoders
(plain CFG on top, Steer below) | images (plain CFG preview on top, the saved Steer image below).
"""

from __future__ import annotations

import copy
import re
from typing import Any

from testbed.examples import Builder, Example, Graph
from testbed.workflow import api_to_ui, combo_options, control_values, input_specs, input_type, is_widget

SAMPLERS = {"KSampler", "SamplerCustomAdvanced", "SteerSweep"}
STEER_SAMPLING = {"SteerGuider", "SteerCFGPPSampler", "SteerSweep"}  # Steer nodes that are not MODEL patches
IMAGES = {"SaveImage", "PreviewImage"}
LOADERS = {"CheckpointLoaderSimple"}
DATASETS = {"LoadImageTextDataSetFromFolder", "MakeTrainingDataset"}
TRAINERS = {"TrainLoraNode", "SaveLoRA"}

# Fit View (front end 1.32): scale = 0.75 · min(W / w, H / h) over the nodes' bounds (titles included) + 10 px.
FIT_ZOOM, WINDOW, READABLE = 0.75, (1600, 1000), 0.6
TITLE, GAP, COLUMN_GAP, GROUP_HEADER = 30, 24, 40, 50
MAX_COLUMN_HEIGHT = 1100
IMAGE_SIZE = [360, 440]
NOTE_WIDTH, PROMPT_WIDTH = 380, 380
# What js/steer.js adds below the widgets: the preview plot (PLOT_HEIGHT + 24 + 4) and the perturbation nodes' preset
# combo. The front end grows a node that is too small for its widgets but never shrinks one: sizes here are what it
# draws.
JS_EXTRA_HEIGHT = {"SteerScaleSchedule": 120, "SteerCFGSkip": 120, "SteerPAG": 148, "SteerSEG": 148,
                   "SteerSkipLayer": 148}
SELECTORS = ("mode", "curve")
WIDGET_HEIGHT = 24
USED_BY = re.compile(r"(?:^|[.;]\s+)([a-z_+]+(?:\s*/\s*[a-z_+]+)*):")
GROUP_COLORS = {"input": "#3f789e", "steer": "#35566e", "plain": "#6b6b6b", "result": "#3f7e4f"}


def _sources(node: dict[str, Any]) -> list[str]:
    return [value[0] for value in node["inputs"].values() if isinstance(value, list)]


def _unpatched(graph: Graph, link: list[Any]) -> list[Any]:
    """The MODEL a chain of Steer patches starts from."""
    while graph[link[0]]["class_type"].startswith("Steer") and "model" in graph[link[0]]["inputs"]:
        link = graph[link[0]]["inputs"]["model"]
    return link


def with_plain_cfg(graph: Graph, plain: dict[str, Any]) -> Graph:
    """`graph` plus plain CFG from the same seed, latent and prompts on the unpatched model: a second KSampler, or
    core CFGGuider + SamplerCustomAdvanced; `plain` overrides its cfg and sampler. Its image is previewed (not
    saved). The new nodes get ids after the existing ones, so the Steer side keeps its ids."""
    graph = copy.deepcopy(graph)
    b = Builder(graph)
    (key,) = (k for k, node in graph.items() if node["class_type"] in SAMPLERS)
    sampler = graph[key]["inputs"]
    (decode,) = (node for node in graph.values() if node["class_type"] == "VAEDecode")
    if graph[key]["class_type"] == "KSampler":
        inputs = {**sampler, "model": _unpatched(graph, sampler["model"]), **plain}
        sampled = b.add("KSampler", "KSampler, plain CFG", **inputs)
    else:
        guider = graph[sampler["guider"][0]]["inputs"]
        cfg_guider = b.add("CFGGuider", "Core CFGGuider", model=_unpatched(graph, guider["model"]),
                           positive=guider["positive"], negative=guider["negative"],
                           cfg=plain.get("cfg", guider["cfg"]))
        select = [b.add("KSamplerSelect", sampler_name=plain["sampler_name"]), 0] if "sampler_name" in plain \
            else sampler["sampler"]
        sampled = b.add("SamplerCustomAdvanced", "Sampler, plain CFG", **{
            **sampler, "guider": [cfg_guider, 0], "sampler": select})
    image = b.add("VAEDecode", samples=[sampled, 0], vae=decode["inputs"]["vae"])
    b.add("PreviewImage", "Plain CFG (same seed)", images=[image, 0])
    return b.graph


def hidden_widgets(info: dict[str, Any], values: dict[str, Any]) -> set[str]:
    """The widgets js/steer.js hides for these values: those whose tooltip names ("percent: …", "step_down /
    step_up: …") only other options of the node's mode / curve; a non-empty text stays (flagged as ignored)."""
    specs = {name: spec for name, spec, _ in input_specs(info)}
    selector = next((name for name in SELECTORS if name in specs and input_type(specs[name]) == "COMBO"), None)
    if selector is None:
        return set()
    options = set(combo_options(specs[selector]))
    hidden = set()
    for name, spec in specs.items():
        tooltip = spec[1].get("tooltip", "") if len(spec) > 1 else ""
        used = {word.strip() for match in USED_BY.findall(tooltip) for word in match.split("/")} & options
        text = values.get(name)
        ignored_text = isinstance(text, str) and text.strip()
        if name != selector and used and values.get(selector) not in used and not ignored_text:
            hidden.add(name)
    return hidden


def _front_end_height(node: dict[str, Any], info: dict[str, Any], values: dict[str, Any]) -> int:
    """A Steer node's height as js/steer.js shows it: visible widgets (a seed's "control after generate" included)
    plus its preview plot / preset combo."""
    hidden = hidden_widgets(info, values)
    widgets = sum(1 + control_values(name, spec) for name, spec, _ in input_specs(info)  # + "control after generate"
                  if is_widget(spec) and name not in hidden)
    sockets = sum(1 for slot in node["inputs"] if "widget" not in slot)
    rows = max(sockets, len(node["outputs"]), 1)
    return rows * 20 + 6 + WIDGET_HEIGHT * widgets + 8 + JS_EXTRA_HEIGHT.get(node["type"], 0)


def _roles(graph: Graph, first_plain: int) -> dict[str, str]:
    """Which part of the layout each node belongs to: input, steer, shared, plain, result."""
    consumers: dict[str, set[str]] = {key: set() for key in graph}
    for key, node in graph.items():
        for source in _sources(node):
            consumers[source].add(key)

    def side(key: str) -> set[str]:
        """Which samplers' results `key` feeds: 'plain', 'result' or both."""
        if graph[key]["class_type"] in SAMPLERS | IMAGES | {"VAEDecode"}:
            return {"plain" if int(key) >= first_plain else "result"}
        return set().union(*(side(c) for c in consumers[key])) if consumers[key] else set()

    roles = {}
    for key, node in graph.items():
        kind = node["class_type"]
        if kind in TRAINERS:
            roles[key] = "result"
        elif kind in LOADERS | DATASETS or kind.startswith("Empty") or kind == "CLIPTextEncode":
            roles[key] = "input"  # every prompt, an extra negative's too: the Steer column stays short enough
        elif kind.startswith("Steer") and kind not in STEER_SAMPLING:
            roles[key] = "steer"
        elif kind in SAMPLERS | IMAGES | {"VAEDecode"} or len(side(key)) == 1:
            (roles[key],) = side(key)
        else:
            roles[key] = "shared"
    return roles


def _stack(nodes: list[dict[str, Any]], x: int, y: int = 0) -> tuple[int, int]:
    """Place `nodes` top to bottom from (x, y), wrapping into a new column past MAX_COLUMN_HEIGHT; returns the right
    edge and the bottom."""
    top, right, bottom = y, x, y
    column_width = 0
    for node in nodes:
        height = node["size"][1] + TITLE
        if y > top and y + height > top + MAX_COLUMN_HEIGHT:
            x, y = x + column_width + COLUMN_GAP, top
            column_width = 0
        node["pos"] = [x, y + TITLE]
        y += height + GAP
        column_width = max(column_width, node["size"][0])
        right, bottom = max(right, x + node["size"][0]), max(bottom, y - GAP)
    return right, bottom


def _bounds(nodes: list[dict[str, Any]]) -> list[float]:
    """[x, y, w, h] of the nodes with their title bars."""
    left = min(n["pos"][0] for n in nodes)
    top = min(n["pos"][1] - TITLE for n in nodes)
    right = max(n["pos"][0] + n["size"][0] for n in nodes)
    bottom = max(n["pos"][1] + n["size"][1] for n in nodes)
    return [left, top, right - left, bottom - top]


def fit_view_scale(workflow: dict[str, Any], window: tuple[int, int] = WINDOW) -> float:
    """The zoom the front end's Fit View gives this workflow in a `window`-sized canvas."""
    x, y, w, h = _bounds(workflow["nodes"])
    return FIT_ZOOM * min(window[0] / max(w + 20, 300), window[1] / max(h + 20, 300))


def _group(group_id: int, title: str, nodes: list[dict[str, Any]], color: str) -> dict[str, Any]:
    x, y, w, h = _bounds(nodes)
    pad = 10
    bounding = [x - pad, y - GROUP_HEADER, w + 2 * pad, h + GROUP_HEADER + pad]
    return {"id": group_id, "title": title, "bounding": bounding, "color": color, "font_size": 22, "flags": {}}


def _layout(nodes: dict[str, dict[str, Any]], roles: dict[str, str], note: dict[str, Any]) -> None:
    def members(role: str) -> list[dict[str, Any]]:
        return [nodes[key] for key in sorted(nodes, key=int) if roles.get(key) == role]

    for node in nodes.values():
        if node["type"] == "CLIPTextEncode":
            node["size"] = [PROMPT_WIDTH, 140 if node.get("title") == "Positive prompt" else 100]
        if node["type"] in IMAGES:
            node["size"] = list(IMAGE_SIZE)
    note_right, note_bottom = _stack([note], 0, 0)
    right, _ = _stack(members("input"), 0, note_bottom + GROUP_HEADER + GAP)
    right = max(right, note_right)
    x = right + COLUMN_GAP
    for role in ("steer", "shared"):
        if members(role):
            x = _stack(members(role), x, GROUP_HEADER)[0] + COLUMN_GAP
    plain_right, plain_bottom = _stack([n for n in members("plain") if n["type"] not in IMAGES], x, GROUP_HEADER)
    steer_top = max(plain_bottom, GROUP_HEADER + IMAGE_SIZE[1] + TITLE) + GROUP_HEADER + GAP if members("plain") \
        else GROUP_HEADER
    steer_right, _ = _stack([n for n in members("result") if n["type"] not in IMAGES], x, steer_top)
    images_x = max(plain_right, steer_right) + COLUMN_GAP
    _stack([n for n in members("plain") if n["type"] in IMAGES], images_x, GROUP_HEADER)
    _stack([n for n in members("result") if n["type"] in IMAGES], images_x, steer_top)


def showcase(example: Example, object_info: dict[str, Any]) -> dict[str, Any]:
    """The UI workflow of `example` as shipped in example_workflows/."""
    steer = example.build(example.family)
    first_plain = max(map(int, steer)) + 1
    graph = with_plain_cfg(steer, example.plain) if example.compare else steer
    workflow = api_to_ui(graph, object_info)
    nodes = {str(node["id"]): node for node in workflow["nodes"]}
    for node in nodes.values():
        if node["type"] in LOADERS:
            node["properties"]["models"] = [{"name": example.family.checkpoint, "url": example.family.url,
                                             "directory": "checkpoints"}]
        if node["type"] == "SaveImage":
            node["title"] = "With Steer (saved)"
    for key, node in nodes.items():
        if node["type"].startswith("Steer"):
            node["size"][1] = _front_end_height(node, object_info[node["type"]], graph[key]["inputs"])
    note_id = max(map(int, nodes)) + 1
    note = {"id": note_id, "type": "MarkdownNote", "pos": [0, 0], "size": [NOTE_WIDTH, 240], "flags": {},
            "order": len(nodes), "mode": 0, "inputs": [], "outputs": [], "title": "What this shows",
            "properties": {}, "widgets_values": [example.note + _model_line(example)], "color": "#432",
            "bgcolor": "#653"}
    roles = _roles(graph, first_plain)
    _layout(nodes, roles, note)
    by_role = {role: [nodes[k] for k in nodes if roles[k] == role] for role in set(roles.values())}
    titles = {"input": f"Model ({example.family.name}), prompts, size", "steer": "Steer",
              "plain": "Plain CFG, same seed", "result": "With Steer"}
    if example.training:
        titles |= {"input": f"Model ({example.family.name}), dataset", "result": "Training, saves a LoRA"}
    workflow["groups"] = [_group(i, titles[role], by_role[role], GROUP_COLORS[role])
                          for i, role in enumerate(("input", "steer", "plain", "result"), start=1) if by_role.get(role)]
    workflow["nodes"].append(note)
    workflow["last_node_id"] = note_id
    return workflow


def _model_line(example: Example) -> str:
    family = example.family
    run = "the LoRA is trained for it" if example.training else f"{family.size}×{family.size}, {family.steps} steps"
    return f"\n\n**Model:** [{family.checkpoint}]({family.url}) in `models/checkpoints` ({family.name}, {run})."
