"""Shared fixtures: a real ComfyUI imported in-process (CPU) with Steer loaded by ComfyUI's own loader."""

from __future__ import annotations

import asyncio
import sys
from types import ModuleType

import pytest

from testbed.comfy import BASE, import_comfy


@pytest.fixture(scope="session")
def steer() -> ModuleType:
    """The Steer package as ComfyUI loaded it from custom_nodes/ (its node classes are registered in `nodes`)."""
    import_comfy()
    import nodes

    pack = BASE / "custom_nodes" / "comfyui-steer"
    assert asyncio.run(nodes.load_custom_node(str(pack))), "ComfyUI failed to load Steer"
    return sys.modules[str(pack).replace(".", "_x_")]
