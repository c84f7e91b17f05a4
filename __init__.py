"""Steer — guidance for ComfyUI: CFG and friends, every branch of a step in one batched model call."""

from .nodes import comfy_entrypoint

WEB_DIRECTORY = "./js"

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
