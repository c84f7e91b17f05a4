"""Pictures for the analysis nodes, drawn with PIL (which ComfyUI itself requires), so the pack needs no plotting
library: labelled grids (SteerSweep) and per-step charts (SteerTracePlot). IMAGE tensors are [B, H, W, 3] in 0–1."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

INK, PAPER, FAINT, SHADE, LINE = (20, 20, 20), (255, 255, 255), (200, 200, 200), (232, 232, 232), (30, 90, 200)
LABEL = 22  # height of a chart's text band, in pixels


def to_pil(image: torch.Tensor) -> Image.Image:
    """One [H, W, C] image in 0–1 (C = 1, 3 or 4) as an RGB picture."""
    pixels = (image.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    if pixels.shape[-1] == 1:
        pixels = pixels.repeat(3, axis=-1)
    return Image.fromarray(pixels[..., :3], "RGB")


def to_image(pictures: Sequence[Image.Image]) -> torch.Tensor:
    """Pictures of one size as an IMAGE batch."""
    return torch.from_numpy(np.stack([np.asarray(p.convert("RGB"), dtype=np.float32) / 255.0 for p in pictures]))


def _font(size: int = 11) -> ImageFont.ImageFont:
    """PIL's own font at `size` px (Pillow ≥ 10.1 with FreeType), else its fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def labelled_grid(cells: Sequence[Sequence[Image.Image]], column_labels: Sequence[str],
                  row_labels: Sequence[str]) -> Image.Image:
    """Pictures of one size in rows × columns, with a label band above each column and a label column on the left
    (omitted when there is one unnamed row); the text grows with the pictures (1/20 of their height, at least 11 px)."""
    width, height = cells[0][0].size
    font = _font(max(11, height // 20))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_height = int(measure.textbbox((0, 0), "cfg 0.5", font=font)[3])
    band = text_height + 10
    label_width = max((int(measure.textlength(t, font=font)) for t in row_labels if t), default=-12) + 12
    grid = Image.new("RGB", (label_width + width * len(column_labels), band + height * len(row_labels)), PAPER)
    draw = ImageDraw.Draw(grid)
    for column, text in enumerate(column_labels):
        draw.text((label_width + column * width + 4, 5), text, fill=INK, font=font)
    for row, (text, pictures) in enumerate(zip(row_labels, cells, strict=True)):
        top = band + row * height
        draw.text((4, top + (height - text_height) // 2), text, fill=INK, font=font)
        for column, picture in enumerate(pictures):
            grid.paste(picture, (label_width + column * width, top))
    return grid


PANEL, MARGIN, PLOT_WIDTH = 74, 70, 620


def _range(values: Sequence[float]) -> tuple[float, float] | None:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    low, high = min(finite), max(finite)
    if high - low < 1e-12 * max(1.0, abs(high)):
        pad = max(abs(high) * 0.1, 1e-3)
        low, high = low - pad, high + pad
    return low, high


def _number(value: float) -> str:
    return f"{value:.4g}"


def trace_chart(title: str, series: Sequence[tuple[str, Sequence[float]]], shaded: Sequence[bool],
                bars: Sequence[str] = ()) -> Image.Image:
    """One panel per named series over the steps (x = step), shaded where `shaded` (e.g. CFG-skipped steps); series
    named in `bars` are drawn as bars, the others as lines with a dot per step. A series without a finite value says
    that it did not apply."""
    steps = len(shaded)
    picture = Image.new("RGB", (MARGIN + PLOT_WIDTH + 20, LABEL + PANEL * len(series) + LABEL), PAPER)
    draw = ImageDraw.Draw(picture)
    draw.text((6, 5), title, fill=INK, font=_font())
    step_width = PLOT_WIDTH / max(steps, 1)

    def x_of(step: float) -> float:
        return MARGIN + (step + 0.5) * step_width

    for index, (name, values) in enumerate(series):
        top = LABEL + index * PANEL
        plot_top, plot_bottom = top + 16, top + PANEL - 8
        draw.text((6, top + 2), name, fill=INK, font=_font())
        for step in range(steps):
            if shaded[step]:
                draw.rectangle((MARGIN + step * step_width, plot_top, MARGIN + (step + 1) * step_width, plot_bottom),
                               fill=SHADE)
        draw.rectangle((MARGIN, plot_top, MARGIN + PLOT_WIDTH, plot_bottom), outline=FAINT)
        span = _range([0.0, *values] if name in bars else values)  # bars stand on 0
        if span is None or not any(math.isfinite(v) for v in values):
            draw.text((MARGIN + 8, plot_top + 8), "not used in this run", fill=INK, font=_font())
            continue
        low, high = span
        draw.text((6, plot_top + 2), _number(high), fill=INK, font=_font())
        draw.text((6, plot_bottom - 12), _number(low), fill=INK, font=_font())

        def y_of(value: float, low: float = low, high: float = high, top: int = plot_top,
                 bottom: int = plot_bottom) -> float:
            return bottom - (value - low) / (high - low) * (bottom - top)

        points = [(x_of(step), y_of(v)) if math.isfinite(v) else None for step, v in enumerate(values)]
        if name in bars:
            for point in points:
                if point is not None:
                    draw.rectangle((point[0] - step_width * 0.3, point[1], point[0] + step_width * 0.3, plot_bottom),
                                   fill=LINE)
            continue
        for start, end in zip(points, points[1:], strict=False):
            if start is not None and end is not None:
                draw.line((start, end), fill=LINE, width=2)
        for point in points:
            if point is not None:
                draw.ellipse((point[0] - 2, point[1] - 2, point[0] + 2, point[1] + 2), fill=LINE)
    bottom = LABEL + PANEL * len(series)
    every = max(1, math.ceil(steps / 20))
    for step in range(0, steps, every):
        draw.text((x_of(step) - 3, bottom + 4), str(step), fill=INK, font=_font())
    return picture
