"""The canonical volume contract and reorientation into it.

A ``CanonicalVolume`` is a float32 array in the RAS+ frame: array axis 0 runs left -> right, axis 1
posterior -> anterior, axis 2 inferior -> superior. Axial slices are ``data[:, :, z]`` and nothing else.
The affine maps voxel indices (i, j, k) to RAS millimetres, so data and geometry never travel apart.

The array is stored in Fortran order (axis 0 fastest), NIfTI's own layout: a NIfTI already in RAS order
becomes canonical without a copy, and each axial slice ``data[:, :, z]`` is one contiguous block (an
F-contiguous 2D array), so slicing and per-slice writes never stride through the volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from nibabel.orientations import aff2axcodes, apply_orientation, inv_ornt_aff, io_orientation


@dataclass(frozen=True)
class CanonicalVolume:
    """A 3D scan in RAS+ voxel order (Fortran-ordered float32) with its voxel -> RAS (mm) affine and a
    record of what was done."""

    VERSION: ClassVar[int] = 1

    data: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    orientation: str = "RAS"
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.data.ndim != 3:
            raise ValueError(f"CanonicalVolume needs a 3D array, got shape {self.data.shape}")
        if self.data.dtype != np.float32:
            raise ValueError(f"CanonicalVolume data must be float32, got {self.data.dtype}")
        if not self.data.flags.f_contiguous:
            raise ValueError("CanonicalVolume data must be Fortran-ordered (axial slices contiguous); use canonical_layout()")
        if self.affine.shape != (4, 4):
            raise ValueError(f"CanonicalVolume affine must be 4x4, got {self.affine.shape}")
        if self.orientation != "RAS":
            raise ValueError(f"CanonicalVolume orientation must be 'RAS', got {self.orientation!r}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]

    def with_data(self, data: np.ndarray, affine: np.ndarray | None = None, **provenance: Any) -> CanonicalVolume:
        """A copy with new voxels (and optionally a new affine), extending the provenance record."""
        new_affine = self.affine if affine is None else affine
        return CanonicalVolume(
            data=canonical_layout(data),
            affine=new_affine,
            spacing=voxel_spacing(new_affine),
            provenance={**self.provenance, **provenance},
        )


def canonical_layout(data: np.ndarray) -> np.ndarray:
    """``data`` as Fortran-ordered float32, copied only when it is not already."""
    return np.asfortranarray(data, dtype=np.float32)


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel edge lengths in mm: the norms of the affine's first three columns."""
    norms = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    return tuple(float(n) for n in norms)  # type: ignore[return-value]


def canonicalise(data: np.ndarray, affine: np.ndarray, provenance: dict[str, Any] | None = None) -> CanonicalVolume:
    """Reorder and flip a 3D array (voxel -> RAS ``affine``) so that its axes run R, A, S.

    Only axis permutations and flips are applied (no interpolation); for an oblique scan each array axis
    goes to the world axis it is closest to and the affine keeps the residual rotation. The returned
    affine is updated with the same transform, so every voxel keeps its world position; the input's
    affine and shape are recorded in the provenance (``source_affine``, ``source_shape``). A Fortran-ordered
    float32 array already in RAS order is used as is (the volume shares its memory), anything else is copied.
    """
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"canonicalise needs a 3D array, got shape {data.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    ornt = io_orientation(affine)
    source_codes = "".join(aff2axcodes(affine))
    reoriented = apply_orientation(data, ornt)
    new_affine = affine @ inv_ornt_aff(ornt, data.shape)
    record = {
        **(provenance or {}),
        "source_orientation": source_codes,
        "reoriented": source_codes != "RAS",
        "canonical_version": CanonicalVolume.VERSION,
        "source_affine": affine.tolist(),  # the input grid, so that a result can be mapped back onto it
        "source_shape": [int(n) for n in data.shape],
    }
    return CanonicalVolume(
        data=canonical_layout(reoriented),
        affine=new_affine,
        spacing=voxel_spacing(new_affine),
        provenance=record,
    )
