"""Convert between the web UI's workflow format (nodes + links + widgets_values) and API prompts.

Both directions read a node's inputs from `/object_info`, in `input_order`, the way ComfyUI's front end 1.32 builds
its widgets: every INT/FLOAT/BOOLEAN/STRING/COMBO input (unless `forceInput`) is a widget, and a seed widget brings an
extra "control_after_generate" value ("fixed", "randomize", ...) that the API prompt does not carry.
"""

from __future__ import annotations

import importlib.metadata
import json
import uuid
from collections.abc import Iterator
from typing import Any

WIDGET_TYPES = {"INT", "FLOAT", "BOOLEAN", "STRING", "COMBO"}
MUTED, BYPASSED = 2, 4  # node modes ("Never" and "Bypass")
OPTIONAL_SHAPE, LIST_SHAPE = 7, 6  # LiteGraph slot shapes: hollow circle, grid
# The front end gives every node an S&R alias property except these (saveImageExtraOutput.ts).
SAVE_NODE_TYPES = {"SaveImage", "SaveVideo", "SaveAnimatedWEBP", "SaveWEBM", "SaveAudio", "SaveGLB",
                   "SaveAnimatedPNG", "CLIPSave", "VAESave", "ModelSave", "LoraSave", "SaveLatent"}

Spec = list[Any]  # one input of /object_info: [type or list of options, {options}]


def input_specs(info: dict[str, Any]) -> Iterator[tuple[str, Spec, bool]]:
    """(name, spec, optional) of a node type's required then optional inputs, in the front end's order."""
    for group in ("required", "optional"):
        specs = info["input"].get(group, {})
        for name in info.get("input_order", {}).get(group, specs):
            yield name, specs[name], group == "optional"


def input_type(spec: Spec) -> str:
    """The socket type of an input; a list of options is a COMBO."""
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def _options(spec: Spec) -> dict[str, Any]:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def is_widget(spec: Spec) -> bool:
    """Whether the front end shows this input as a widget (with a value in widgets_values)."""
    return input_type(spec) in WIDGET_TYPES and not _options(spec).get("forceInput")


def control_values(name: str, spec: Spec) -> int:
    """How many values the front end stores after this widget's own (control_after_generate, combo filter)."""
    control = _options(spec).get("control_after_generate")
    if input_type(spec) == "INT":
        return 1 if (name in ("seed", "noise_seed") if control is None else control) else 0
    return 2 if input_type(spec) == "COMBO" and control else 0


_UNSAVED = object()


def combo_options(spec: Spec) -> list[Any]:
    """The choices of a COMBO input (a list in V1 definitions, options["options"] in V3 ones)."""
    return spec[0] if isinstance(spec[0], list) else _options(spec).get("options", [])


def default_value(spec: Spec) -> Any:
    """The value a freshly created widget holds."""
    options = _options(spec)
    if "default" in options:
        return options["default"]
    choices = combo_options(spec)
    return choices[0] if choices else {"INT": 0, "FLOAT": 0.0, "BOOLEAN": False}.get(input_type(spec), "")


