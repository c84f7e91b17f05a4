"""Input checks shared by nodes: errors that name the node as the user sees it, the input and what is accepted.

Every check that does not need the model runs twice: in `validate_inputs`, so a bad prompt is refused when it is
queued, and again in `execute`, where values that came through a link arrive (ComfyUI 0.3.75 hands `validate_inputs`
None for a linked input, and checks nothing of a linked value). ComfyUI skips its own range and option checks for
the inputs a `validate_inputs` names, so `check_inputs` does them from the schema (NaN included, which ComfyUI's own
range check lets through); nodes without checks between inputs leave validation to ComfyUI and check in execute.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from comfy_api.v0_0_2 import io

Values = dict[str, Any]
CrossCheck = Callable[[Values], None]  # raises ValueError("input 'x' ...") on values that do not fit together


def node_label(node: type[io.ComfyNode]) -> str:
    """The node as the user sees it, with its id: "Steer CFG Skip (SteerCFGSkip)"."""
    schema = node.define_schema()
    return f"{schema.display_name} ({schema.node_id})"


WIDGETS = (io.Float.Input, io.Int.Input, io.Combo.Input, io.String.Input, io.Boolean.Input)


def _check_value(spec: io.Input, value: Any) -> None:
    """One value against its input's schema: numbers finite and in range, combos among the options, strings
    strings, and a socket fed by a link (a literal there means the prompt wired a value where a link belongs)."""
    if isinstance(spec, (io.Float.Input, io.Int.Input)):
        accepted = f"accepted range {spec.min}–{spec.max}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"input '{spec.id}' ({value!r}) is not a number; {accepted}")
        if not math.isfinite(value):
            raise ValueError(f"input '{spec.id}' is {'NaN' if math.isnan(value) else 'infinite'}; {accepted}")
        if isinstance(spec, io.Int.Input) and not float(value).is_integer():
            raise ValueError(f"input '{spec.id}' ({value!r}) is not a whole number; {accepted}")
        if (spec.min is not None and value < spec.min) or (spec.max is not None and value > spec.max):
            raise ValueError(f"input '{spec.id}' ({value}) is out of range; {accepted}")
    elif isinstance(spec, io.Combo.Input):
        if value not in spec.options:
            raise ValueError(f"input '{spec.id}' ({value!r}) is not one of {', '.join(map(str, spec.options))}")
    elif isinstance(spec, io.String.Input):
        if not isinstance(value, str):
            raise ValueError(f"input '{spec.id}' ({value!r}) is not text")
    elif not isinstance(spec, WIDGETS) and isinstance(value, (str, int, float, bool)):
        raise ValueError(f"input '{spec.id}' must be connected to a {spec.get_io_type()} output, not given the value "
                         f"{value!r}")


def _check(node: type[io.ComfyNode], values: Values, cross: CrossCheck | None, arrived: bool) -> None:
    try:
        for spec in node.define_schema().inputs:
            if spec.id not in values:
                continue
            if values[spec.id] is not None:
                _check_value(spec, values[spec.id])
            elif arrived and (not spec.optional or isinstance(spec, WIDGETS)):
                # An optional widget left out arrives as its default; None is a null in the prompt.
                raise ValueError(f"input '{spec.id}' has no value")
        if cross is not None:
            cross(values)
    except ValueError as error:
        raise ValueError(f"{node_label(node)}: {error}") from None


def check_inputs(node: type[io.ComfyNode], values: Values, cross: CrossCheck | None = None) -> None:
    """Check the values a node's `execute` received against its schema and `cross` (checks between inputs); a
    required input or an optional widget given as None is an error here. Raises ValueError naming the node and the
    input."""
    _check(node, values, cross, arrived=True)


def validation(node: type[io.ComfyNode], values: Values, cross: CrossCheck | None = None) -> bool | str:
    """The same checks as ComfyUI's validate_inputs wants them, True or the message that refuses the prompt. None
    stands for a linked input whose value is not known yet and is skipped (`cross` must skip it too)."""
    try:
        _check(node, values, cross, arrived=False)
    except ValueError as error:
        return str(error)
    return True


def known(values: Values, *names: str) -> bool:
    """Whether every one of `names` has a value already (not linked, or arrived)."""
    return all(values.get(name) is not None for name in names)


def percent_window(values: Values) -> None:
    if known(values, "start_percent", "end_percent") and values["start_percent"] > values["end_percent"]:
        raise ValueError(f"input 'start_percent' ({values['start_percent']}) must not exceed end_percent "
                         f"({values['end_percent']}); both lie in 0.0–1.0")
