"""Sources: objects listed with size and ETag (S3 and disk), grouped into scan units, fetched byte for byte."""

from __future__ import annotations

from datastore.objectstore import ObjectStoreConfig
from ingest.sources import anonymous_name, list_objects, read_payload, scan_units
from ingest.spec import DatasetSpec

SPEC = DatasetSpec(name="mixed", source="", licence="test", include=["*"], exclude=["*.json"])


def put(store, bucket: str, files: dict[str, bytes]) -> None:
    client = store.boto3_client()
    for key, body in files.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)


FILES = {
    "raw/mixed/sub-1/anat.nii.gz": b"\x1f\x8b nifti",
    "raw/mixed/sub-1/series4/IM2.dcm": b"dicom two",
    "raw/mixed/sub-1/series4/IM1.dcm": b"dicom one",
    "raw/mixed/sub-2/scan.mgz": b"mgz",
    "raw/mixed/sub-2/scan.json": b"{}",
    "raw/other/sub-9/x.nii": b"not this dataset",
}


def test_s3_listing_carries_size_and_etag_and_skips_folder_markers(object_store, bucket):
    put(object_store, bucket, {**FILES, "raw/mixed/sub-3/": b""})
    objects = list_objects(f"s3://{bucket}/raw/mixed", object_store)
    assert [o.key for o in objects] == ["sub-1/anat.nii.gz", "sub-1/series4/IM1.dcm", "sub-1/series4/IM2.dcm",
                                        "sub-2/scan.json", "sub-2/scan.mgz"]
    assert objects[0].size == len(FILES["raw/mixed/sub-1/anat.nii.gz"]) and len(objects[0].etag) == 32


def test_dicom_files_of_one_folder_form_one_unit_other_files_stand_alone_and_bytes_come_as_stored(object_store, bucket):
    put(object_store, bucket, FILES)
    source = f"s3://{bucket}/raw/mixed"
    units = scan_units(SPEC, list_objects(source, object_store))
    assert [(u.key, len(u.files)) for u in units] == [("sub-1/anat.nii.gz", 1), ("sub-1/series4/", 2), ("sub-2/scan.mgz", 1)]
    series = units[1]
    assert series.size == len(b"dicom one") + len(b"dicom two") and series.etag.startswith("series-")

    assert read_payload(source, units[0], object_store).files == {"anat.nii.gz": FILES["raw/mixed/sub-1/anat.nii.gz"]}
    payload = read_payload(source, series, object_store)
    assert payload.key == f"{source}/sub-1/series4/"
    assert payload.files == {"IM1.dcm": b"dicom one", "IM2.dcm": b"dicom two"}


def test_a_series_etag_changes_when_any_member_changes(object_store, bucket):
    put(object_store, bucket, FILES)
    source = f"s3://{bucket}/raw/mixed"
    before = scan_units(SPEC, list_objects(source, object_store))[1].etag
    put(object_store, bucket, {"raw/mixed/sub-1/series4/IM2.dcm": b"dicom two, re-exported"})
    assert scan_units(SPEC, list_objects(source, object_store))[1].etag != before


def test_local_folders_list_and_read_the_same_way(tmp_path):
    for key, body in FILES.items():
        path = tmp_path / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    source = str(tmp_path / "raw" / "mixed")
    units = scan_units(SPEC, list_objects(source, ObjectStoreConfig()))
    assert [u.key for u in units] == ["sub-1/anat.nii.gz", "sub-1/series4/", "sub-2/scan.mgz"]
    assert read_payload(source, units[2], ObjectStoreConfig()).files == {"scan.mgz": b"mgz"}


def test_anonymous_names_keep_only_the_position_and_a_format_suffix_the_readers_know():
    assert anonymous_name(3, "DOE.JANE_19650312.nii.gz") == "0003.nii.gz"
    assert anonymous_name(0, "DOE^JANE.IM0001") == "0000"
    assert anonymous_name(12, "t1_doe.MGH.GZ") == "0012.mgh.gz"
