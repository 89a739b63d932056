"""Keyed pseudonyms and the DICOM metadata allow-list."""

from __future__ import annotations

import pydicom
import pytest

from ingest.deid import DICOM_ALLOWED_KEYWORDS, PseudonymKeyMissing, allowed_dicom_metadata, pseudonym


def test_pseudonyms_are_stable_keyed_and_short():
    a = pseudonym("sub-001", b"site-secret")
    assert a == pseudonym("sub-001", b"site-secret")
    assert a != pseudonym("sub-002", b"site-secret")
    assert a != pseudonym("sub-001", b"another-secret")
    assert len(a) == 16 and set(a) <= set("0123456789abcdef")


def test_the_key_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("BRAINDINO_PSEUDONYM_KEY", "from-env")
    assert pseudonym("sub-001") == pseudonym("sub-001", b"from-env")


def test_without_a_key_only_dev_gets_a_default(monkeypatch):
    monkeypatch.delenv("BRAINDINO_PSEUDONYM_KEY", raising=False)
    monkeypatch.delenv("BRAINDINO_ENV", raising=False)
    with pytest.raises(PseudonymKeyMissing, match="BRAINDINO_PSEUDONYM_KEY"):
        pseudonym("sub-001")
    monkeypatch.setenv("BRAINDINO_ENV", "dev")
    assert len(pseudonym("sub-001")) == 16


def test_the_allow_list_holds_no_identifying_field():
    identifying = {"PatientName", "PatientID", "PatientBirthDate", "PatientAge", "PatientSex", "AccessionNumber",
                   "StudyDate", "SeriesDate", "AcquisitionDate", "InstitutionName", "InstitutionAddress",
                   "ReferringPhysicianName", "DeviceSerialNumber", "StationName", "SeriesDescription",
                   "StudyDescription", "ProtocolName", "ImageComments", "StudyInstanceUID", "SeriesInstanceUID"}
    assert identifying.isdisjoint(DICOM_ALLOWED_KEYWORDS)


def test_allowed_metadata_from_a_real_siemens_file_is_json_safe(real_file):
    ds = pydicom.dcmread(real_file("heudiconv_mosaic"))
    metadata = allowed_dicom_metadata(ds)
    assert metadata["Modality"] == "MR" and isinstance(metadata["RepetitionTime"], float)
    assert set(metadata) <= set(DICOM_ALLOWED_KEYWORDS)
    for keyword in ("PatientName", "PatientID", "InstitutionName", "SeriesDescription"):
        value = str(ds.get(keyword, "")).strip()
        assert keyword not in metadata and (not value or value not in repr(metadata))
