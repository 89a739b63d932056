"""DICOM series (a folder of files or a zip of them) -> one 3D volume in RAS.

Series choice: files are grouped by SeriesInstanceUID and the series with the most files is read
(localisers and scouts that share a folder are ignored and counted in ``metadata``); two or more
series tied for largest are refused as ``series_ambiguous`` because no rule can tell which is meant.

Three layouts are read: classic one-slice-per-file series (sorted along the slice normal, checked for
consistent geometry and for missing slices), Siemens mosaics (decoded with nibabel's dicomwrappers;
one file per volume), and nothing else: enhanced multi-frame files are refused as ``enhanced_multiframe``.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # nibabel's "experimental DICOM readers" notice
    from nibabel.nicom import dicomwrappers

from ingest.deid import allowed_dicom_metadata
from ingest.readers.dicom_stack import LPS_TO_RAS, stack_slices
from ingest.readers.scan import RawScan, ScanPolicy, ScanRejected, choose_volume


def read_dicom(key: str, files: dict[str, bytes], policy: ScanPolicy) -> RawScan:
    """Read the largest series among ``files`` (name -> bytes) into a RawScan with allow-listed metadata."""
    if len(files) > policy.max_files:
        raise ScanRejected(key, "too_many_files", f"{key} holds {len(files)} files, above the {policy.max_files}-file limit of ScanPolicy.max_files")
    datasets, skipped = parse_datasets(files)
    if not datasets:
        raise ScanRejected(key, "bad_magic", f"none of the {len(files)} files in {key} is DICOM; check the folder or archive contents")
    series, series_count = largest_series(key, datasets)
    metadata: dict[str, Any] = {
        **allowed_dicom_metadata(series[0][1]),
        "dicom_series_in_unit": series_count,
        "dicom_files_ignored": skipped + len(datasets) - len(series),
    }
    first = series[0][1]
    if is_mosaic(first):
        data, affine = read_mosaics(key, series, policy, metadata)
        metadata["dicom_layout"] = "mosaic"
    elif int(first.get("NumberOfFrames", 1) or 1) > 1:
        raise ScanRejected(
            key, "enhanced_multiframe",
            f"{key} is an enhanced multi-frame DICOM ({first.get('NumberOfFrames')} frames in {series[0][0]}); "
            "convert it to NIfTI (e.g. with dcm2niix) before ingest",
        )
    else:
        data, affine = stack_slices(key, series, policy, metadata)
        metadata["dicom_layout"] = "slices"
    return RawScan(data, affine, "dicom", metadata)


NO_PREAMBLE_STARTS = (b"\x02\x00", b"\x08\x00")  # file meta or identifying group tag, little endian


def parse_datasets(files: dict[str, bytes]) -> tuple[list[tuple[str, pydicom.Dataset]], int]:
    """Parse every DICOM file; return ``(name, dataset)`` pairs and the number of non-DICOM files skipped.

    Files without the 128-byte preamble and ``DICM`` marker are accepted when they start with a group
    0002 or 0008 tag, as older exporters write them.
    """
    parsed, skipped = [], 0
    for name in sorted(files):
        raw = files[name]
        force = raw[128:132] != b"DICM" and raw[:2] in NO_PREAMBLE_STARTS
        try:
            parsed.append((name, pydicom.dcmread(io.BytesIO(raw), force=force)))
        except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError):
            skipped += 1
    return parsed, skipped


def largest_series(key: str, datasets: list[tuple[str, pydicom.Dataset]]) -> tuple[list[tuple[str, pydicom.Dataset]], int]:
    groups: dict[str, list[tuple[str, pydicom.Dataset]]] = defaultdict(list)
    for name, ds in datasets:
        groups[str(ds.get("SeriesInstanceUID", ""))].append((name, ds))
    sizes = Counter({uid: len(members) for uid, members in groups.items()})
    (best, best_size), *rest = sizes.most_common()
    if rest and rest[0][1] == best_size:
        raise ScanRejected(
            key, "series_ambiguous",
            f"{key} holds {len(groups)} series and the largest ones tie at {best_size} files; "
            "split the folder so that each scan unit holds one series",
        )
    return groups[best], len(groups)


def is_mosaic(ds: pydicom.Dataset) -> bool:
    return "MOSAIC" in [str(v).upper() for v in (ds.get("ImageType") or [])]


def read_mosaics(
    key: str, series: list[tuple[str, pydicom.Dataset]], policy: ScanPolicy, metadata: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Decode Siemens mosaics: each file is one volume, so several files form a 4D series."""
    ordered = sorted(series, key=lambda item: (int(item[1].get("InstanceNumber", 0) or 0), item[0]))
    name, ds = ordered[choose_volume(key, len(ordered), policy, metadata)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wrapper = dicomwrappers.wrapper_from_data(ds)
            data = np.asarray(wrapper.get_data(), dtype=np.float32)
            affine = LPS_TO_RAS @ np.asarray(wrapper.affine, dtype=np.float64)
    except Exception as err:  # nibabel raises several types for unreadable CSA headers
        raise ScanRejected(
            key, "mosaic",
            f"cannot decode the Siemens mosaic {name} in {key} ({err}); convert it to NIfTI with dcm2niix first",
        ) from err
    if data.ndim != 3:
        raise ScanRejected(key, "not_3d", f"mosaic {name} in {key} decoded to shape {data.shape}, not a 3D volume")
    return data, affine