def ui_to_api(workflow: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """An API prompt from a UI-format workflow, as the front end's "Queue" would build it.

    Muted nodes and nodes unknown to `object_info` without outputs in use (notes) are left out; bypassed nodes and
    Reroutes pass their matching input through; a PrimitiveNode's value is written into the inputs it feeds.
    Subgraphs are not supported.
    """
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}

    def source(link_id: int) -> Any:
        """What a link delivers: [node id, slot], a constant (PrimitiveNode) or None (muted source)."""
        _, node_id, slot, *_ = links[link_id]
        node = nodes[node_id]
        if node.get("mode") == MUTED:
            return None
        if node["type"] == "PrimitiveNode":
            return node["widgets_values"][0]
        if node["type"] == "Reroute" or node.get("mode") == BYPASSED:
            # Pass-through: the input on the same slot if its type matches, else the first input of that type.
            inputs, out_type = node.get("inputs", []), node["outputs"][slot]["type"]
            matches = [i for i, s in enumerate(inputs) if node["type"] == "Reroute" or s["type"] == out_type]
            index = slot if slot in matches else next(iter(matches), None)
            link = None if index is None else inputs[index].get("link")
            return None if link is None else source(link)
        if node["type"] not in object_info:
            raise ValueError(f"node {node_id} ({node['type']}) is not a node type of this ComfyUI")
        return [str(node_id), slot]

    prompt: dict[str, Any] = {}
    for node in sorted(nodes.values(), key=lambda n: n["id"]):
        info = object_info.get(node["type"])
        if info is None or node.get("mode") in (MUTED, BYPASSED):
            continue
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        stored = node.get("widgets_values") or []  # a list; a few custom nodes store a dict by name
        values = iter(stored if isinstance(stored, list) else [])
        inputs: dict[str, Any] = {}
        for name, spec, _ in input_specs(info):
            if is_widget(spec):
                if isinstance(stored, dict):
                    value = stored.get(name)
                else:  # a workflow saved before this widget existed: the front end keeps its default
                    value = next(values, _UNSAVED)
                    value = default_value(spec) if value is _UNSAVED else value
                    for _ in range(control_values(name, spec)):
                        next(values, None)
                if name not in linked:
                    inputs[name] = value
            if name in linked and (delivered := source(linked[name])) is not None:
                inputs[name] = delivered
        title = node.get("title") or info.get("display_name") or node["type"]
        prompt[str(node["id"])] = {"inputs": inputs, "class_type": node["type"], "_meta": {"title": title}}
    return prompt


def _text_width(text: str) -> float:
    """LiteGraph's fallback text measure (14 px font, 0.6 em per character)."""
    return 14 * 0.6 * len(text)


def _node_size(title: str, sockets: list[str], outputs: list[str], widgets: list[tuple[str, Spec]],
               controls: int) -> list[int]:
    """The size a new node gets: LGraphNode.computeSize with LiteGraph's text-width estimate, plus the front end's
    60 px padding for widgets and a multiline text box's minimum of 400×200."""
    rows = max(len(sockets), len(outputs), 1)
    slots = max(map(_text_width, sockets), default=0) + max(map(_text_width, outputs), default=0) + 40
    labels = max((_text_width(name) + 90 for name, _ in widgets), default=0)
    width = max(slots, labels, 40 + _text_width(title), 210 if widgets else 140) + (60 if widgets else 0)
    height = rows * 20 + 6 + (24 * (len(widgets) + controls) + 8 if widgets else 0)
    if any(_options(spec).get("multiline") for _, spec in widgets):
        width, height = max(width, 400), max(height, 200)
    return [round(width), round(height)]


