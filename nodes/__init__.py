"""ComfyUI adapters: node schemas and the guider. The math lives in `guiders/`."""

from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension, io

from .guider import SteerGuider
from .negative import SteerNegative
from .pag import SteerPAG
from .schedule import SteerScaleSchedule
from .skip import SteerCFGSkip
from .threshold import SteerDynamicThreshold


class SteerExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [SteerGuider, SteerScaleSchedule, SteerDynamicThreshold, SteerCFGSkip, SteerNegative, SteerPAG]


async def comfy_entrypoint() -> SteerExtension:
    return SteerExtension()
