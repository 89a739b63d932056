"""process_scan is total: every planted bad input is quarantined with its reason code, never raised."""

from __future__ import annotations

import gzip
import io
import json
import struct

import nibabel as nib
import numpy as np
import pydicom
import pytest

from braindino.volumes import PreprocessSpec
from ingest.process import ScanPayload, ScanPolicy, content_digest, process_scan

SPEC = PreprocessSpec(spacing=(2.0, 2.0, 2.0), slice_size=128)


def one_file(name: str, raw: bytes) -> ScanPayload:
    return ScanPayload(name, {name: raw})


def without_middle_slice(dicom_series: dict[str, bytes]) -> dict[str, bytes]:
    """The series with the slice in the middle of the stack (by position along the normal) removed."""
    depth = {name: float(pydicom.dcmread(io.BytesIO(raw)).ImagePositionPatient[2]) for name, raw in dicom_series.items()}
    middle = sorted(depth, key=depth.get)[len(depth) // 2]
    return {name: raw for name, raw in dicom_series.items() if name != middle}


def strip_pixels(raw: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(raw))
    del ds.PixelData
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def with_dim(raw: bytes, axis: int, value: int) -> bytes:
    """A little-endian NIfTI-1 file with dim[axis] overwritten in its header."""
    patched = bytearray(raw)
    struct.pack_into("<h", patched, 40 + 2 * axis, value)
    return bytes(patched)


def bad_inputs(t1_small, dicom_series, make_nifti, real_file, payload_of) -> dict[str, ScanPayload]:
    data, affine = t1_small
    nilearn_t1 = real_file("icbm2009a_t1").read_bytes()
    real = data.astype(np.float32)
    good_nii = make_nifti(real, affine)
    sheared = affine.copy()
    sheared[:3, 1] += 0.4 * sheared[:3, 0]
    mismatch = nib.Nifti1Image(real, affine)
    mismatch.set_qform(affine, 1)
    shifted = affine.copy()
    shifted[:3, 3] += 10.0
    mismatch.set_sform(shifted, 1)
    with_nan = real.copy()
    with_nan[40, 30, 40] = np.nan
    no_pixels = dict(dicom_series)
    first = sorted(no_pixels)[3]
    no_pixels[first] = strip_pixels(no_pixels[first])
    return {
        "truncated_gzip": one_file("t.nii.gz", nilearn_t1[: len(nilearn_t1) // 2]),
        "bad_magic": one_file("m.nii", good_nii[:344] + b"xx1\x00" + good_nii[348:]),
        "size_mismatch": one_file("s.nii", good_nii[:-1000]),
        "absurd_dimensions": one_file("d.nii", with_dim(good_nii, 1, 30000)),
        "non_finite": one_file("n.nii", make_nifti(with_nan, affine)),
        "constant_volume": one_file("c.nii", make_nifti(np.full(real.shape, 7, np.float32), affine)),
        "sheared_affine": one_file("sh.nii", make_nifti(real, sheared)),
        "qform_sform_mismatch": one_file("q.nii", mismatch.to_bytes()),
        "dicom_no_pixels": ScanPayload("nopix", no_pixels),
        "series_missing_slices": ScanPayload("gap", without_middle_slice(dicom_series)),
        "not_3d": one_file("flat.nii", make_nifti(real[:, :, 40], affine)),
        "unsupported_4d": payload_of(real_file("nibabel_example4d")),
        "corrupt_gzip": one_file("z.nii.gz", b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4),
        "empty_payload": ScanPayload("empty", {}),
    }


@pytest.fixture(scope="module")
def planted(t1_small, dicom_series, make_nifti, real_file, payload_of):
    return bad_inputs(t1_small, dicom_series, make_nifti, real_file, payload_of)


@pytest.mark.parametrize(
    "reason",
    [
        "truncated_gzip", "bad_magic", "size_mismatch", "absurd_dimensions", "non_finite", "constant_volume",
        "sheared_affine", "qform_sform_mismatch", "dicom_no_pixels", "series_missing_slices", "not_3d",
        "unsupported_4d", "corrupt_gzip", "empty_payload",
    ],
)
def test_every_bad_input_is_quarantined_with_its_reason(planted, reason):
    result = process_scan(planted[reason], SPEC, ScanPolicy(four_d="refuse"))
    assert not result.ok
    assert result.reason == reason, result.detail
    assert result.volume is None and result.slices == []
    assert planted[reason].key in result.detail


def test_an_oversized_header_is_refused_before_inflating(t1_small, make_nifti):
    raw = make_nifti(t1_small[0].astype(np.float32), t1_small[1], gz=True)
    result = process_scan(one_file("big.nii.gz", raw), SPEC, ScanPolicy(max_decoded_bytes=1_000_000))
    assert result.reason == "absurd_dimensions" and "max_decoded_bytes" in result.detail


def test_not_even_a_payload_raises():
    result = process_scan(ScanPayload("odd", {"x.nii": None}), SPEC)  # type: ignore[dict-item]
    assert not result.ok and result.reason == "bad_payload"


def test_the_dicom_series_becomes_slices_without_identifiers(dicom_series, planted_identifiers):
    result = process_scan(ScanPayload("series", dicom_series), SPEC)
    assert result.ok, result.detail
    assert result.metadata["Modality"] == "MR" and result.metadata["RepetitionTime"] == 2300.0
    text = json.dumps({"metadata": result.metadata, "provenance": result.volume.provenance}, default=str)
    for keyword, value in planted_identifiers.items():
        assert keyword not in text
        for fragment in value.replace("^", " ").split():
            assert fragment not in text, f"{keyword} leaked: {fragment}"


def test_a_good_scan_carries_volume_slices_digest_and_provenance(real_file, payload_of):
    payload = payload_of(real_file("icbm2009a_t1"))
    result = process_scan(payload, SPEC)
    assert result.ok and result.reason is None
    assert result.volume.spacing == pytest.approx((2.0, 2.0, 2.0))
    assert result.volume.provenance["format"] == "nifti1" and result.volume.provenance["resampled"]
    assert len(result.slices) > 30 and all(s.shape == (128, 128) for _, s, _ in result.slices)
    assert result.digest == content_digest(payload) and len(result.digest) == 64


def test_the_content_digest_ignores_names_and_order(dicom_series):
    renamed = {f"x{i}": raw for i, raw in enumerate(reversed(list(dicom_series.values())))}
    assert content_digest(ScanPayload("a", dicom_series)) == content_digest(ScanPayload("b", renamed))
    gz = gzip.compress(b"abc")
    assert content_digest(one_file("a", gz)) != content_digest(one_file("a", gz + b"\x00"))
