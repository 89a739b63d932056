"""Canonical volumes and the preprocessing every stage shares (ingest, evaluation, serving)."""

from braindino.volumes.canonical import CanonicalVolume, canonicalise, voxel_spacing
from braindino.volumes.intensity import normalise_intensity, percentiles
from braindino.volumes.regrid import labels_to_source_grid, source_grid, to_source_grid
from braindino.volumes.resample import resample
from braindino.volumes.slicing import (axial_slices, centre_pad_crop, evenly_spaced, non_empty_range,
                                      slices_to_volume)
from braindino.volumes.spec import PreprocessSpec, Slice, preprocess

__all__ = [
    "CanonicalVolume",
    "PreprocessSpec",
    "Slice",
    "axial_slices",
    "canonicalise",
    "centre_pad_crop",
    "evenly_spaced",
    "labels_to_source_grid",
    "non_empty_range",
    "normalise_intensity",
    "percentiles",
    "preprocess",
    "resample",
    "slices_to_volume",
    "source_grid",
    "to_source_grid",
    "voxel_spacing",
]
