"""SteerCFGSkip: guide only where it helps, and do not compute the negative elsewhere (math: guiders/skip.py)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..guiders.skip import MODES, CFGSkip
from .checks import Values, check_inputs, known, percent_window, validation
from .hooks import with_steer

NODE = "SteerCFGSkip"


def _cross(values: Values) -> None:
    mode = values.get("mode")
    if mode == "percent":
        percent_window(values)
    if mode == "sigma" and known(values, "sigma_low", "sigma_high") and values["sigma_low"] >= values["sigma_high"]:
        raise ValueError(f"input 'sigma_low' ({values['sigma_low']}) must be below sigma_high "
                         f"({values['sigma_high']}); both lie in 0–1000")


class SteerCFGSkip(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
            display_name="Steer CFG Skip",
            category="sampling/steer",
            description="Skip classifier-free guidance on some steps: there only the positive is computed (half the "
                        "model rows) and it is used as is. Guidance interval (Kynkäänniemi et al. 2024) or adaptive "
                        "(Castillo et al. 2023).",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch; works with KSampler and every guider."),
                io.Combo.Input("mode", options=list(MODES), default="percent",
                               tooltip="percent: guide on steps whose progress lies in [start_percent, end_percent]. "
                                       "sigma: guide on steps whose sigma lies in (sigma_low, sigma_high]. adaptive: "
                                       "each image stops being guided once its positive and negative predictions "
                                       "agree (cosine ≥ threshold)."),
                io.Float.Input("start_percent", default=0.4, min=0.0, max=1.0, step=0.01,
                               tooltip="percent: first guided progress (0 = first step, 1 = last step)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="percent: last guided progress."),
                io.Float.Input("sigma_high", default=5.42, min=0.0, max=1000.0, step=0.01,
                               tooltip="sigma: upper end of the guided interval (included). 5.42 is the paper's SD-XL "
                                       "value (SD1.5 shares its sigma range); flow models (SD3, Flux) run σ 1 → 0."),
                io.Float.Input("sigma_low", default=0.28, min=0.0, max=1000.0, step=0.01,
                               tooltip="sigma: lower end of the guided interval (excluded). 0.28 is the paper's SD-XL "
                                       "value; flow models (SD3, Flux) need values within 0–1."),
                io.Float.Input("threshold", default=0.99, min=0.0, max=1.0, step=0.001,
                               tooltip="adaptive: cosine between the positive and negative noise predictions at "
                                       "which an image switches to positive-only for the rest of the run."),
            ],
            outputs=[io.Model.Output(tooltip="The model with CFG skipping applied.")],
        )

    @classmethod
    def validate_inputs(cls, mode: str | None = None, start_percent: float | None = None,
                        end_percent: float | None = None, sigma_high: float | None = None,
                        sigma_low: float | None = None) -> bool | str:
        return validation(cls, {"mode": mode, "start_percent": start_percent, "end_percent": end_percent,
                                "sigma_high": sigma_high, "sigma_low": sigma_low}, _cross)

    @classmethod
    def execute(cls, model, mode: str, start_percent: float, end_percent: float, sigma_high: float, sigma_low: float,
                threshold: float) -> io.NodeOutput:
        check_inputs(cls, {"model": model, "mode": mode, "start_percent": start_percent, "end_percent": end_percent,
                           "sigma_high": sigma_high, "sigma_low": sigma_low, "threshold": threshold}, _cross)
        skip = CFGSkip(mode, start_percent, end_percent, sigma_high, sigma_low, threshold)
        return io.NodeOutput(with_steer(model, skip))
