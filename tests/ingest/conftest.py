"""Fixtures for the ingest tests: real scans, and writers that store them in other containers.

``make_dicom_series`` turns a real volume into one MR Image Storage file per axial slice with
generated (oblique) geometry, shuffled instance numbers and planted identifiers that must never leave
the reader. Helpers reach tests as fixtures (factories), never by importing this module.
"""

from __future__ import annotations

import io
import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from ingest.readers import ScanPayload
from ingest.readers.dicom_stack import LPS_TO_RAS
from tests.conftest import real_scan

PLANTED_IDENTIFIERS = {
    "PatientName": "Doe^Jane",
    "PatientID": "PID-4711-SECRET",
    "PatientBirthDate": "19610203",
    "AccessionNumber": "ACC-99881",
    "InstitutionName": "Saint Nowhere Hospital",
    "StudyDate": "20240517",
    "SeriesDescription": "t1 mprage Jane Doe research",
}


def real_path(name: str) -> Path:
    """A file of the project's real-MRI catalogue, or skip the test when its package is absent."""
    return real_scan(name).path


def file_payload(path: Path | str, key: str | None = None) -> ScanPayload:
    path = Path(str(path))
    return ScanPayload(key or path.name, {path.name: path.read_bytes()})


def real_t1(stride: tuple[int, int, int] = (2, 3, 2)) -> tuple[np.ndarray, np.ndarray]:
    """ICBM152 2009c T1 stored int16 voxels (unscaled) subsampled by ``stride``, affine adjusted to match."""
    img = nib.load(str(real_path("icbm2009c_t1")))
    data = np.asarray(img.dataobj.get_unscaled())[:: stride[0], :: stride[1], :: stride[2]]
    return np.ascontiguousarray(data), img.affine @ np.diag([*map(float, stride), 1.0])


def oblique(affine: np.ndarray, degrees: float = 12.0) -> np.ndarray:
    """``affine`` rotated about the world x axis: generated oblique geometry for the same voxels."""
    t = np.deg2rad(degrees)
    rotation = np.eye(4)
    rotation[1:3, 1:3] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return rotation @ affine


def nifti_bytes(data: np.ndarray, affine: np.ndarray, gz: bool = False, **header: object) -> bytes:
    img = nib.Nifti1Image(data, affine)
    for field_name, value in header.items():
        img.header[field_name] = value
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=1) if gz else raw


def dicom_slice_files(
    data: np.ndarray,
    affine: np.ndarray,
    slope: float = 0.5,
    intercept: float = 10.0,
    series_uid: str | None = None,
    seed: int = 0,
) -> dict[str, bytes]:
    """One MR Image Storage file per axial slice of ``data`` (int16) placed by ``affine`` (voxel -> RAS).

    Pixel (row r, column c) of file k is voxel (c, r, k); stored values are rescaled by slope/intercept.
    """
    rng = np.random.default_rng(seed)
    lps = LPS_TO_RAS @ affine
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    row_dir, col_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    instance_numbers = rng.permutation(data.shape[2]) + 1
    out = {}
    for k in range(data.shape[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        for keyword, value in PLANTED_IDENTIFIERS.items():
            setattr(ds, keyword, value)
        ds.Modality, ds.Manufacturer, ds.MagneticFieldStrength = "MR", "SIEMENS", 3.0
        ds.RepetitionTime, ds.EchoTime, ds.FlipAngle = 2300.0, 2.98, 9.0
        ds.ScanningSequence, ds.MRAcquisitionType = "GR\\IR", "3D"
        ds.InstanceNumber = int(instance_numbers[k])
        ds.ImagePositionPatient = [float(v) for v in (lps @ [0, 0, k, 1])[:3]]
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.SliceThickness = float(spacing[2])
        pixels = np.ascontiguousarray(data[:, :, k].T.astype(np.int16))
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = pixels.tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out[f"IM{instance_numbers[k]:05d}.dcm"] = buffer.getvalue()
    return dict(sorted(out.items()))


@pytest.fixture(scope="session")
def t1_small() -> tuple[np.ndarray, np.ndarray]:
    """A real T1 at 2 x 3 x 2 mm with oblique generated geometry (int16 voxels, voxel -> RAS affine)."""
    data, affine = real_t1()
    return data, oblique(affine)


@pytest.fixture(scope="session")
def dicom_series(t1_small) -> dict[str, bytes]:
    data, affine = t1_small
    return dicom_slice_files(data, affine)


@pytest.fixture(scope="session")
def planted_identifiers() -> dict[str, str]:
    """Identifying DICOM fields written into every file of ``make_dicom_series``."""
    return dict(PLANTED_IDENTIFIERS)


@pytest.fixture(scope="session")
def make_dicom_series():
    """``make_dicom_series(data, affine, slope=0.5, intercept=10.0, series_uid=None, seed=0)`` -> {name: bytes}."""
    return dicom_slice_files


@pytest.fixture(scope="session")
def make_nifti():
    """``make_nifti(data, affine, gz=False, **header_fields)`` -> NIfTI-1 file bytes."""
    return nifti_bytes


@pytest.fixture(scope="session")
def real_file():
    """``real_file(catalogue_name)`` -> path of a real scan (skips when its package is absent)."""
    return real_path


@pytest.fixture(scope="session")
def payload_of():
    """``payload_of(path, key=None)`` -> a one-file ScanPayload of that file's bytes."""
    return file_payload
