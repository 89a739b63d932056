"""QC montages: the mid-axial slice of each scan in one PNG per dataset, to catch orientation errors at a glance.

Tiles are shown in the neurological convention: anterior at the top, the subject's left on the
image's left (canonical RAS slices are ``[x = left -> right, y = posterior -> anterior]``).
"""

from __future__ import annotations

import io
import math
from collections import defaultdict

import numpy as np
from PIL import Image, ImageDraw

from datastore.files import write_bytes
from datastore.manifest import ScanRow
from datastore.objectstore import ObjectStoreConfig
from datastore.volumes import open_root, read_axial_slice

TILE = 128
TILES_PER_DATASET = 24


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


def write_qc(scans: list[ScanRow], output: str, storage: ObjectStoreConfig, run_id: str) -> dict[str, str]:
    """A montage of the ok ``scans``' mid-axial slices per dataset (one zarr chunk read each), written to
    ``qc/<run_id>/<dataset>.png`` under ``output``; returns dataset -> montage URI."""
    ok = [row for row in scans if row.status == "ok"]
    root = open_root(output, storage, mode="r") if ok else None
    tiles: dict[str, list[tuple[str, np.ndarray]]] = defaultdict(list)
    for row in ok:
        if len(tiles[row.dataset]) < TILES_PER_DATASET:
            tiles[row.dataset].append((row.sequence, read_axial_slice(root, row.zarr_path, row.shape[2] // 2)))
    fs, base = storage.resolve(output)
    paths = {}
    for dataset, items in tiles.items():
        buffer = io.BytesIO()
        montage(items).save(buffer, format="PNG")
        relative = f"qc/{run_id}/{dataset}.png"
        write_bytes(fs, f"{base}/{relative}", buffer.getvalue())
        paths[dataset] = f"{output.rstrip('/')}/{relative}"
    return paths
