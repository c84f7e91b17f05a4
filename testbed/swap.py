"""What the test bed changes in an example before running it: the tiny models for the real checkpoints, 64² instead
of 512²/1024², at most 8 steps, and perturbation blocks the tiny model has. The example files stay as people use them.

Blocks: the tiny SD1.5 UNet (what SD1.5 and SDXL examples run on) has SD1.5's and SDXL's default block, `middle.0`,
so `auto` and `middle.0` stay. The tiny SD3 MMDiT has one joint block, double.0, where SD3.5 has 24 (Medium) or 38
(Large): a perturbation node's `blocks` (`double.7-9`, or `auto`, which stands for it) becomes `double.0` on it, the
family's `testbed_blocks`. The nodes themselves are unchanged: on the tiny SD3 they refuse double.7-9 as on any model
that lacks those blocks.

The same rules, as `TESTBED_VALUES` and `TESTBED_BLOCKS`, drive the browser tests, which swap the widget values in
the page.
"""

from __future__ import annotations

import copy
from typing import Any

from testbed.examples import FAMILIES

TESTBED_SIZE = 64
TESTBED_STEPS = 8

# By input (widget) name: a table of replacements, or a cap for numbers.
TESTBED_VALUES: dict[str, Any] = {
    "ckpt_name": {family.checkpoint: family.testbed_checkpoint for family in FAMILIES},
    "width": TESTBED_SIZE,
    "height": TESTBED_SIZE,
    "steps": TESTBED_STEPS,
}
# By the example's checkpoint: what every `blocks` input becomes on the tiny model that replaces it.
TESTBED_BLOCKS: dict[str, str] = {family.checkpoint: family.testbed_blocks for family in FAMILIES
                                  if family.testbed_blocks}


def swapped_value(name: str, value: Any) -> Any:
    """The test bed's value for input `name` given the example's `value` (links and other inputs unchanged)."""
    rule = TESTBED_VALUES.get(name)
    if isinstance(rule, dict):
        return rule.get(value, value) if isinstance(value, str) else value
    if rule is not None and isinstance(value, int | float) and not isinstance(value, bool):
        return min(value, rule)
    return value


def for_testbed(prompt: dict[str, Any]) -> dict[str, Any]:
    """A copy of the API prompt `prompt` that runs on the test bed's tiny models in seconds."""
    prompt = copy.deepcopy(prompt)
    checkpoints = [node["inputs"].get("ckpt_name") for node in prompt.values()]
    blocks = next((TESTBED_BLOCKS[name] for name in checkpoints if name in TESTBED_BLOCKS), None)
    for node in prompt.values():
        node["inputs"] = {name: swapped_value(name, value) for name, value in node["inputs"].items()}
        if blocks is not None and isinstance(node["inputs"].get("blocks"), str):
            node["inputs"]["blocks"] = blocks
    return prompt


def steer_branch(prompt: dict[str, Any]) -> dict[str, Any]:
    """The part of an example's API prompt that makes what it saves (the Steer image, or a training example's LoRA):
    the SaveImage / SaveLoRA nodes and what they depend on, without the plain-CFG comparison that only previews."""
    keep: set[str] = set()
    todo = [key for key, node in prompt.items() if node["class_type"] in ("SaveImage", "SaveLoRA")]
    while todo:
        key = todo.pop()
        if key not in keep:
            keep.add(key)
            todo += [value[0] for value in prompt[key]["inputs"].values() if isinstance(value, list)]
    return {key: node for key, node in prompt.items() if key in keep}
