"""SteerPAG: perturbed-attention guidance in the same batched model call as CFG (math: guiders/pag.py)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from .perturbing import AUTO, blocks_tooltip, patched, validate, window_inputs


class SteerPAG(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SteerPAG",
            display_name="Steer Perturbed-Attention Guidance",
            category="sampling/steer",
            description="PAG (Ahn et al. 2024): also run the positive with identity self-attention in chosen blocks "
                        "and steer away from that degraded prediction. On DiTs (SD3, Flux, Wan, …) image queries "
                        "still attend to the text. Computed in the same batched model call as the positive and "
                        "negative (3 rows per image instead of 2 + a second call).",
            inputs=[
                io.Model.Input("model", tooltip="A UNet (SD1.5, SDXL) or DiT (SD3, Flux, Chroma, HunyuanVideo, Wan, "
                                                "Qwen-Image) model; works with KSampler and every guider."),
                io.Float.Input("scale", default=3.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="PAG scale s_p in D += s_p·(D_pos − D_perturbed); the paper uses 3.0 "
                                       "(with cfg 4.0). 0 disables it."),
                io.String.Input("blocks", default=AUTO, tooltip=blocks_tooltip("pag")),
                *window_inputs(),
            ],
            outputs=[io.Model.Output(tooltip="The model with PAG applied.")],
        )

    @classmethod
    def validate_inputs(cls, **values) -> bool | str:
        return validate(cls, values)

    @classmethod
    def execute(cls, model, **values) -> io.NodeOutput:
        return patched(cls, "pag", model, values)
