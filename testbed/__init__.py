"""Steer's test bed: a real ComfyUI, tiny deterministic models, and a server harness (tests and scripts only)."""
