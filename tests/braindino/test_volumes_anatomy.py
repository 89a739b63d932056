"""Canonicalisation puts the left hemisphere on the left: Colin27 AAL labels (odd = left) after reorientation.

AAL labels 1-108 alternate left (odd) / right (even); 109-116 are the midline vermis and are left out.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from braindino.volumes import canonicalise
from infra.local.catalogue import entry

AAL = entry("colin27_aal")
pytestmark = pytest.mark.skipif(not AAL.available, reason=f"Colin27 AAL atlas not installed: {AAL.install_hint}")


LATERAL_LABELS = 108


def world_x(vol, chosen: np.ndarray) -> np.ndarray:
    i = np.nonzero(chosen)
    return (vol.affine @ np.stack([*i, np.ones(i[0].size)]))[0]


@pytest.mark.parametrize("flip_left_right", [False, True], ids=["as_stored", "stored_flipped"])
def test_odd_aal_labels_lie_left_of_the_midline_after_canonicalisation(flip_left_right):
    img = nib.load(str(AAL.path))
    data, affine = np.asarray(img.dataobj), img.affine
    if flip_left_right:  # same anatomy, array axis 0 reversed and the affine reversed with it
        nx = data.shape[0]
        data = data[::-1]
        affine = affine @ np.array([[-1, 0, 0, nx - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    vol = canonicalise(data, affine)
    labels = np.rint(vol.data).astype(int)
    lateral = (labels > 0) & (labels <= LATERAL_LABELS)
    left_x = world_x(vol, lateral & (labels % 2 == 1))
    right_x = world_x(vol, lateral & (labels % 2 == 0))
    assert np.mean(left_x < 0) > 0.95 and np.mean(right_x > 0) > 0.95
    # every left/right pair: the left region's centroid sits at lower x, i.e. lower canonical index i
    i_index = np.broadcast_to(np.arange(labels.shape[0])[:, None, None], labels.shape)
    centroid_i = np.bincount(labels.ravel(), weights=i_index.ravel()) / np.maximum(np.bincount(labels.ravel()), 1)
    for left_label in range(1, LATERAL_LABELS, 2):
        assert centroid_i[left_label] < centroid_i[left_label + 1], f"AAL {left_label} is not left of {left_label + 1}"
