"""QC montage: the mid-axial slice of each scan in one PNG, to catch orientation errors at a glance.

Tiles are shown in the neurological convention: anterior at the top, the subject's left on the
image's left (canonical RAS slices are ``[x = left -> right, y = posterior -> anterior]``).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

TILE = 128


def display_tile(axial: np.ndarray, size: int = TILE) -> Image.Image:
    """A canonical axial slice as an 8-bit greyscale tile, anterior up, windowed to its 1-99th percentiles."""
    image = np.asarray(axial, dtype=np.float32).T[::-1]
    low, high = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    scaled = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    return Image.fromarray((scaled * 255).astype(np.uint8), mode="L").resize((size, size), Image.Resampling.BILINEAR)


def montage(tiles: list[tuple[str, np.ndarray]], columns: int = 6, size: int = TILE) -> Image.Image:
    """A grid of labelled tiles from ``(label, axial slice)`` pairs."""
    if not tiles:
        raise ValueError("montage needs at least one slice")
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    canvas = Image.new("L", (columns * size, rows * size))
    draw = ImageDraw.Draw(canvas)
    for index, (label, axial) in enumerate(tiles):
        x, y = (index % columns) * size, (index // columns) * size
        canvas.paste(display_tile(axial, size), (x, y))
        draw.text((x + 3, y + 2), label, fill=255)
    return canvas
