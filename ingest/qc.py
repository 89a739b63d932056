"""QC montages: the mid-axial slice of each scan in one PNG per dataset, to catch orientation errors at a glance.

Tiles follow ``braindino.volumes.display``: anterior at the top, the subject's left on the image's left,
true physical aspect ratio at one scale per montage, a fixed intensity window, the background black,
each labelled with the scan's pseudonym, sequence and slice index.
"""

from __future__ import annotations

import io
from collections import defaultdict

import numpy as np

from braindino.volumes.display import Tile, montage, montage_scale, physical_size, slice_caption, slice_image
from datastore.files import write_bytes
from datastore.manifest import ScanRow
from datastore.objectstore import ObjectStoreConfig
from datastore.volumes import open_root, read_axial_slice

QC_FOLDER = "qc"
TILES_PER_DATASET = 24
COLUMNS = 6


def qc_montage(scans: list[tuple[ScanRow, np.ndarray]]) -> bytes:
    """PNG bytes of a montage of ``(scan row, its mid-axial slice)`` pairs, all at one scale."""
    extents = [physical_size(axial.shape, row.spacing) for row, axial in scans]
    scale = montage_scale(extents)
    tiles = [Tile(slice_image(axial, row.spacing, scale), slice_caption(row.scan_id, row.sequence, mid_axial(row)))
             for row, axial in scans]
    buffer = io.BytesIO()
    montage(tiles, COLUMNS).save(buffer, format="PNG")
    return buffer.getvalue()


def mid_axial(row: ScanRow) -> int:
    return row.shape[2] // 2


def write_qc(scans: list[ScanRow], output: str, storage: ObjectStoreConfig, run_id: str) -> dict[str, str]:
    """A montage of the ok ``scans``' mid-axial slices per dataset (one zarr chunk read each), written to
    ``qc/<run_id>/<dataset>.png`` under ``output``; returns dataset -> montage URI."""
    ok = [row for row in scans if row.status == "ok"]
    root = open_root(output, storage, mode="r") if ok else None
    chosen: dict[str, list[tuple[ScanRow, np.ndarray]]] = defaultdict(list)
    for row in ok:
        if len(chosen[row.dataset]) < TILES_PER_DATASET:
            chosen[row.dataset].append((row, read_axial_slice(root, row.zarr_path, mid_axial(row))))
    fs, base = storage.resolve(output)
    paths = {}
    for dataset, items in chosen.items():
        relative = f"{QC_FOLDER}/{run_id}/{dataset}.png"
        write_bytes(fs, f"{base}/{relative}", qc_montage(items))
        paths[dataset] = f"{output.rstrip('/')}/{relative}"
    return paths
