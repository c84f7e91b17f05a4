"""SteerDynamicThreshold: keep high guidance scales from saturating (math: guiders/threshold.py)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..guiders.threshold import MODES, STARTPOINTS, VARIABILITIES, DynamicThreshold
from .checks import check_inputs
from .hooks import with_steer


class SteerDynamicThreshold(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SteerDynamicThreshold",
            display_name="Steer Dynamic Threshold",
            category="sampling/steer",
            description="Guide at a high scale without burning: each image's guided prediction is rescaled per "
                        "channel to the spread it would have at mimic_scale (latent), or clamped Imagen-style.",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch; works with KSampler and every guider."),
                io.Combo.Input("mode", options=list(MODES), default="latent",
                               tooltip="latent: the mimic-scale method for latent models (statistics per image and "
                                       "channel). imagen: Saharia et al.'s percentile clamp, made for pixel space."),
                io.Float.Input("mimic_scale", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="latent: the scale whose spread the result imitates; set the sampler's cfg "
                                       "higher than this."),
                io.Float.Input("threshold_percentile", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="latent: the quantile of |guided − mean| taken as its spread (1.0 = max). "
                                       "imagen: the quantile p of |x0| (the paper uses 0.995)."),
                io.Combo.Input("startpoint", options=list(STARTPOINTS), default="MEAN",
                               tooltip="latent: MEAN rescales around each channel's mean; ZERO scales the values "
                                       "themselves."),
                io.Combo.Input("variability", options=list(VARIABILITIES), default="AD",
                               tooltip="latent: AD measures spread by absolute deviation (max / percentile), STD by "
                                       "standard deviation."),
                io.Float.Input("interpolate_phi", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="latent: blend of thresholded (1.0) and plain guided (0.0) result."),
            ],
            outputs=[io.Model.Output(tooltip="The model with dynamic thresholding applied.")],
        )

    @classmethod
    def execute(cls, model, mode: str, mimic_scale: float, threshold_percentile: float, startpoint: str,
                variability: str, interpolate_phi: float) -> io.NodeOutput:
        check_inputs(cls, {"model": model, "mode": mode, "mimic_scale": mimic_scale,
                           "threshold_percentile": threshold_percentile, "startpoint": startpoint,
                           "variability": variability, "interpolate_phi": interpolate_phi})
        settings = DynamicThreshold(mode, mimic_scale, threshold_percentile, startpoint, variability, interpolate_phi)
        return io.NodeOutput(with_steer(model, settings))
