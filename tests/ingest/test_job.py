"""The ingest job end to end: real scans from the local S3 server through Ray Data into zarr, shards and
the manifest, with bad files planted among them, a run killed before its commit, and reruns.

The module runs one story in order (the tests read the outputs of the runs before them):
a run dies after writing its data but before its commit; the rerun commits every scan exactly once;
its outputs agree with each other and carry no identifier; a rerun with nothing new writes nothing;
a changed object supersedes its old rows.
"""

from __future__ import annotations

import io
import json
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
from PIL import Image

from braindino.volumes import PreprocessSpec, centre_pad_crop
from datastore.manifest import ManifestStore
from datastore.shards import list_shards, read_shard
from datastore.volumes import open_root
from infra.local.bundled import upload_bundled
from infra.local.catalogue import entry
from infra.local.services import LocalMlflow, create_bucket
from ingest.deid import pseudonym
from ingest.planning import locate_scan, preview_ingest
from ingest.settings import IngestSettings
from ingest.spec import load_spec
from pipelines.ingestion import IngestConfig, ingest
from pipelines.tracking import TrackingConfig

REPO = Path(__file__).resolve().parents[2]
SPEC = PreprocessSpec(spacing=(2.0, 2.0, 2.0), slice_size=128)
DESCRIP = b"Jane Doe PID-4711-SECRET scanned 2024"
LAB_SPEC = """
name: lab
source: s3://{bucket}/raw/lab
licence: "test fixture built from ICBM152 2009c (MNI notice)"
citation: "Fonov et al. 2011"
subject_pattern: "^sub-(?P<subject>[^/]+)/(ses-(?P<session>[^/]+)/)?"
sequence_rules: [{{pattern: "T1w|dicom", sequence: T1w}}]
label_table: s3://{bucket}/tables/lab_participants.csv
"""
PACS_SPEC = """
name: pacs
source: s3://{bucket}/raw/pacs
licence: "test fixture built from ICBM152 2009c (MNI notice)"
redact_keys: true
"""
PATIENT_FOLDER = "DOE_JANE_19650312"  # a PACS export names folders by patient: the keys themselves identify


def redacted(key: str) -> str:
    return f"redacted/{pseudonym(f'scan:pacs/{key}')}" + ("/" if key.endswith("/") else "")


GOOD = {
    ("pacs", redacted(f"{PATIENT_FOLDER}/")),
    ("icbm152", "icbm2009c_t1/mni_icbm152_t1_tal_nlin_sym_09c.nii"),
    ("icbm152", "icbm2009c_t2/mni_icbm152_t2_tal_nlin_sym_09c.nii"),
    ("heudiconv", "heudiconv_dwi/"),
    ("lab", "sub-01/ses-1/dicom/"),
    ("lab", "sub-02/anat/sub-02_T1w.nii.gz"),
}
BAD = {
    ("pacs", redacted(f"{PATIENT_FOLDER}/t1_{PATIENT_FOLDER}.nii.gz")): "truncated_gzip",
    ("lab", "sub-03/anat/sub-03_T1w.nii.gz"): "truncated_gzip",
    ("lab", "sub-04/anat/sub-04_T1w.nii"): "bad_magic",
    ("lab", "sub-05/anat/sub-05_T1w.nii"): "non_finite",
    ("lab", "sub-06/anat/sub-06_T1w.nii"): "constant_volume",
    ("lab", "sub-07/anat/sub-07_T1w.nii"): "not_3d",
    ("lab", "sub-08/anat/sub-08_T1w.nii"): "sheared_affine",
}


class Killed(RuntimeError):
    """Stands for the job dying between writing its data and committing the manifest."""


