"""Readers on real scans: each format decodes to the voxels and RAS geometry of the source."""

from __future__ import annotations

import gzip
import io
import zipfile

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest

from ingest.readers import ScanPayload, ScanPolicy, ScanRejected, read_scan, sniff_format
from ingest.readers.dicom_stack import LPS_TO_RAS


def expected_dicom_values(data: np.ndarray) -> np.ndarray:
    return data.astype(np.float32) * np.float32(0.5) + np.float32(10.0)


def test_a_one_file_per_slice_series_reconstructs_the_source_volume(t1_small, dicom_series):
    data, affine = t1_small
    scan = read_scan(ScanPayload("series", dicom_series))
    assert scan.format == "dicom" and scan.metadata["dicom_layout"] == "slices"
    np.testing.assert_array_equal(scan.data, expected_dicom_values(data))
    np.testing.assert_allclose(scan.affine, affine, atol=1e-5)
    spacing = np.sqrt((scan.affine[:3, :3] ** 2).sum(axis=0))
    np.testing.assert_allclose(spacing, [2.0, 3.0, 2.0], atol=1e-6)


def test_a_series_too_large_for_the_policy_is_refused_before_decoding(dicom_series):
    with pytest.raises(ScanRejected) as rejected:
        read_scan(ScanPayload("series", dicom_series), ScanPolicy(max_decoded_bytes=100_000))
    assert rejected.value.reason == "absurd_dimensions"


def test_a_zipped_series_reads_like_the_folder(dicom_series):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, raw in dicom_series.items():
            archive.writestr(f"study/series/{name}", raw)
        archive.writestr("study/README.txt", b"not dicom")
    zipped = read_scan(ScanPayload("series.zip", {"series.zip": buffer.getvalue()}))
    folder = read_scan(ScanPayload("series", dicom_series))
    np.testing.assert_array_equal(zipped.data, folder.data)
    assert zipped.metadata["dicom_files_ignored"] == 1


def test_files_without_the_dicom_preamble_still_read(dicom_series):
    bare = {name: raw[132:] for name, raw in dicom_series.items()}
    np.testing.assert_array_equal(read_scan(ScanPayload("bare", bare)).data, read_scan(ScanPayload("s", dicom_series)).data)


def test_enhanced_multi_frame_files_are_refused_with_advice(dicom_series):
    name, raw = next(iter(dicom_series.items()))
    ds = pydicom.dcmread(io.BytesIO(raw))
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR Image Storage
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    with pytest.raises(ScanRejected) as rejected:
        read_scan(ScanPayload("enhanced", {name: out.getvalue()}))
    assert rejected.value.reason == "enhanced_multiframe" and "dcm2niix" in rejected.value.detail


def test_a_folder_without_dicom_is_refused():
    with pytest.raises(ScanRejected) as rejected:
        read_scan(ScanPayload("junk", {"a.txt": b"hello", "b.bin": bytes(300)}))
    assert rejected.value.reason == "bad_magic"


def test_the_largest_series_wins_and_a_tie_is_refused(t1_small, dicom_series, make_dicom_series):
    data, affine = t1_small
    scout = make_dicom_series(data[:, :, :3], affine, seed=1)
    mixed = {**dicom_series, **{f"scout_{name}": raw for name, raw in scout.items()}}
    scan = read_scan(ScanPayload("mixed", mixed))
    assert scan.data.shape == data.shape and scan.metadata["dicom_series_in_unit"] == 2
    twin = make_dicom_series(data[:, :, :5], affine, seed=2)
    first = dict(list(dicom_series.items())[:5])
    with pytest.raises(ScanRejected) as rejected:
        read_scan(ScanPayload("tie", {**first, **{f"b_{n}": r for n, r in twin.items()}}))
    assert rejected.value.reason == "series_ambiguous"


@pytest.mark.parametrize("field, change", [
    ("pixel spacing", lambda ds: setattr(ds, "PixelSpacing", [float(v) * 2 for v in ds.PixelSpacing])),
    ("orientation", lambda ds: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1])),
])
def test_a_mixed_series_names_the_differing_field_and_both_files(dicom_series, field, change):
    names = sorted(dicom_series)
    odd = pydicom.dcmread(io.BytesIO(dicom_series[names[3]]))
    expected = {"pixel spacing": lambda ds: [round(float(v), 4) for v in ds.PixelSpacing],
                "orientation": lambda ds: [round(float(v), 4) for v in ds.ImageOrientationPatient]}[field]
    before = expected(odd)
    change(odd)
    out = io.BytesIO()
    odd.save_as(out)
    with pytest.raises(ScanRejected) as rejected:
        read_scan(ScanPayload("series/", {**dicom_series, names[3]: out.getvalue()}))
    assert rejected.value.reason == "series_inconsistent"
    first = next(name for name in dicom_series if name != names[3])
    assert f"{field} {before} vs {expected(odd)}" in rejected.value.detail
    assert f"({first} vs {names[3]})" in rejected.value.detail
    assert "matrix size" not in rejected.value.detail


