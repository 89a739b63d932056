"""The preprocessing contract (``PreprocessSpec``) and the one function that applies it.

Ingest, evaluation and serving all call ``preprocess`` with the spec exported next to the encoder, so a
scan becomes slices in exactly one way everywhere.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np

from braindino.volumes.canonical import CanonicalVolume, canonicalise
from braindino.volumes.intensity import normalise_intensity
from braindino.volumes.resample import resample
from braindino.volumes.slicing import Slice, axial_slices


@dataclass(frozen=True)
class PreprocessSpec:
    """How a volume becomes model input; serialised as JSON beside every exported encoder."""

    VERSION: ClassVar[int] = 2
    RETIRED: ClassVar[tuple[str, ...]] = ("channels", "slices_per_volume")  # version-1 keys nothing read

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    slice_size: int = 256
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    min_foreground: float = 0.05
    version: int = VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "clip_percentiles", tuple(float(p) for p in self.clip_percentiles))
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"PreprocessSpec.spacing must be three positive mm values, got {self.spacing}")
        low, high = self.clip_percentiles
        if not 0 <= low < high <= 100:
            raise ValueError(f"PreprocessSpec.clip_percentiles must satisfy 0 <= low < high <= 100, got {self.clip_percentiles}")
        if self.slice_size <= 0:
            raise ValueError(f"PreprocessSpec.slice_size must be positive, got {self.slice_size}")
        if not 0 <= self.min_foreground <= 1:
            raise ValueError(f"PreprocessSpec.min_foreground must lie in [0, 1], got {self.min_foreground}")
        if self.version != self.VERSION:
            raise ValueError(f"PreprocessSpec version {self.version} is not supported (this code reads {self.VERSION})")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        """Parse a spec; a version-1 spec (with ``RETIRED`` keys, equal otherwise) reads as version 2."""
        raw: dict[str, Any] = json.loads(text)
        if raw.get("version") == 1:
            raw = {**{k: v for k, v in raw.items() if k not in cls.RETIRED}, "version": cls.VERSION}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"PreprocessSpec JSON has unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**raw)


def preprocess(
    data: np.ndarray,
    affine: np.ndarray,
    spec: PreprocessSpec,
    mask: np.ndarray | None = None,
    provenance: dict[str, Any] | None = None,
    overwrite_data: bool = False,
) -> tuple[CanonicalVolume, list[Slice]]:
    """Canonicalise to RAS, resample to ``spec.spacing``, normalise intensity, cut axial slices.

    ``data`` is a 3D array whose voxel -> RAS mm map is ``affine``; ``mask`` (optional, same grid as
    ``data``) selects the voxels that define and keep intensity (e.g. a brain mask). Returns the
    normalised canonical volume and its kept ``Slice``s. With
    ``overwrite_data`` the caller gives ``data`` up: when the canonical volume is ``data`` itself (a
    Fortran-ordered RAS float32 array at the target spacing) it is normalised in place, saving a copy.
    """
    vol = resample(canonicalise(data, affine, provenance), spec.spacing)
    private = (overwrite_data or not np.may_share_memory(vol.data, data)) and vol.data.flags.writeable
    canonical_mask = None
    if mask is not None:
        mask_vol = resample(canonicalise(np.asarray(mask, dtype=np.float32), affine), spec.spacing, order=0)
        canonical_mask = mask_vol.data > 0.5
    vol = normalise_intensity(vol, spec.clip_percentiles, canonical_mask, in_place=private)
    vol = vol.with_data(vol.data, preprocess_spec=json.loads(spec.to_json()))
    return vol, axial_slices(vol, spec.slice_size, spec.min_foreground)