def plant_lab(store, bucket: str, t1_small, dicom_series, make_nifti) -> None:
    """A BIDS-like dataset of real-derived scans: a DICOM series, a NIfTI with identifiers, and bad files."""
    data, affine = t1_small
    real = data.astype(np.float32)
    good = make_nifti(real, affine, gz=True, descrip=DESCRIP)
    sheared = affine.copy()
    sheared[:3, 1] += 0.4 * sheared[:3, 0]
    with_nan = real.copy()
    with_nan[10, 10, 10] = np.nan
    plain = make_nifti(real, affine)
    files = {
        **{f"sub-01/ses-1/dicom/{name}": raw for name, raw in dicom_series.items()},
        "sub-02/anat/sub-02_T1w.nii.gz": good,
        "sub-03/anat/sub-03_T1w.nii.gz": good[: len(good) // 2],
        "sub-04/anat/sub-04_T1w.nii": plain[:344] + b"xx1\x00" + plain[348:],
        "sub-05/anat/sub-05_T1w.nii": make_nifti(with_nan, affine),
        "sub-06/anat/sub-06_T1w.nii": make_nifti(np.full(real.shape, 7, np.float32), affine),
        "sub-07/anat/sub-07_T1w.nii": make_nifti(real[:, :, 40], affine),
        "sub-08/anat/sub-08_T1w.nii": make_nifti(real, sheared),
    }
    client = store.boto3_client()
    for key, body in files.items():
        client.put_object(Bucket=bucket, Key=f"raw/lab/{key}", Body=body)
    client.put_object(Bucket=bucket, Key="tables/lab_participants.csv", Body=b"subject,age,group\n01,34,control\n02,71,AD\n")
    pacs = {**{f"{PATIENT_FOLDER}/{PATIENT_FOLDER}_{name}": raw for name, raw in dicom_series.items()},
            f"{PATIENT_FOLDER}/t1_{PATIENT_FOLDER}.nii.gz": good[: len(good) // 2]}
    for key, body in pacs.items():
        client.put_object(Bucket=bucket, Key=f"raw/pacs/{key}", Body=body)


@pytest.fixture(scope="module")
def world(object_store, ray_session, tmp_path_factory, t1_small, dicom_series, make_nifti):
    """Raw data in a fresh bucket, spec files pointing at it, and an ingest config with MLflow on sqlite."""
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    create_bucket(object_store, bucket)
    upload_bundled(object_store, bucket, {"icbm152": ["icbm2009c_t1", "icbm2009c_t2"], "colin27": ["colin27_t1"],
                                          "heudiconv": ["heudiconv_dwi"]})
    plant_lab(object_store, bucket, t1_small, dicom_series, make_nifti)
    specs = tmp_path_factory.mktemp("specs")
    for name in ("icbm152", "colin27", "heudiconv"):
        text = (REPO / "configs" / "datasets" / f"{name}.yaml").read_text()
        (specs / f"{name}.yaml").write_text(text.replace("s3://braindino-raw/", f"s3://{bucket}/"))
    (specs / "lab.yaml").write_text(LAB_SPEC.format(bucket=bucket))
    (specs / "pacs.yaml").write_text(PACS_SPEC.format(bucket=bucket))
    mlflow = LocalMlflow(tmp_path_factory.mktemp("mlflow"))
    config = IngestConfig(
        datasets=[str(p) for p in sorted(specs.glob("*.yaml"))],
        ingest=IngestSettings(output=f"s3://{bucket}/out", storage=object_store, preprocess=SPEC, shard_size=50),
        tracking=TrackingConfig(mlflow.tracking_uri, "ingest-test", mlflow.artifact_root),
    )
    fs, root = object_store.resolve(config.ingest.output)
    return {"bucket": bucket, "config": config, "mlflow": mlflow, "fs": fs, "root": root,
            "colin": entry("colin27_t1").available}


def good_keys(world) -> set[tuple[str, str]]:
    return GOOD | ({("colin27", "colin27_t1/ch2.nii.gz")} if world["colin"] else set())


def stored_objects(world) -> dict[str, int]:
    infos = world["fs"].get_file_info(pafs.FileSelector(world["root"], recursive=True, allow_not_found=True))
    return {info.path: info.size for info in infos if info.is_file}


@pytest.fixture(scope="module")
def killed_then_rerun(world):
    """Run once with a crash just before the commit, then rerun; returns (leftovers of the dead run, report)."""
    def die(stage: str) -> None:
        raise Killed(stage)

    with pytest.raises(Killed):
        ingest(world["config"], fault_hook=die)
    leftovers = stored_objects(world)
    report = ingest(world["config"])
    return leftovers, report


@pytest.fixture(scope="module")
def committed_samples(world, killed_then_rerun):
    """Every sample of the committed run's shards, read once: shard path -> [(key, image, record)]."""
    fs, root = world["fs"], world["root"]
    return {shard: list(read_shard(fs, shard)) for shard in list_shards(fs, f"{root}/shards/{latest(world).run_id}")}


def latest(world):
    return ManifestStore(world["config"].ingest.output, world["config"].ingest.storage).latest()


def test_a_run_killed_before_its_commit_leaves_nothing_visible_and_the_rerun_lands_each_scan_once(world, killed_then_rerun):
    leftovers, report = killed_then_rerun
    assert any("/shards/" in p for p in leftovers) and any("/zarr/" in p for p in leftovers)  # data was written...
    assert not any(Path(p).name.startswith("v0") for p in leftovers)  # ...but never committed

    manifest = latest(world)
    assert manifest.version == 1 and report.committed and report.manifest_version == 1
    dead_runs = {p.split("/shards/")[1].split("/")[0] for p in leftovers if "/shards/" in p}
    assert manifest.run_id not in dead_runs
    assert not any(f"/{run}/" in p for run in dead_runs for p in stored_objects(world))  # swept after the commit
    keys = Counter((r["dataset"], r["source_key"]) for r in manifest.scans.to_pylist())
    assert set(keys) == good_keys(world) | set(BAD) and set(keys.values()) == {1}
    sample_keys = manifest.slices["sample_key"].to_pylist()
    assert len(sample_keys) == len(set(sample_keys)) == report.slices


def test_good_scans_land_and_each_bad_one_is_quarantined_with_its_reason(world, killed_then_rerun):
    _, report = killed_then_rerun
    rows = {(r["dataset"], r["source_key"]): r for r in latest(world).scans.to_pylist()}
    assert {k for k, r in rows.items() if r["status"] == "ok"} == good_keys(world)
    assert {k: r["reason"] for k, r in rows.items() if r["status"] == "quarantined"} == BAD
    for key, reason in BAD.items():
        assert key[1] in rows[key]["detail"], "the reason names the file"
    assert report.scans_ok == len(good_keys(world)) and report.by_reason() == dict(sorted(Counter(BAD.values()).items()))
    dicom = rows[("lab", "sub-01/ses-1/dicom/")]
    assert dicom["sequence"] == "T1w" and dicom["session"] and dicom["subject"] != "01"


def test_the_label_table_lands_with_the_same_subject_pseudonyms_as_the_scans(world, killed_then_rerun):
    manifest = latest(world)
    subject = {r["source_key"]: r["subject"] for r in manifest.scans.to_pylist() if r["dataset"] == "lab"}
    labels = {(r["subject"], r["label"]): r["value"] for r in manifest.labels.to_pylist() if r["dataset"] == "lab"}
    assert labels == {(subject["sub-01/ses-1/dicom/"], "age"): "34", (subject["sub-01/ses-1/dicom/"], "group"): "control",
                      (subject["sub-02/anat/sub-02_T1w.nii.gz"], "age"): "71", (subject["sub-02/anat/sub-02_T1w.nii.gz"], "group"): "AD"}


def test_slice_counts_shards_and_zarr_agree_with_the_manifest(world, committed_samples):
    manifest = latest(world)
    root = world["root"]
    zarr_root = open_root(world["config"].ingest.output, world["config"].ingest.storage, mode="r")
    slices = manifest.active_slices().to_pylist()
    per_volume = Counter(s["volume_id"] for s in slices)
    ok = [r for r in manifest.scans.to_pylist() if r["status"] == "ok"]
    volumes = {r["volume_id"]: np.asarray(zarr_root[r["zarr_path"].removeprefix("zarr/")]) for r in ok}
    for scan in ok:
        assert per_volume[scan["volume_id"]] == scan["slices_kept"] > 0
        volume = volumes[scan["volume_id"]]
        assert list(volume.shape) == scan["shape"]
        occupied = np.flatnonzero(np.any(volume != 0, axis=(0, 1)))
        fractions = np.count_nonzero(volume, axis=(0, 1)) / (volume.shape[0] * volume.shape[1])
        expected = [z for z in range(occupied[0], occupied[-1] + 1) if fractions[z] >= SPEC.min_foreground]
        assert sorted(s["z"] for s in slices if s["volume_id"] == scan["volume_id"]) == expected

    by_key = {s["sample_key"]: s for s in slices}
    assert sorted(f"{root}/{s}" for s in {s["shard"] for s in slices}) == sorted(committed_samples)
    for shard, samples in committed_samples.items():
        for key, image, record in samples:
            row = by_key.pop(key)
            assert f"{root}/{row['shard']}" == shard and record.z == row["z"] and record.volume_id == row["volume_id"]
            expected = centre_pad_crop(volumes[row["volume_id"]][:, :, row["z"]], SPEC.slice_size)
            np.testing.assert_allclose(image.astype(np.float32), expected, atol=2e-3, rtol=2**-10)
    assert by_key == {}  # every manifest slice was found in exactly the shard it names


def test_shards_mix_subjects_and_datasets(committed_samples):
    assert len(committed_samples) >= 5
    for shard, samples in committed_samples.items():
        volumes = [record.volume_id for _, _, record in samples]
        longest, run = 1, 1
        for before, after in zip(volumes, volumes[1:]):
            run = run + 1 if before == after else 1
            longest = max(longest, run)
        assert longest <= 5, f"{shard} holds {longest} slices of one scan in a row"
        if len(volumes) == 50:
            assert len(set(volumes)) >= 4


def test_no_planted_identifier_appears_in_any_output_or_in_mlflow(world, killed_then_rerun, planted_identifiers):
    fs = world["fs"]
    secrets = [v.encode() for v in planted_identifiers.values()] + [DESCRIP, b"Jane Doe", b"PID-4711",
                                                                    b"DOE_JANE", b"19650312"]
    _, report = killed_then_rerun
    assert not [s for s in secrets if s in (report.summary() + repr(report.quarantined)).encode()]
    outputs = {}
    for path in stored_objects(world):
        with fs.open_input_stream(path) as stream:
            outputs[path] = stream.read()
    outputs.update({str(p): p.read_bytes() for p in world["mlflow"].root.rglob("*") if p.is_file()})
    assert len(outputs) > 20
    leaks = [(path, s) for path, data in outputs.items() for s in secrets if s in data]
    assert leaks == []


def test_a_redacted_key_is_found_again_by_its_scan_pseudonym(world, killed_then_rerun):
    (row,) = [r for r in latest(world).scans.to_pylist() if r["dataset"] == "pacs" and r["status"] == "quarantined"]
    specs = [load_spec(path) for path in world["config"].datasets]
    found = locate_scan(specs, world["config"].ingest.storage, row["scan_id"])
    assert found == [f"s3://{world['bucket']}/raw/pacs/{PATIENT_FOLDER}/t1_{PATIENT_FOLDER}.nii.gz"]


def test_the_run_is_logged_to_mlflow_with_summary_quarantine_list_and_qc_montages(world, killed_then_rerun):
    import mlflow

    _, report = killed_then_rerun
    mlflow.set_tracking_uri(world["mlflow"].tracking_uri)
    runs = mlflow.search_runs(experiment_names=["ingest-test"], output_format="list")
    run = next(r for r in runs if r.data.tags["ingest.run_id"] == report.run_id)
    assert run.data.metrics["scans_ok"] == report.scans_ok and run.data.metrics["slices"] == report.slices
    assert run.data.metrics["scans_quarantined"] == len(BAD) and run.data.params["preprocess.slice_size"] == "128"
    assert not any("secret" in k or "access_key" in k for k in run.data.params)
    quarantine = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/quarantine.json")
    assert quarantine["by_reason"] == dict(sorted(Counter(BAD.values()).items()))
    for dataset in {d for d, _ in good_keys(world)}:
        png = Path(mlflow.artifacts.download_artifacts(f"{run.info.artifact_uri}/qc/{dataset}.png"))
        assert Image.open(io.BytesIO(png.read_bytes())).size[0] >= 128


def test_the_bucket_holds_no_zero_byte_folder_marker_after_a_swept_run_and_a_commit(world, object_store, killed_then_rerun):
    listing = object_store.boto3_client().get_paginator("list_objects_v2").paginate(Bucket=world["bucket"])
    keys = {item["Key"]: item["Size"] for page in listing for item in page.get("Contents", [])}
    assert any(key.startswith("out/shards/") for key in keys)
    assert not {key: size for key, size in keys.items() if key.endswith("/")}


def test_a_rerun_with_nothing_new_writes_nothing(world, killed_then_rerun):
    before = stored_objects(world)
    report = ingest(world["config"])
    assert not report.committed and report.scans_processed == 0 and report.manifest_version == 1
    assert stored_objects(world) == before


def test_a_rerun_with_another_preprocess_spec_is_refused_before_writing(world, killed_then_rerun):
    before = stored_objects(world)
    config = world["config"]
    other = replace(config, ingest=replace(config.ingest, preprocess=replace(SPEC, slice_size=64)))
    with pytest.raises(ValueError, match="'slice_size': 128.*'slice_size': 64"):
        ingest(other)
    assert latest(world).preprocess == json.loads(SPEC.to_json()) and stored_objects(world) == before


def test_a_preview_names_new_and_changed_scans_and_writes_nothing(world, killed_then_rerun, object_store):
    client, bucket, config = object_store.boto3_client(), world["bucket"], world["config"]
    changed, new = "sub-02/anat/sub-02_T1w.nii.gz", "sub-09/anat/sub-09_T1w.nii"
    original = client.get_object(Bucket=bucket, Key=f"raw/lab/{changed}")["Body"].read()
    before, version = stored_objects(world), latest(world).version
    client.put_object(Bucket=bucket, Key=f"raw/lab/{changed}", Body=original[:-1])
    client.put_object(Bucket=bucket, Key=f"raw/lab/{new}", Body=original)
    specs = [load_spec(path) for path in config.datasets]

    preview = preview_ingest(specs, config.ingest)
    lab_units = sum(dataset == "lab" for dataset, _ in GOOD | set(BAD))
    assert preview.manifest_version == version
    assert preview.new == {"lab": [new]} and preview.changed == {"lab": [changed]}
    assert preview.listed["lab"] == lab_units + 1 and set(preview.listed) == {spec.name for spec in specs}
    assert f"lab: {lab_units + 1} listed, 1 new, 1 changed, {lab_units - 1} unchanged" in preview.summary()
    assert stored_objects(world) == before and latest(world).version == version

    client.put_object(Bucket=bucket, Key=f"raw/lab/{changed}", Body=original)
    client.delete_object(Bucket=bucket, Key=f"raw/lab/{new}")
    restored = preview_ingest(specs, config.ingest)
    assert restored.new == {} and restored.changed == {}


def test_a_changed_object_supersedes_its_old_rows(world, killed_then_rerun, object_store, real_file):
    key = ("icbm152", "icbm2009c_t2/mni_icbm152_t2_tal_nlin_sym_09c.nii")
    old = next(r for r in latest(world).scans.to_pylist() if (r["dataset"], r["source_key"]) == key)
    replacement = real_file("icbm2009c_t2bet").read_bytes()  # the same person's T2, brain-extracted
    object_store.boto3_client().put_object(Bucket=world["bucket"], Key=f"raw/icbm152/{key[1]}", Body=replacement)

    report = ingest(world["config"])
    manifest = latest(world)
    assert report.committed and manifest.version == 2 and report.scans_processed == 1
    rows = [r for r in manifest.scans.to_pylist() if (r["dataset"], r["source_key"]) == key]
    assert sorted(r["status"] for r in rows) == ["ok", "superseded"]
    new = next(r for r in rows if r["status"] == "ok")
    assert new["scan_id"] == old["scan_id"] and new["volume_id"] != old["volume_id"]
    active = Counter(s["volume_id"] for s in manifest.active_slices().to_pylist())
    assert old["volume_id"] not in active and active[new["volume_id"]] == new["slices_kept"]
    assert len(manifest.inactive_sample_keys()) == old["slices_kept"]
    written = list_shards(world["fs"], f"{world['root']}/shards/{manifest.run_id}")
    assert sorted(f"shards/{manifest.run_id}/{Path(p).name}" for p in written) == new["shards"]


def test_a_changed_label_table_alone_commits_new_labels_and_nothing_else(world, killed_then_rerun, object_store):
    before = latest(world)
    object_store.boto3_client().put_object(Bucket=world["bucket"], Key="tables/lab_participants.csv",
                                           Body=b"subject,age,group\n01,35,control\n02,71,AD\n")
    report = ingest(world["config"])
    after = latest(world)
    assert report.committed and report.scans_processed == 0 and report.slices == 0
    assert after.version == before.version + 1
    assert after.scans.equals(before.scans) and after.slices.equals(before.slices)
    ages = {r["value"] for r in after.labels.to_pylist() if r["dataset"] == "lab" and r["label"] == "age"}
    assert ages == {"35", "71"}
    assert not ingest(world["config"]).committed  # and the next run finds nothing new again


def test_a_layout_1_manifest_without_the_spec_is_upgraded_from_the_stored_volumes(world, killed_then_rerun):
    """A version committed by layout 1 before commits recorded the preprocessing spec: the next run upgrades it
    first (one commit recording the spec its volumes name, nothing else changed), then refuses another spec;
    with the same spec there is nothing new."""
    fs, root = world["fs"], world["root"]
    before = latest(world)
    commit = json.loads(fs.open_input_stream(f"{root}/manifest/v{before.version:06d}.json").read())
    del commit["preprocess"]
    legacy = before.version + 1
    with fs.open_output_stream(f"{root}/manifest/v{legacy:06d}.json") as out:
        out.write(json.dumps({**commit, "version": legacy, "schema_version": 1}).encode())
    with pytest.raises(ValueError, match="upgrade-manifest"):
        latest(world)

    config = world["config"]
    with pytest.raises(ValueError, match="'slice_size': 128.*'slice_size': 64"):
        ingest(replace(config, ingest=replace(config.ingest, preprocess=replace(SPEC, slice_size=64))))
    after = latest(world)
    assert after.version == legacy + 1 and after.preprocess == json.loads(SPEC.to_json())
    assert after.scans.equals(before.scans) and after.slices.equals(before.slices)
    assert not ingest(config).committed and latest(world).version == legacy + 1
