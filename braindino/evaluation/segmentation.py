"""Segmentation metrics in millimetres: Dice, HD95 and normalised surface distance (NSD), per label.

Definitions (fixed here because libraries disagree):
- The surface of a mask is its voxels with at least one face neighbour (6-connectivity in 3D) outside
  the mask; outside the array counts as outside.
- Surface distances are Euclidean, in mm from the voxel ``spacing``, from each surface voxel of one mask
  to the nearest surface voxel of the other, in both directions.
- HD95 is the 95th percentile (linear interpolation) of the union of both directions' distances.
- NSD at tolerance ``tau`` mm is the share of both surfaces' voxels lying within ``tau`` of the other surface.
- Empty masks: both empty gives Dice 1, NSD 1, HD95 0 (nothing to find, nothing found); exactly one
  empty gives Dice 0, NSD 0 and HD95 equal to the diagonal of the array's extent in mm (the largest
  distance possible), so averages over cases stay finite and a miss costs the most.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def surface(mask: np.ndarray) -> np.ndarray:
    """The mask's voxels that have a face neighbour outside it (or lie on the array's border)."""
    mask = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``a`` to the surface of ``b``, and from ``b``'s to ``a``'s.

    Both masks must be non-empty. The distance transforms run on the bounding box of the two surfaces,
    which holds every voxel involved, so the result is exact.
    """
    surface_a, surface_b = surface(a), surface(b)
    both = np.argwhere(surface_a | surface_b)
    box = tuple(slice(low, high + 1) for low, high in zip(both.min(axis=0), both.max(axis=0)))
    surface_a, surface_b = surface_a[box], surface_b[box]
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing)
    return to_b[surface_a], to_a[surface_b]


def extent_diagonal(shape: tuple[int, ...], spacing: tuple[float, ...]) -> float:
    return float(np.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(shape, spacing))))


@dataclass(frozen=True)
class LabelScores:
    dice: float
    hd95: float  # mm
    nsd: float


def label_scores(prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, ...], tolerance: float) -> LabelScores:
    """Dice, HD95 and NSD at ``tolerance`` mm of two boolean masks on one grid (the policy above for empties)."""
    prediction, reference = np.asarray(prediction, dtype=bool), np.asarray(reference, dtype=bool)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")
    found, wanted = prediction.any(), reference.any()
    if not found and not wanted:
        return LabelScores(1.0, 0.0, 1.0)
    if not found or not wanted:
        return LabelScores(0.0, extent_diagonal(reference.shape, spacing), 0.0)
    overlap = np.count_nonzero(prediction & reference)
    dice = 2.0 * overlap / (np.count_nonzero(prediction) + np.count_nonzero(reference))
    forward, backward = surface_distances(prediction, reference, spacing)
    distances = np.concatenate([forward, backward])
    return LabelScores(float(dice), float(np.percentile(distances, 95)), float(np.mean(distances <= tolerance)))


def segmentation_scores(prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, ...],
                        labels: dict[int, str], tolerance: float) -> dict[str, LabelScores]:
    """Scores per named label value of two label volumes on one grid (background is not scored)."""
    return {name: label_scores(prediction == value, reference == value, spacing, tolerance)
            for value, name in labels.items() if value != 0}
