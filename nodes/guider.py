"""SteerGuider: a GUIDER for SamplerCustomAdvanced whose guidance is Steer's engine.

It is core's CFGGuider over the model with Steer's wrappers installed — the same code KSampler runs with Steer
patches, so both doors give identical latents by construction.
"""

from __future__ import annotations

import comfy.samplers
from comfy_api.v0_0_2 import io

from .checks import check_inputs
from .hooks import with_steer


class SteerGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SteerGuider",
            display_name="Steer Guider",
            category="sampling/steer",
            description="Classifier-free guidance in one batched model call per step, driven by Steer's engine. "
                        "Plug into SamplerCustomAdvanced.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model; Steer patches applied to it take effect here."),
                io.Conditioning.Input("positive", tooltip="What the image should show (the cond branch)."),
                io.Conditioning.Input("negative", tooltip="What to steer away from (the uncond branch); "
                                      "an empty prompt gives plain classifier-free guidance."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Guidance scale s in D = D_neg + s·(D_pos − D_neg). 1.0 = no guidance "
                                       "(the negative is not computed at all), typical 4–8 for SD1.5/SDXL."),
            ],
            outputs=[io.Guider.Output(tooltip="A guider for SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, cfg: float) -> io.NodeOutput:
        check_inputs(cls, {"model": model, "positive": positive, "negative": negative,
                           "cfg": cfg})
        guider = comfy.samplers.CFGGuider(with_steer(model))
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return io.NodeOutput(guider)
