"""Validation checks on decoded scans, each with its stable reason code."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.readers import RawScan, ScanRejected, read_scan
from ingest.validation import ValidationLimits, validate


@pytest.fixture(scope="module")
def anatomical(real_file, payload_of) -> RawScan:
    return read_scan(payload_of(real_file("nibabel_anatomical")))


def reason_for(scan: RawScan, limits: ValidationLimits = ValidationLimits()) -> str | None:
    try:
        validate("scan", scan, limits)
    except ScanRejected as rejected:
        return rejected.reason
    return None


def test_a_real_scan_with_agreeing_qform_and_sform_passes(anatomical):
    assert set(anatomical.header_affines) == {"qform", "sform"}
    assert reason_for(anatomical) is None


def test_an_oblique_but_orthogonal_affine_passes(anatomical):
    t = np.deg2rad(20)
    rotation = np.array([[1, 0, 0, 0], [0, np.cos(t), -np.sin(t), 0], [0, np.sin(t), np.cos(t), 0], [0, 0, 0, 1]])
    assert reason_for(RawScan(anatomical.data, rotation @ anatomical.affine, "nifti1")) is None


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda d, a: (d[:, :, :1], a), "not_3d"),
        (lambda d, a: (np.where(d > d.mean(), np.inf, d), a), "non_finite"),
        (lambda d, a: (np.zeros_like(d), a), "constant_volume"),
        (lambda d, a: (d, a @ np.array([[1, 0.2, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])), "sheared_affine"),
        (lambda d, a: (d, a @ np.diag([1, 1, 40, 1])), "implausible_spacing"),
        (lambda d, a: (d, np.where(np.eye(4, dtype=bool), np.nan, a)), "bad_affine"),
        (lambda d, a: (d, np.diag([0.0, 0.0, 0.0, 1.0])), "singular_affine"),
        (lambda d, a: (d, a @ np.diag([1, 0, 1, 1])), "singular_affine"),
        (lambda d, a: (d, a @ np.array([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])), "singular_affine"),
    ],
    ids=["one_slice", "inf", "constant", "shear", "spacing", "nan_affine", "zero_affine", "zero_axis",
         "parallel_axes"],
)
def test_each_defect_is_rejected_with_its_code(anatomical, change, reason):
    data, affine = change(anatomical.data, anatomical.affine)
    assert reason_for(RawScan(data, affine, "nifti1")) == reason


def test_qform_and_sform_must_agree_when_both_are_set(anatomical):
    qform = anatomical.header_affines["qform"]
    moved = qform.copy()
    moved[:3, 3] += 2.0
    scan = RawScan(anatomical.data, anatomical.affine, "nifti1", header_affines={"qform": qform, "sform": moved})
    assert reason_for(scan) == "qform_sform_mismatch"
    assert reason_for(scan, ValidationLimits(qform_sform_translation_mm=5.0)) is None


def test_a_singular_affine_is_not_reported_as_implausible_spacing(anatomical):
    with pytest.raises(ScanRejected) as rejected:
        validate("raw/sub-01.nii.gz", RawScan(anatomical.data, np.diag([0.0, 0.0, 0.0, 1.0]), "nifti1"))
    assert rejected.value.reason == "singular_affine"
    assert "raw/sub-01.nii.gz has a singular affine" in str(rejected.value)
    assert "spacing" not in rejected.value.reason and "pixdim" not in str(rejected.value)
