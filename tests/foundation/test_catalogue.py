"""Every catalogued real scan loads with the shape and modality the catalogue claims."""

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest

from braindino.catalogue import CATALOGUE, available, entry
from infra.local.bundled import scan_files
from tests.conftest import real_scan


@pytest.mark.parametrize("name", [e.name for e in CATALOGUE if e.kind != "series"])
def test_volume_loads_with_its_catalogued_shape(name):
    item = real_scan(name)
    if item.path.suffix == ".nrrd":
        data, _ = nrrd.read(str(item.path))
    else:
        data = np.asarray(nib.load(item.path).dataobj)
    assert tuple(int(n) for n in data.shape) == item.shape
    assert np.isfinite(data).all() and data.std() > 0


@pytest.mark.parametrize("name", [e.name for e in CATALOGUE if e.kind == "series"])
def test_dicom_series_loads_as_mr_with_pixels(name):
    item = real_scan(name)
    files = scan_files(item)
    assert len(files) == item.shape[0]
    for file in files:
        ds = pydicom.dcmread(file)
        assert ds.Modality == "MR"
        assert ds.pixel_array.ndim == 2 and ds.pixel_array.std() > 0


def test_icbm_templates_share_one_subject_so_splits_keep_them_together():
    assert {entry("icbm2009a_t1").subject, entry("icbm2009c_t2").subject} == {"icbm152"}


def test_t1_and_t2_of_the_icbm_pair_differ_in_contrast():
    t1 = np.asarray(nib.load(real_scan("icbm2009c_t1").path).dataobj, dtype=np.float32)
    t2 = np.asarray(nib.load(real_scan("icbm2009c_t2").path).dataobj, dtype=np.float32)
    mask = np.asarray(nib.load(real_scan("icbm2009c_mask").path).dataobj) > 0
    # White matter is bright on T1 and dark on T2: their brain voxels correlate negatively.
    assert np.corrcoef(t1[mask], t2[mask])[0, 1] < 0


def test_every_entry_names_a_licence_and_unknown_names_are_refused():
    assert all(e.licence for e in CATALOGUE)
    assert available()  # the project's own install always brings some real MRI
    with pytest.raises(KeyError, match="known"):
        entry("no-such-scan")
