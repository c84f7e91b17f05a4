"""SteerSkipLayer: skip-layer guidance in the same batched model call as CFG (math: guiders/skip_layer.py)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from .perturbing import AUTO, blocks_tooltip, patched, validate, window_inputs


class SteerSkipLayer(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SteerSkipLayer",
            display_name="Steer Skip-Layer Guidance",
            category="sampling/steer",
            description="Skip-layer guidance (SD3.5, Wan, Flux users' SLG; STG for video): also run the positive "
                        "with chosen DiT blocks passed through and steer away from that prediction. Same math as "
                        "core's SkipLayerGuidanceDiT, but in the same batched model call and rescaled per image.",
            inputs=[
                io.Model.Input("model", tooltip="A DiT model (SD3/SD3.5, Flux, Chroma, HunyuanVideo, Wan, Qwen-Image); "
                                                "works with KSampler and every guider."),
                io.Float.Input("scale", default=3.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Scale in D += s·(D_pos − D_skipped); core and Stability use 3.0. 0 disables "
                                       "it."),
                io.String.Input("blocks", default=AUTO, tooltip=blocks_tooltip("skip")),
                *window_inputs(0.01, 0.15),
            ],
            outputs=[io.Model.Output(tooltip="The model with skip-layer guidance applied.")],
        )

    @classmethod
    def validate_inputs(cls, **values) -> bool | str:
        return validate(cls, values)

    @classmethod
    def execute(cls, model, **values) -> io.NodeOutput:
        return patched(cls, "skip", model, values)
