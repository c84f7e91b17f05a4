"""SteerDynamicThreshold: keep high guidance scales from saturating (math: guiders/threshold.py)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..guiders.schedule import CURVES, ScaleSchedule
from ..guiders.threshold import AUTO_PERCENTILE, MODES, STARTPOINTS, VARIABILITIES, DynamicThreshold, settings_problem
from .checks import Values, check_inputs, known, validation
from .hooks import with_steer

NODE = "SteerDynamicThreshold"
MIMIC_CURVES = tuple(curve for curve in CURVES if curve not in ("step_down", "step_up", "custom"))


def _cross(values: Values) -> None:
    if known(values, "mode", "threshold_percentile", "startpoint", "variability"):
        problem = settings_problem(values["mode"], values["threshold_percentile"], values["startpoint"],
                                   values["variability"])
        if problem:
            raise ValueError(problem)


def _mimic_schedule(curve: str, mimic_scale_min: float, curve_value: float) -> ScaleSchedule:
    """The mimic scale over the run: curve_value is the exponent of power_* and the cycles of the periodic curves."""
    return ScaleSchedule(curve, mimic_scale_min, exponent=curve_value, cycles=curve_value)


class SteerDynamicThreshold(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
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
                io.Float.Input("threshold_percentile", default=AUTO_PERCENTILE, min=AUTO_PERCENTILE, max=1.0,
                               step=0.001,
                               tooltip="-1 = each mode's own: 1.0 for latent (mcmonkey's), 0.995 for imagen (the "
                                       "paper's). latent: the quantile of |guided − mean| taken as its spread (1.0 = "
                                       "max; MEAN clamps there, any 0–1; ZERO needs 0.5–1). imagen: the quantile p "
                                       "of |x0|; at 1.0 imagen only rescales and never clamps."),
                io.Combo.Input("startpoint", options=list(STARTPOINTS), default="MEAN",
                               tooltip="latent: MEAN rescales around each channel's mean; ZERO scales the values "
                                       "themselves."),
                io.Combo.Input("variability", options=list(VARIABILITIES), default="AD",
                               tooltip="latent: AD measures spread by absolute deviation (max / percentile), STD by "
                                       "standard deviation."),
                io.Float.Input("interpolate_phi", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="latent: blend of thresholded (1.0) and plain guided (0.0) result."),
                io.Combo.Input("mimic_curve", options=list(MIMIC_CURVES), default="constant", optional=True,
                               tooltip="latent: how the mimic scale moves over the run (mcmonkey's mimic_mode), "
                                       "between mimic_scale (f = 1) and mimic_scale_min (f = 0); the curves are "
                                       "SteerScaleSchedule's. constant: mimic_scale at every step."),
                io.Float.Input("mimic_scale_min", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01, optional=True,
                               tooltip="latent: the mimic scale where the mimic_curve is 0 (mcmonkey's "
                                       "mimic_scale_min); unused with constant."),
                io.Float.Input("mimic_curve_value", default=1.0, min=0.0, max=100.0, step=0.01, optional=True,
                               tooltip="latent: the exponent e of power_down / power_up, or the number of cycles "
                                       "over the run of linear_repeating / cosine_repeating / sawtooth "
                                       "(mcmonkey's sched_val)."),
                io.Boolean.Input("separate_feature_channels", default=True, optional=True,
                                 tooltip="latent: on, spreads are measured per channel of each image; off, over all "
                                         "channels of each image together (never across the images of a batch)."),
            ],  # the inputs from mimic_curve on are optional: prompts saved before them run as they did
            outputs=[io.Model.Output(tooltip="The model with dynamic thresholding applied.")],
        )

    @classmethod
    def validate_inputs(cls, mode: str | None = None, threshold_percentile: float | None = None,
                        startpoint: str | None = None, variability: str | None = None) -> bool | str:
        return validation(cls, {"mode": mode, "threshold_percentile": threshold_percentile, "startpoint": startpoint,
                                "variability": variability}, _cross)

    @classmethod
    def execute(cls, model, mode: str, mimic_scale: float, threshold_percentile: float, startpoint: str,
                variability: str, interpolate_phi: float, mimic_curve: str = "constant", mimic_scale_min: float = 1.0,
                mimic_curve_value: float = 1.0, separate_feature_channels: bool = True) -> io.NodeOutput:
        check_inputs(cls, {"model": model, "mode": mode, "mimic_scale": mimic_scale,
                           "threshold_percentile": threshold_percentile, "startpoint": startpoint,
                           "variability": variability, "interpolate_phi": interpolate_phi, "mimic_curve": mimic_curve,
                           "mimic_scale_min": mimic_scale_min, "mimic_curve_value": mimic_curve_value,
                           "separate_feature_channels": separate_feature_channels}, _cross)
        settings = DynamicThreshold(mode, mimic_scale, threshold_percentile, startpoint, variability, interpolate_phi,
                                    _mimic_schedule(mimic_curve, mimic_scale_min, mimic_curve_value),
                                    separate_feature_channels)
        return io.NodeOutput(with_steer(model, settings))
