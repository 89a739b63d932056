"""Derived tissue labels of the bundled T1s: on the image's own grid, and where the published maps (ICBM) or the
intensities (Colin27) put each tissue."""

import nibabel as nib
import numpy as np

from infra.local.derived import derived_tissue, tissue_by_intensity
from tests.conftest import real_scan


def test_icbm_tissue_labels_follow_the_published_probability_maps():
    t1 = nib.load(real_scan("icbm2009a_t1").path)
    labels = derived_tissue("icbm2009a_t1")
    assert labels.shape == t1.shape and np.allclose(labels.affine, t1.affine)
    data = np.asarray(labels.dataobj)
    white = np.asarray(nib.load(real_scan("icbm2009a_wm").path).dataobj, dtype=np.float32)
    grey = np.asarray(nib.load(real_scan("icbm2009a_gm").path).dataobj, dtype=np.float32)
    scale = max(white.max(), grey.max())
    brain = np.asarray(t1.dataobj) > 0
    assert np.mean(data[brain & (white > 0.9 * scale)] == 3) > 0.99
    assert np.mean(data[brain & (grey > 0.9 * scale)] == 2) > 0.99
    assert set(np.unique(data[~brain])) == {0} and set(np.unique(data[brain])) == {1, 2, 3}


def test_intensity_clusters_order_csf_grey_white_by_brightness():
    rng = np.random.default_rng(0)
    truth = rng.integers(1, 4, size=(20, 20, 20))
    t1 = np.where(truth == 1, 30.0, np.where(truth == 2, 80.0, 120.0)) + rng.normal(0, 5, truth.shape)
    t1[:2] = 0  # background
    labels = tissue_by_intensity(t1)
    assert np.mean(labels[2:] == truth[2:]) > 0.99 and not labels[:2].any()
