"""SteerNegative: an extra negative prompt with its own weight, in the same model call (math: guiders/negatives.py)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..guiders.negatives import MODES, ExtraNegative
from .checks import check_inputs
from .hooks import with_steer


class SteerNegative(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SteerNegative",
            display_name="Steer Extra Negative",
            category="sampling/steer",
            description="Push away from one more prompt next to the main negative: D −= scale·(D_extra − D_neg). "
                        "Computed in the same batched model call as the positive and negative. Chain several.",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch; works with KSampler and every guider."),
                io.Conditioning.Input("negative", tooltip="The extra negative prompt (e.g. \"blurry, watermark\"); "
                                      "concrete visual words work, negations do not."),
                io.Float.Input("scale", default=1.0, min=0.0, max=100.0, step=0.05, round=0.01,
                               tooltip="Weight of this negative; 0 disables it."),
                io.Combo.Input("mode", options=list(MODES), default="subtract",
                               tooltip="subtract: the whole direction towards this prompt. perpendicular (Perp-Neg): "
                                       "only its part orthogonal to what the positive asks for, per image."),
            ],
            outputs=[io.Model.Output(tooltip="The model with the extra negative applied.")],
        )

    @classmethod
    def execute(cls, model, negative, scale: float, mode: str) -> io.NodeOutput:
        check_inputs(cls, {"model": model, "negative": negative, "scale": scale, "mode": mode})
        return io.NodeOutput(with_steer(model, ExtraNegative(negative, scale, mode)))
