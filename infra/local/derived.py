"""Label volumes derived from the bundled real MRI where no package ships one: tissue classes (0 background,
1 CSF, 2 grey matter, 3 white matter) on each T1's own grid. They are derived targets, said so wherever used.

- ICBM152 2009a: from its published grey- and white-matter probability maps; inside the skull-stripped T1,
  each voxel takes the most probable of CSF (the remainder, ``1 - gm - wm``), grey and white matter.
- Colin27: no tissue maps ship, so the skull-stripped T1's brain voxels are clustered by intensity into three
  classes (1D k-means from the 10th/50th/90th percentiles): darkest CSF, then grey, then white matter.
"""

from __future__ import annotations

import io
from pathlib import Path

import nibabel as nib
import numpy as np

from braindino.catalogue import entry
from ingest.storage import ObjectStoreConfig

TISSUE_LABELS = {"0": "background", "1": "csf", "2": "grey_matter", "3": "white_matter"}
TISSUE_SOURCES = ("icbm2009a_t1", "colin27_t1bet")  # the T1s that get a derived tissue volume
TISSUE_SUFFIX = "_tissue.nii.gz"


def tissue_from_maps(t1: np.ndarray, grey: np.ndarray, white: np.ndarray) -> np.ndarray:
    """Most probable class per brain voxel; the maps may be stored as 0..255 (they are rescaled to 0..1)."""
    scale = max(float(grey.max()), float(white.max()), 1.0)
    grey, white = grey / scale, white / scale
    csf = np.clip(1.0 - grey - white, 0.0, 1.0)
    labels = (np.argmax(np.stack([csf, grey, white]), axis=0) + 1).astype(np.int16)
    labels[t1 <= 0] = 0
    return labels


def tissue_by_intensity(t1: np.ndarray, iterations: int = 20) -> np.ndarray:
    brain = t1 > 0
    values = t1[brain].astype(np.float64)
    centres = np.percentile(values, [10, 50, 90])
    for _ in range(iterations):
        nearest = np.argmin(np.abs(values[:, None] - centres[None, :]), axis=1)
        centres = np.array([values[nearest == k].mean() if np.any(nearest == k) else centres[k] for k in range(3)])
    labels = np.zeros(t1.shape, dtype=np.int16)
    labels[brain] = np.argsort(np.argsort(centres))[np.argmin(np.abs(values[:, None] - centres[None, :]), axis=1)] + 1
    return labels


def derived_tissue(name: str) -> nib.Nifti1Image:
    """The derived tissue label volume of catalogue T1 ``name`` (one of ``TISSUE_SOURCES``), on its grid."""
    image = nib.load(entry(name).path)
    t1 = np.asarray(image.dataobj, dtype=np.float32)
    if name == "icbm2009a_t1":
        grey, white = (np.asarray(nib.load(entry(n).path).dataobj, dtype=np.float32) for n in ("icbm2009a_gm", "icbm2009a_wm"))
        labels = tissue_from_maps(t1, grey, white)
    elif name == "colin27_t1bet":
        labels = tissue_by_intensity(t1)
    else:
        raise KeyError(f"no derived tissue labels for {name}; known: {TISSUE_SOURCES}")
    return nib.Nifti1Image(labels, image.affine)


def upload_tissue_labels(store: ObjectStoreConfig, bucket: str, dataset: str, prefix: str = "raw") -> list[str]:
    """Upload the derived tissue volume of each available ``TISSUE_SOURCES`` T1 beside where ``upload_bundled``
    puts the image (``prefix/dataset/NAME/NAME_tissue.nii.gz``); returns the keys written."""
    client, keys = store.boto3_client(), []
    for name in TISSUE_SOURCES:
        if not all(entry(n).available for n in (name, *(("icbm2009a_gm", "icbm2009a_wm") if "icbm" in name else ()))):
            continue
        buffer = io.BytesIO(derived_tissue(name).to_bytes())
        key = f"{prefix}/{dataset}/{name}/{Path(name).name}{TISSUE_SUFFIX}"
        client.upload_fileobj(buffer, bucket, key)
        keys.append(key)
    return keys