def _plain(value: Any) -> Any:
    """JSON numbers as JavaScript writes them: 7.0 → 7."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _frontend_version() -> str | None:
    try:
        return importlib.metadata.version("comfyui-frontend-package")
    except importlib.metadata.PackageNotFoundError:
        return None


def _columns(prompt: dict[str, Any]) -> dict[str, int]:
    """A column per node: its longest distance from a source, then pulled right next to its nearest consumer."""
    sources = {key: {v[0] for v in node["inputs"].values() if isinstance(v, list)} for key, node in prompt.items()}
    column: dict[str, int] = {}

    def distance(key: str) -> int:
        if key not in column:
            column[key] = 1 + max(map(distance, sources[key]), default=-1)
        return column[key]

    for key in sorted(prompt, key=distance, reverse=True):
        consumers = [column[other] for other in prompt if key in sources[other]]
        if consumers:
            column[key] = min(consumers) - 1
    return column


def api_to_ui(prompt: dict[str, Any], object_info: dict[str, Any], gap: int = 50) -> dict[str, Any]:
    """A UI-format workflow (schema 0.4, as front end 1.32 saves it) from an API prompt with numeric node ids.

    Nodes are laid out left to right in dependency order; control_after_generate values are "fixed" so the
    workflow runs with the seed it carries. The workflow id is derived from the prompt, so output is reproducible.
    """
    ids = sorted(prompt, key=int)
    links: list[list[Any]] = []
    nodes: dict[str, dict[str, Any]] = {}
    for key in ids:
        class_type, given = prompt[key]["class_type"], prompt[key]["inputs"]
        info = object_info[class_type]
        sockets, linked_widgets, widgets, values = [], [], [], []
        for name, spec, optional in input_specs(info):
            value = given.get(name)
            linked = isinstance(value, list)
            slot: dict[str, Any] = {"name": name, **({"shape": OPTIONAL_SHAPE} if optional else {}),
                                    "type": input_type(spec)}
            if is_widget(spec):
                widgets.append((name, spec))
                values.append(_plain(default_value(spec) if value is None or linked else value))
                values += ["fixed", ""][:control_values(name, spec)]
                if not linked:
                    continue
                slot["widget"] = {"name": name}
            if linked:
                source_type = object_info[prompt[value[0]]["class_type"]]["output"][value[1]]
                links.append([len(links) + 1, int(value[0]), value[1], int(key), None, source_type])
            slot["link"] = len(links) if linked else None
            (linked_widgets if linked and is_widget(spec) else sockets).append(slot)
        inputs = sockets + linked_widgets
        for index, slot in enumerate(inputs):  # a link's target slot indexes the saved inputs list
            if slot["link"] is not None:
                links[slot["link"] - 1][4] = index
        title = prompt[key].get("_meta", {}).get("title")
        display = info.get("display_name") or class_type
        nodes[key] = {
            "id": int(key), "type": class_type, "pos": [0, 0],
            "size": _node_size(display, [s["name"] for s in sockets], info["output_name"], widgets,
                               len(values) - len(widgets)),
            "flags": {}, "order": 0, "mode": 0, "inputs": inputs,
            "outputs": [{"name": name, **({"shape": LIST_SHAPE} if is_list else {}), "type": out_type, "links": None}
                        for name, out_type, is_list in zip(
                            info["output_name"], info["output"], info["output_is_list"], strict=True)],
            **({"title": title} if title and title != display else {}),
            "properties": {} if class_type in SAVE_NODE_TYPES else {"Node name for S&R": class_type},
            "widgets_values": values,
        }
    for link_id, source, slot, *_ in links:
        output = nodes[str(source)]["outputs"][slot]
        output["links"] = (output["links"] or []) + [link_id]

    # "order" is LiteGraph's execution order (computeExecutionOrder): Kahn's algorithm, sources in node order.
    pending = {key: sum(slot["link"] is not None for slot in nodes[key]["inputs"]) for key in ids}
    queue = [key for key in ids if not pending[key]]
    for order, key in enumerate(queue):  # the queue grows while it is walked
        nodes[key]["order"] = order
        for link_id in (link_id for output in nodes[key]["outputs"] for link_id in output["links"] or []):
            target = str(links[link_id - 1][3])
            pending[target] -= 1
            if not pending[target]:
                queue.append(target)

    column = _columns(prompt)
    x = 0
    for index in sorted(set(column.values())):
        members = [nodes[key] for key in ids if column[key] == index]
        y = 0
        for node in members:
            node["pos"] = [x, y]
            y += node["size"][1] + 30 + gap  # 30: the title bar above pos
        x += max(node["size"][0] for node in members) + gap

    # No saved view ("ds"): the UI then fits the whole graph into the window when it opens the file.
    extra = {"frontendVersion": version} if (version := _frontend_version()) else {}
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, json.dumps(prompt, sort_keys=True))),
        "revision": 0,
        "last_node_id": max(map(int, ids)),
        "last_link_id": len(links),
        "nodes": [nodes[key] for key in ids],
        "links": links,
        "groups": [],
        "config": {},
        "extra": extra,
        "version": 0.4,
    }
