"""Steer's guidance math: pure torch over x0-space tensors, no ComfyUI import.

One module per method; `engine` decides which branches an evaluation needs and combines them.
"""
