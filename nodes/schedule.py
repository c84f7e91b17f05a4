"""SteerScaleSchedule: a guidance scale that changes over the run (math: guiders/schedule.py)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..guiders.schedule import CURVES, ScaleSchedule, parse_custom
from .checks import Values, check_inputs, validation
from .hooks import with_steer

NODE = "SteerScaleSchedule"


def _custom_scales(custom: str) -> tuple[float, ...]:
    try:
        return parse_custom(custom)
    except ValueError as error:
        raise ValueError(f"input 'custom': {error}; expected per-step scales ≥ 0 such as \"12, 10, 8, 5\"") from None


def _cross(values: Values) -> None:
    custom, curve = values.get("custom"), values.get("curve")
    if custom is not None and custom.strip():
        _custom_scales(custom)
    if curve == "custom" and custom is not None and not custom.strip():
        raise ValueError("input 'custom': curve is 'custom' but no scales are given; write one scale per step, "
                         "e.g. \"12, 10, 8, 5\"")


class SteerScaleSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
            display_name="Steer Scale Schedule",
            category="sampling/steer",
            description="Vary the guidance scale over the run: s = cfg_min + (cfg − cfg_min)·f(progress), "
                        "progress 0 at the first step and 1 at the last. Steps whose scale is 1.0 skip the negative "
                        "pass entirely.",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch; works with KSampler and every guider."),
                io.Combo.Input("curve", options=list(CURVES), default="linear_down",
                               tooltip="f(p): constant 1; linear_down 1−p; linear_up p; cosine_down (1+cos πp)/2; "
                                       "cosine_up (1−cos πp)/2; step_down 1 before switch_at, then 0; step_up "
                                       "the reverse; power_down 1−p^exponent; power_up p^exponent; as in mcmonkey's "
                                       "Dynamic Thresholding: half_cosine_down cos p (ends at 0.54), half_cosine_up "
                                       "1−cos p, linear_repeating a 1→0→1 triangle per cycle, cosine_repeating "
                                       "(1+cos 2π·cycles·p)/2, sawtooth (cycles·p) mod 1; custom: the list below."),
                io.Float.Input("cfg_min", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="The scale where f = 0. The sampler's / guider's cfg is the scale where f = 1."),
                io.Float.Input("switch_at", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="step_down / step_up: the progress (0–1) where the scale switches."),
                io.Float.Input("exponent", default=2.0, min=0.01, max=10.0, step=0.01,
                               tooltip="power_down / power_up: the exponent e of p^e."),
                io.String.Input("custom", default="", multiline=False,
                                tooltip="custom: absolute scales per step, e.g. \"12, 10, 8, 5\"; with fewer values "
                                        "than steps the last one holds, values beyond the run's steps are unused "
                                        "(the log says so)."),
                io.Float.Input("cycles", default=1.0, min=0.0, max=100.0, step=0.01, optional=True,
                               tooltip="linear_repeating / cosine_repeating / sawtooth: periods over the run "
                                       "(mcmonkey's sched_val)."),
            ],
            outputs=[io.Model.Output(tooltip="The model with the schedule applied.")],
        )

    @classmethod
    def validate_inputs(cls, curve: str | None = None, custom: str | None = None) -> bool | str:
        return validation(cls, {"curve": curve, "custom": custom}, _cross)

    @classmethod
    def execute(cls, model, curve: str, cfg_min: float, switch_at: float, exponent: float,
                custom: str, cycles: float = 1.0) -> io.NodeOutput:
        check_inputs(cls, {"model": model, "curve": curve, "cfg_min": cfg_min, "switch_at": switch_at,
                           "exponent": exponent, "custom": custom, "cycles": cycles}, _cross)
        scales = _custom_scales(custom) if curve == "custom" else ()
        schedule = ScaleSchedule(curve, cfg_min, switch_at, exponent, scales, cycles)
        return io.NodeOutput(with_steer(model, schedule))
