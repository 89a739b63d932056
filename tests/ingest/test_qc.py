"""QC montages show the true geometry: aspect ratio from the stored grid and spacing, anterior up, left on
the left, whatever layout the source file was stored in.

Scans go through the ingest step (``process_scan``: read, canonicalise, resample, normalise) and are
stored as ingest stores them (``write_volume``); ``write_qc`` reads them back. Expected pixel sizes are
computed here from the grid, not taken from the display module.
"""

from __future__ import annotations

from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform
from PIL import Image

from braindino.volumes import PreprocessSpec
from datastore.manifest import ScanRow
from datastore.objectstore import ObjectStoreConfig
from datastore.volumes import open_root, prepare_root, write_volume
from ingest.process import process_scan
from ingest.qc import write_qc
from ingest.readers import ScanPayload

LOCAL = ObjectStoreConfig()
TILE = 160  # the montage's scale puts the longest physical side of its scans on this many pixels
ROW = ScanRow(scan_id="", volume_id="", dataset="qc", source_key="", size=0, etag="", content_digest="", status="ok",
              reason=None, detail=None, subject="s", session="", sequence="T1w", shape=None, spacing=None,
              orientation="RAS", slices_kept=0, zarr_path="", shards=[], run_id="r", ingest_version=1)


def ingest_scans(output: str, scans: dict[str, nib.Nifti1Image], spec: PreprocessSpec) -> list[ScanRow]:
    """Each NIfTI through the ingest step into the volume store under ``output``; their manifest rows."""
    prepare_root(output, LOCAL, ["qc"])
    root = open_root(output, LOCAL, mode="r+")
    rows = []
    for name, image in scans.items():
        result = process_scan(ScanPayload(f"{name}.nii", {f"{name}.nii": image.to_bytes()}), spec)
        assert result.ok, result.detail
        pseudonym = f"{name:0>16}"[-16:]
        path = write_volume(root, "qc", pseudonym, result.volume, {})
        rows.append(replace(ROW, scan_id=pseudonym, volume_id=pseudonym, shape=list(result.volume.shape),
                            spacing=list(result.volume.spacing), zarr_path=path))
    return rows


def montage_pixels(output: str, rows: list[ScanRow]) -> np.ndarray:
    (uri,) = write_qc(rows, output, LOCAL, "run").values()
    with Image.open(uri) as png:
        return np.asarray(png.convert("RGB")).astype(int)


def black_boxes(pixels: np.ndarray, count: int) -> list[tuple[slice, slice]]:
    """The bounding box of the pure black pixels (slice background) of each of ``count`` tiles in one row."""
    width = pixels.shape[1] // count
    boxes = []
    for k in range(count):
        rows, cols = np.nonzero((pixels[:, k * width:(k + 1) * width] == 0).all(axis=-1))
        boxes.append((slice(rows.min(), rows.max() + 1), slice(k * width + cols.min(), k * width + cols.max() + 1)))
    return boxes


@pytest.fixture(scope="module")
def icbm_t1(real_file) -> nib.Nifti1Image:
    return nib.load(str(real_file("icbm2009c_t1")))


def test_a_non_square_scan_keeps_its_aspect_ratio(icbm_t1, tmp_path):
    """A 256 x 186 in-plane grid at 1 mm: the tile is 160 x round(160 * 186 / 256) pixels, not a square."""
    data = np.asarray(icbm_t1.dataobj, dtype=np.float32)[:, :, ::4]  # 193 x 229 x 49 at 1 x 1 x 4 mm
    grid = np.zeros((256, 186, data.shape[2]), dtype=np.float32)
    grid[31:31 + 193] = data[:, 21:21 + 186]  # pad left-right, crop the empty front and back
    affine = icbm_t1.affine @ np.diag([1.0, 1.0, 4.0, 1.0])
    rows = ingest_scans(str(tmp_path), {"wide": nib.Nifti1Image(grid, affine)}, PreprocessSpec(spacing=(1.0, 1.0, 4.0)))
    assert rows[0].shape[:2] == [256, 186]
    (box,) = black_boxes(montage_pixels(str(tmp_path), rows), 1)
    height, width = box[0].stop - box[0].start, box[1].stop - box[1].start
    assert (width, height) == (TILE, round(TILE * 186 / 256)) == (160, 116)


@pytest.fixture(scope="module")
def marked(icbm_t1) -> dict[str, nib.Nifti1Image]:
    """The real T1 at 2 x 3 x 2 mm (anisotropic in-plane): without a marker, with a bright block planted in the
    air at the subject's left-anterior corner, and that marked scan stored in the LPI layout (x and z flipped)."""
    data = np.asarray(icbm_t1.dataobj, dtype=np.float32)[::2, ::3, ::2]
    affine = icbm_t1.affine @ np.diag([2.0, 3.0, 2.0, 1.0])
    assert "".join(nib.aff2axcodes(affine)) == "RAS"
    nx, ny, nz = data.shape
    with_marker = data.copy()
    with_marker[2:10, ny - 9:ny - 2, nz // 2 - 4:nz // 2 + 4] = data.max()  # left (low x), anterior (high y)
    ras = nib.Nifti1Image(with_marker, affine)
    flipped = ras.as_reoriented(ornt_transform(io_orientation(affine), axcodes2ornt(("L", "P", "I"))))
    assert "".join(nib.aff2axcodes(flipped.affine)) == "LPI"
    assert not np.array_equal(np.asarray(flipped.dataobj)[:, :, nz // 2], with_marker[:, :, nz // 2])
    return {"plain": nib.Nifti1Image(data, affine), "ras": ras, "lpi": flipped}


def test_a_scan_stored_flipped_shows_anterior_up_and_left_on_the_left(marked, tmp_path):
    spec = PreprocessSpec(spacing=(2.0, 3.0, 2.0))
    rows = ingest_scans(str(tmp_path), marked, spec)
    pixels = montage_pixels(str(tmp_path), rows)
    boxes = black_boxes(pixels, 3)
    nx, ny = rows[0].shape[:2]
    mm_per_pixel = max(nx * 2.0, ny * 3.0) / TILE
    expected = (round(nx * 2.0 / mm_per_pixel), round(ny * 3.0 / mm_per_pixel))  # anisotropic pixels: true mm
    tiles = []
    for box in boxes:
        assert (box[1].stop - box[1].start, box[0].stop - box[0].start) == expected
        tiles.append(pixels[box[0], box[1], 0])
    plain, ras, lpi = tiles
    assert np.abs(ras - lpi).max() <= 1  # the same picture from either layout
    marker = np.argwhere((ras - plain) > 100)  # what the block added: bright where there was black air
    assert len(marker) > 10
    row, column = marker.mean(axis=0)
    height, width = ras.shape
    assert row < 0.15 * height and column < 0.15 * width  # top-left: anterior up, the subject's left on the left
