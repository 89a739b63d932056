"""The display convention's pieces on a real slice: the air/tissue split and the background rule."""

from __future__ import annotations

import numpy as np
import pytest

from braindino.volumes import PreprocessSpec
from braindino.volumes.display import background, otsu_threshold, to_display, windowed
from tests.conftest import real_scan


@pytest.fixture(scope="module")
def head_slice() -> np.ndarray:
    """The mid-axial slice of the real ICBM T1 with its head and air kept (every voxel non-zero), z-scored."""
    from infra.local.catalogue import preprocessed

    volume, _ = preprocessed(real_scan("icbm2009c_t1").name, PreprocessSpec(spacing=(2.0, 2.0, 2.0)))
    return volume.data[:, :, volume.shape[2] // 2]


def test_otsu_threshold_maximises_the_between_class_variance(head_slice):
    values = head_slice.ravel().astype(np.float64)
    counts, edges = np.histogram(values, bins=256)
    best, best_variance = None, -1.0
    for cut in range(1, 256):  # brute force: every histogram edge as the split
        low, high = values[values < edges[cut]], values[values >= edges[cut]]
        if low.size and high.size:
            variance = low.size * high.size * (low.mean() - high.mean()) ** 2
            if variance > best_variance:
                best, best_variance = edges[cut], variance
    assert otsu_threshold(head_slice) == pytest.approx(best)


def test_the_air_around_a_head_is_background_and_dark_tissue_inside_is_not(head_slice):
    assert np.count_nonzero(head_slice == 0) == 0  # nothing was zeroed: the air is data
    outside = background(head_slice)
    corners = [outside[0, 0], outside[0, -1], outside[-1, 0], outside[-1, -1]]
    assert all(corners) and 0.2 < outside.mean() < 0.8
    centre = tuple(n // 2 for n in head_slice.shape)
    assert not outside[centre]  # the ventricles are dark but enclosed by tissue
    grey = windowed(head_slice)
    assert (grey[outside] == 0).all() and (grey[~outside] > 0).mean() > 0.9


def test_zero_padding_and_a_skull_stripped_edge_keep_dark_tissue():
    tissue = np.linspace(-2.0, 2.0, 30 * 30, dtype=np.float32).reshape(30, 30)
    padded = np.zeros((40, 40), dtype=np.float32)
    padded[5:35, 5:35] = tissue
    assert np.array_equal(background(padded), padded == 0)


def test_display_puts_anterior_up_and_the_left_on_the_left():
    axial = np.zeros((4, 3))  # [x: left -> right, y: posterior -> anterior]
    axial[0, 2] = 1  # left-most, anterior-most voxel
    assert to_display(axial)[0, 0] == 1 and to_display(axial).shape == (3, 4)
