"""The pretraining PCA figure shows its input slices as the QC montages do (anterior up, the subject's left on
the left, true aspect) and its maps black outside the subject, on a real T1 with a planted left-anterior marker."""

from __future__ import annotations

import io

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from braindino.evaluation import patch_foreground, pca_rgb
from braindino.volumes import PreprocessSpec, preprocess
from datastore.shards import SampleRecord
from pipelines.train.run_log import pca_figure
from tests.conftest import real_scan

SPEC = PreprocessSpec(spacing=(2.0, 3.0, 2.0), slice_size=96)
PATCH = 8


def slice_records(marker: bool) -> tuple[np.ndarray, list[SampleRecord]]:
    """The middle kept slice of the real ICBM T1 at 2 x 3 x 2 mm (optionally with a bright block in the air at the
    subject's left-anterior corner), as ingest cuts it, and its sample record."""
    image = nib.load(str(real_scan("icbm2009c_t1").path))
    data = np.asarray(image.dataobj, dtype=np.float32)[::2, ::3, ::2]
    if marker:
        data[2:10, -9:-2, :] = data.max()
    volume, slices = preprocess(data, image.affine @ np.diag([2.0, 3.0, 2.0, 1.0]), SPEC)
    kept = slices[len(slices) // 2]
    record = SampleRecord("icbm152", "subj", "", "T1w", "0123456789abcdef-0123456789ab", kept.z, kept.foreground_fraction,
                          list(volume.spacing))
    return kept.image[None], [record]


def raw_patches(images: np.ndarray) -> torch.Tensor:
    """Pixel patches as features ``[N, h*w, PATCH*PATCH]`` (patch rows follow the image's axis 0)."""
    x = torch.tensor(images).unfold(1, PATCH, PATCH).unfold(2, PATCH, PATCH)
    return x.reshape(len(images), -1, PATCH * PATCH)


def figure(marker: bool) -> tuple[np.ndarray, np.ndarray]:
    images, records = slice_records(marker)
    grid = (images.shape[1] // PATCH, images.shape[2] // PATCH)
    rgb = pca_rgb(raw_patches(images), grid, patch_foreground(images, grid))
    with Image.open(io.BytesIO(pca_figure(images, rgb, records))) as png:
        pixels = np.asarray(png.convert("RGB")).astype(int)
    return pixels, rgb


def panel(pixels: np.ndarray, index: int) -> np.ndarray:
    """The image of panel ``index`` (0: slice, 1: map): the bounding box of its non-frame pixels."""
    half = pixels[:, index * pixels.shape[1] // 2:(index + 1) * pixels.shape[1] // 2]
    inner = ~(half == (48, 48, 48)).all(axis=-1)
    inner[:, :10] = inner[:, -10:] = False  # the orientation letters sit in the margins
    inner[:12] = inner[-40:] = False
    rows, cols = np.nonzero(inner)
    return half[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


@pytest.fixture(scope="module")
def figures():
    return figure(marker=False), figure(marker=True)


def test_the_input_panel_has_anterior_up_the_left_on_the_left_and_true_aspect(figures):
    (plain, _), (marked, _) = figures
    before, after = panel(plain, 0)[..., 0], panel(marked, 0)[..., 0]
    height, width = after.shape
    assert (width, height) == (round(160 * 2.0 / 3.0), 160)  # 96 x 96 pixels of 2 x 3 mm: 192 mm wide, 288 mm high
    marker = np.argwhere(after - before > 100)
    assert len(marker) > 10
    row, column = marker.mean(axis=0)
    assert row < 0.2 * height and column < 0.2 * width


def test_the_map_is_black_outside_the_subject_and_drawn_like_its_slice(figures):
    _, (marked, rgb) = figures
    image, colours = panel(marked, 0), panel(marked, 1)
    assert colours.shape == image.shape
    assert ((rgb == 0).all(axis=-1)).any() and ((rgb != 0).any(axis=-1)).any()
    black_patch = (colours == 0).all(axis=-1)
    dark_slice = (image == 0).all(axis=-1)
    assert black_patch.mean() > 0.1
    assert (black_patch & ~dark_slice).mean() < 0.02  # black patches lie over the black background
