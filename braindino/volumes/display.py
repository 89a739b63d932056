"""How an axial slice is shown to a person: one display convention for QC montages and feature maps.

A canonical axial slice is ``volume[:, :, z]`` of the RAS array: its axis 0 runs from the subject's left
to right, its axis 1 from posterior to anterior. It is shown in the neurological convention (anterior
at the top, the subject's left on the image's left) at its true physical aspect ratio, with a fixed
intensity window over the z-scored foreground and the background outside the head black (``background``).
Every tile of a montage is drawn at one common scale (mm per pixel), so sizes compare across tiles.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

DISPLAY_WINDOW = (-2.5, 3.5)  # z-scored intensity shown from black to white
TILE = 160  # pixels of a tile's longer physical side at the montage's scale
MARGIN = 12  # around each image, holding the orientation letters
CAPTION = 28  # the strip under each tile, two lines of text
FRAME = (48, 48, 48)  # the cell around an image: its grey edge shows the slice's extent against its black background
TEXT = (235, 235, 235)
MARKER = (250, 200, 60)


def to_display(axial: np.ndarray) -> np.ndarray:
    """A canonical slice ``[x, y, ...]`` as display rows and columns ``[row, column, ...]``: row 0 is the
    most anterior line, column 0 the subject's leftmost (trailing channel axes are kept)."""
    return np.swapaxes(np.asarray(axial), 0, 1)[::-1]


def background(axial: np.ndarray) -> np.ndarray:
    """Where a slice shows no subject: its exact zeros (preprocessing zeroes what lies outside a brain mask or
    the scan's support, and slices are padded with zeros), plus, for a scan kept whole whose edge is mostly
    non-zero air, the dark pixels connected to that air (dark: below the Otsu threshold of the slice's
    non-zero values, which separates air from tissue)."""
    values = np.asarray(axial, dtype=np.float32)
    zero = values == 0
    if np.count_nonzero(~zero) < 2:
        return zero
    dark = values < otsu_threshold(values[~zero])
    edge = np.zeros(values.shape, dtype=bool)
    edge[[0, -1], :] = edge[:, [0, -1]] = True
    air = edge & ~zero & dark
    if np.count_nonzero(air) <= np.count_nonzero(edge & ~zero) / 2:  # no air at the edge, or tissue reaches it
        return zero
    labels, _ = ndimage.label(zero | dark)
    seeds = np.unique(labels[air])
    return zero | np.isin(labels, seeds)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The value that best splits ``values`` into two classes (Otsu: maximal between-class variance)."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)[:-1].astype(np.float64)
    weight_high = counts.sum() - weight_low
    sum_low = np.cumsum(counts * centres)[:-1]
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (np.sum(counts * centres) - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[1:-1][np.argmax(between)])


def windowed(axial: np.ndarray, window: tuple[float, float] = DISPLAY_WINDOW) -> np.ndarray:
    """8-bit grey of a z-scored slice: ``window`` maps linearly onto 0..255, the ``background`` is black."""
    values = np.asarray(axial, dtype=np.float32)
    low, high = window
    grey = np.round(np.clip((values - low) / (high - low), 0.0, 1.0) * 255.0).astype(np.uint8)
    grey[background(values)] = 0
    return grey


def physical_size(shape: Sequence[int], spacing: Sequence[float]) -> tuple[float, float]:
    """``(width, height)`` in mm of a canonical slice of ``shape`` ``[x, y]`` with in-plane ``spacing``."""
    return shape[0] * float(spacing[0]), shape[1] * float(spacing[1])


def montage_scale(extents: Sequence[tuple[float, float]], tile: int = TILE) -> float:
    """The mm per pixel at which the largest of ``extents`` (width, height in mm) spans ``tile`` pixels."""
    return max(max(extent) for extent in extents) / tile


def display_size(extent: tuple[float, float], mm_per_pixel: float) -> tuple[int, int]:
    """Pixels ``(width, height)`` of a slice of ``extent`` mm at ``mm_per_pixel``."""
    return tuple(max(1, round(side / mm_per_pixel)) for side in extent)  # type: ignore[return-value]


def slice_image(axial: np.ndarray, spacing: Sequence[float], mm_per_pixel: float) -> Image.Image:
    """A canonical slice ``[x, y]`` as an RGB image in the display convention, at ``mm_per_pixel``."""
    size = display_size(physical_size(axial.shape, spacing), mm_per_pixel)
    grey = Image.fromarray(to_display(windowed(axial)), mode="L").resize(size, Image.Resampling.BILINEAR)
    return grey.convert("RGB")


def map_image(colours: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """A per-patch colour map ``[x, y, 3]`` (uint8, canonical frame) as an RGB image of ``size``, blocky."""
    return Image.fromarray(np.ascontiguousarray(to_display(colours)), mode="RGB").resize(size, Image.Resampling.NEAREST)


class Tile(NamedTuple):
    """One image of a montage and the two caption lines under it."""

    image: Image.Image
    caption: tuple[str, str]


def slice_caption(pseudonym: str, sequence: str, z: int) -> tuple[str, str]:
    """The caption of a slice tile: the scan's pseudonym, then its sequence and axial index."""
    return pseudonym, f"{sequence or 'unknown'}  z={z}"


def montage(tiles: Sequence[Tile], columns: int) -> Image.Image:
    """The ``tiles`` in a grid of equal cells, row by row; each image centred in its cell on the grey frame
    with orientation letters (A top, P bottom, L left, R right) in the margin and its caption below."""
    if not tiles:
        raise ValueError("montage needs at least one tile")
    columns = max(1, min(columns, len(tiles)))
    inner_w = max(tile.image.width for tile in tiles)
    inner_h = max(tile.image.height for tile in tiles)
    cell_w, cell_h = inner_w + 2 * MARGIN, inner_h + 2 * MARGIN + CAPTION
    canvas = Image.new("RGB", (columns * cell_w, math.ceil(len(tiles) / columns) * cell_h), FRAME)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for index, tile in enumerate(tiles):
        left, top = (index % columns) * cell_w, (index // columns) * cell_h
        x = left + MARGIN + (inner_w - tile.image.width) // 2
        y = top + MARGIN + (inner_h - tile.image.height) // 2
        canvas.paste(tile.image, (x, y))
        middle_x, middle_y = x + tile.image.width // 2, y + tile.image.height // 2
        for letter, anchor, position in (("A", "md", (middle_x, y - 1)), ("P", "ma", (middle_x, y + tile.image.height + 1)),
                                         ("L", "rm", (x - 2, middle_y)), ("R", "lm", (x + tile.image.width + 2, middle_y))):
            draw.text(position, letter, fill=MARKER, font=font, anchor=anchor)
        for line, text in enumerate(tile.caption):
            draw.text((left + 4, top + 2 * MARGIN + inner_h + 1 + 12 * line), text, fill=TEXT, font=font)
    return canvas