def test_a_siemens_mosaic_decodes_to_a_volume(real_file, payload_of):
    scan = read_scan(payload_of(real_file("heudiconv_mosaic")))
    assert scan.data.shape == (64, 64, 35) and scan.metadata["dicom_layout"] == "mosaic"
    assert nib.aff2axcodes(scan.affine)[2] == "S"
    assert np.ptp(scan.data) > 0


def test_a_multi_file_mosaic_series_is_4d_and_follows_the_policy(real_file):
    files = {p.name: p.read_bytes() for p in sorted(real_file("heudiconv_dwi").glob("*.dcm"))}
    scan = read_scan(ScanPayload("dwi", files))
    assert scan.data.shape == (152, 150, 81)
    assert scan.metadata["four_d_policy"] == "first" and scan.metadata["volumes_in_scan"] == 3
    with pytest.raises(ScanRejected) as rejected:
        read_scan(ScanPayload("dwi", files), ScanPolicy(four_d="refuse"))
    assert rejected.value.reason == "unsupported_4d"


@pytest.mark.parametrize("name", ["icbm2009c_t1", "icbm2009a_t1", "nibabel_anatomical", "colin27_t1"])
def test_nifti_decodes_to_nibabels_scaled_voxels_and_affine(name, real_file, payload_of):
    path = real_file(name)
    scan = read_scan(payload_of(path))
    img = nib.load(str(path))
    expected = img.get_fdata(dtype=np.float32)
    # Scaled in float32 here, through float64 by nibabel: equal up to float32 rounding of the largest value.
    np.testing.assert_allclose(scan.data, expected, rtol=1e-6, atol=2 * np.spacing(np.abs(expected).max()))
    np.testing.assert_allclose(scan.affine, img.affine)
    assert scan.format == "nifti1"


def test_nifti2_and_scl_slope_are_honoured(t1_small):
    data, affine = t1_small
    img = nib.Nifti2Image(data, affine)
    img.header.set_slope_inter(0.25, -3.0)
    scan = read_scan(ScanPayload("a.nii", {"a.nii": img.to_bytes()}))
    assert scan.format == "nifti2"
    np.testing.assert_allclose(scan.data, data * 0.25 - 3.0, rtol=1e-6)


def test_nifti_free_text_never_reaches_metadata(t1_small, make_nifti):
    raw = make_nifti(*t1_small, gz=True, descrip=b"Jane Doe 1961", aux_file=b"PID-4711", intent_name=b"Doe")
    scan = read_scan(ScanPayload("a.nii.gz", {"a.nii.gz": raw}))
    text = repr(scan.metadata)
    assert "Doe" not in text and "4711" not in text


def test_4d_nifti_keeps_the_first_volume_or_is_refused(real_file, payload_of):
    path = real_file("nibabel_example4d")
    scan = read_scan(payload_of(path))
    np.testing.assert_allclose(scan.data, nib.load(str(path)).get_fdata()[..., 0], rtol=1e-6)
    with pytest.raises(ScanRejected, match="unsupported_4d"):
        read_scan(payload_of(path), ScanPolicy(four_d="refuse"))


def test_trailing_singleton_axes_are_dropped(t1_small, make_nifti):
    data, affine = t1_small
    scan = read_scan(ScanPayload("a.nii", {"a.nii": make_nifti(data[..., None, None], affine)}))
    assert scan.data.shape == data.shape


def test_nrrd_in_lps_space_becomes_the_same_ras_geometry(tmp_path, t1_small, payload_of):
    data, affine = t1_small
    lps = LPS_TO_RAS @ affine
    path = tmp_path / "t1.nrrd"
    header = {"space": "left-posterior-superior", "space directions": lps[:3, :3].T, "space origin": lps[:3, 3], "encoding": "gzip"}
    nrrd.write(str(path), data, header)
    scan = read_scan(payload_of(path))
    np.testing.assert_array_equal(scan.data, data.astype(np.float32))
    np.testing.assert_allclose(scan.affine, affine, atol=1e-9)


def test_mgz_reads_with_its_vox2ras(t1_small):
    data, affine = t1_small
    raw = gzip.compress(nib.MGHImage(data.astype(np.float32), affine).to_bytes(), compresslevel=1)
    scan = read_scan(ScanPayload("t1.mgz", {"t1.mgz": raw}))
    np.testing.assert_array_equal(scan.data, data.astype(np.float32))
    np.testing.assert_allclose(scan.affine, affine, atol=1e-4)


def test_formats_are_sniffed_from_magic_when_the_name_says_nothing(dicom_series, real_file):
    nifti = real_file("nibabel_anatomical").read_bytes()
    assert sniff_format("blob", nifti) == "nifti"
    assert sniff_format("blob", gzip.compress(nifti)) == "nifti"
    assert sniff_format("blob", next(iter(dicom_series.values()))) == "dicom"
    assert sniff_format("blob", b"NRRD0004\n") == "nrrd"
