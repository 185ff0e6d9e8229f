"""PNG previews of expert maps, so a person can look at what each expert saw."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..atomic import atomic_path
from ..experts.contract import DenseMap, ExpertOutput

PREVIEW_HEIGHT = 256


def palette(count: int) -> np.ndarray:
    """``count + 1`` distinct colours; index 0 (background) is black."""
    colours = [(0, 0, 0)]
    for i in range(count):
        hue = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.65, 0.95)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return np.asarray(colours, dtype=np.uint8)


def render_map(output: ExpertOutput) -> tuple[np.ndarray, list[tuple[str, tuple[int, int]]]]:
    """An RGB picture of a map, and (name, position) labels to write on it for semantic maps."""
    if isinstance(output, DenseMap):
        data = output.data
        if data.shape[2] == 3:
            rgb = (data + 1.0) * 127.5
        else:
            grey = (data[..., :1] + 1.0) * 127.5
            rgb = np.repeat(grey, 3, axis=2)
        return np.clip(rgb, 0, 255).astype(np.uint8), []
    labels = output.labels
    rgb = palette(len(output.names))[np.clip(labels, 0, len(output.names))]
    tags = []
    for index, name in enumerate(output.names, start=1):
        ys, xs = np.nonzero(labels == index)
        if len(xs):
            tags.append((name, (int(xs.mean()), int(ys.mean()))))
    return rgb, tags


def write_preview(path: str | Path, image: np.ndarray, output: ExpertOutput, title: str) -> None:
    """Write :func:`preview_picture` atomically, as a PNG."""
    canvas = preview_picture(image, output, title)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def preview_picture(image: np.ndarray, output: ExpertOutput, title: str) -> Image.Image:
    """The image and its map side by side (same height, :data:`PREVIEW_HEIGHT`), ``title`` above
    and, on semantic maps, each label's word at its centre: what `prismer label --visualize`
    writes and `prismer serve` shows."""
    picture, tags = render_map(output)
    height = PREVIEW_HEIGHT
    scale = height / image.shape[0]
    width = max(1, round(image.shape[1] * scale))
    left = Image.fromarray(image).resize((width, height), Image.BILINEAR)
    right = Image.fromarray(picture).resize((width, height), Image.NEAREST)
    canvas = Image.new("RGB", (2 * width + 4, height + 20), "white")
    canvas.paste(left, (0, 20))
    canvas.paste(right, (width + 4, 20))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=14)
    draw.text((4, 2), title, fill="black", font=font)
    for name, (x, y) in tags[:40]:
        position = (width + 4 + int(x * scale), 20 + int(y * scale))
        draw.text(position, name, fill="white", font=font, stroke_width=2, stroke_fill="black", anchor="mm")
    return canvas
