"""ComfyUI adapters: node schemas and the guider. The math lives in `guiders/`."""

from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension, io

from .cfg_pp import SteerCFGPPSampler, register_ksampler_names
from .dropout import SteerConditionDropout
from .guider import SteerGuider
from .negative import SteerNegative
from .pag import SteerPAG
from .preview import register_routes
from .schedule import SteerScaleSchedule
from .seg import SteerSEG
from .skip import SteerCFGSkip
from .skip_layer import SteerSkipLayer
from .sweep import SteerSweep
from .threshold import SteerDynamicThreshold
from .trace import SteerTrace, SteerTracePlot

register_ksampler_names()  # KSampler / KSamplerSelect list samplers by name only: see nodes/cfg_pp.py
register_routes()  # read-only previews for js/steer.js: see nodes/preview.py


class SteerExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [SteerGuider, SteerScaleSchedule, SteerDynamicThreshold, SteerCFGSkip, SteerNegative, SteerPAG,
                SteerSEG, SteerSkipLayer, SteerCFGPPSampler, SteerConditionDropout, SteerSweep, SteerTrace,
                SteerTracePlot]


async def comfy_entrypoint() -> SteerExtension:
    return SteerExtension()
