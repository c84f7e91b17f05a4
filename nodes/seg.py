"""SteerSEG: smoothed energy guidance in the same batched model call as CFG (math: guiders/seg.py)."""

from __future__ import annotations

import math

from comfy_api.v0_0_2 import io

from ..guiders.seg import INFINITE_BLUR
from .perturbing import AUTO, blocks_tooltip, patched, validate, window_inputs


class SteerSEG(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SteerSEG",
            display_name="Steer Smoothed Energy Guidance",
            category="sampling/steer",
            description="SEG (Hong 2024): also run the positive with its self-attention queries blurred in chosen "
                        "blocks and steer away from that smoothed prediction; fewer side effects than a high CFG. "
                        "Computed in the same batched model call as the positive and negative.",
            inputs=[
                io.Model.Input("model", tooltip="A UNet (SD1.5, SDXL) or DiT (SD3, Flux, Chroma, HunyuanVideo, Wan, "
                                                "Qwen-Image) model; works with KSampler and every guider."),
                io.Float.Input("scale", default=3.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="SEG scale in D += s·(D_pos − D_blurred); the paper fixes 3.0. 0 disables it."),
                io.Float.Input("blur_sigma", default=-1.0, min=-1.0, max=10000.0, step=0.01,
                               tooltip=f"Gaussian σ of the query blur, in tokens; −1 or above {INFINITE_BLUR:g} = "
                                       "infinite (every query the mean: uniform attention). The paper: 100 or "
                                       "infinite; try 1, 4, 16, … Video is blurred per frame."),
                io.String.Input("blocks", default=AUTO, tooltip=blocks_tooltip("seg")),
                *window_inputs(),
            ],
            outputs=[io.Model.Output(tooltip="The model with SEG applied.")],
        )

    @classmethod
    def validate_inputs(cls, **values) -> bool | str:
        return validate(cls, values)

    @classmethod
    def execute(cls, model, blur_sigma: float, **values) -> io.NodeOutput:
        return patched(cls, "seg", model, values | {"blur_sigma": blur_sigma},
                       blur_sigma=math.inf if blur_sigma < 0 else blur_sigma)
