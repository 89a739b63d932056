"""Dataset specs: a new dataset is a YAML file; keys map to subjects, sessions and sequences by its rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from braindino.config import ConfigError
from ingest.spec import DatasetSpec, SequenceRule, load_spec, spec_paths

REPO = Path(__file__).resolve().parents[2]


def bids_like(**fields) -> DatasetSpec:
    return DatasetSpec(
        name="openneuro-x",
        source="s3://raw/x",
        licence="CC0",
        subject_pattern=r"^sub-(?P<subject>[^/]+)/(ses-(?P<session>[^/]+)/)?",
        sequence_rules=[SequenceRule(r"_T1w\.nii", "T1w"), SequenceRule(r"_FLAIR\.", "FLAIR")],
        include=["*.nii.gz", "*.dcm"],
        exclude=["derivatives/*", "*_defacemask.nii.gz"],
        **fields,
    )


def test_every_registered_spec_loads_with_a_licence():
    specs = [load_spec(path) for path in spec_paths(REPO / "configs" / "datasets")]
    assert {s.name for s in specs} >= {"icbm152", "colin27", "heudiconv"}
    assert all(s.licence and s.citation and s.source.startswith("s3://braindino-raw/raw/") for s in specs)


def test_subject_and_session_come_from_the_named_groups():
    spec = bids_like()
    assert spec.subject_of("sub-007/ses-2/anat/sub-007_ses-2_T1w.nii.gz") == ("007", "2")
    assert spec.subject_of("sub-008/anat/sub-008_T1w.nii.gz") == ("008", "")
    with pytest.raises(ValueError, match="does not match subject_pattern"):
        spec.subject_of("participants.tsv")


def test_a_fixed_subject_names_single_subject_datasets():
    spec = load_spec(REPO / "configs" / "datasets" / "icbm152.yaml")
    assert spec.subject_of("icbm2009c_t2/mni_icbm152_t2_tal_nlin_sym_09c.nii") == ("icbm152", "")
    assert spec.sequence_of("icbm2009c_t2/mni_icbm152_t2_tal_nlin_sym_09c.nii", {}) == "T2w"
    assert spec.sequence_of("icbm2009c_t1/mni_icbm152_t1_tal_nlin_sym_09c.nii", {}) == "T1w"


def test_include_and_exclude_globs():
    spec = bids_like()
    assert spec.matches("sub-1/anat/sub-1_T1w.nii.gz")
    assert not spec.matches("derivatives/sub-1/anat/sub-1_T1w.nii.gz")
    assert not spec.matches("sub-1/anat/sub-1_defacemask.nii.gz")
    assert not spec.matches("sub-1/anat/sub-1_T1w.json")


def test_the_sidecar_table_wins_over_rules_then_the_default(tmp_path):
    table = tmp_path / "sequences.csv"
    table.write_text("key,sequence\nsub-1/anat/sub-1_T1w.nii.gz,MPRAGE\n")
    spec = bids_like(sequence_table=str(table), default_sequence="other")
    from datastore.objectstore import ObjectStoreConfig

    loaded = spec.load_sequence_table(ObjectStoreConfig())
    assert spec.sequence_of("sub-1/anat/sub-1_T1w.nii.gz", loaded) == "MPRAGE"
    assert spec.sequence_of("sub-2/anat/sub-2_FLAIR.nii.gz", loaded) == "FLAIR"
    assert spec.sequence_of("sub-2/dwi/sub-2_dwi.nii.gz", loaded) == "other"


def test_a_label_table_needs_a_subject_column(tmp_path):
    from datastore.objectstore import ObjectStoreConfig

    table = tmp_path / "participants.csv"
    table.write_text("participant,age\n007,31\n")
    with pytest.raises(ValueError, match=r"participants.csv: table needs the columns \['subject'\]"):
        bids_like(label_table=str(table)).load_labels(ObjectStoreConfig())
    table.write_text("subject,age\n007,31\n")
    assert bids_like(label_table=str(table)).load_labels(ObjectStoreConfig()) == [{"subject": "007", "age": "31"}]


def test_dicom_suffixes_mark_series_files():
    spec = bids_like()
    assert spec.is_dicom("sub-1/dicom/series7/IM0001.dcm") and spec.is_dicom("sub-1/dicom/series7/IM0002")
    assert not spec.is_dicom("sub-1/anat/sub-1_T1w.nii.gz")


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: x\nsource: s3://a/b\n", "missing required key 'licence'"),
        ("name: x\nsource: s3://a/b\nlicence: l\nsubject_pattern: '^(?P<who>.*)/'\n", "named group"),
        ("name: x\nsource: s3://a/b\nlicence: l\nsequence_rules: [{pattern: '(', sequence: T1w}]\n", "not a valid regex"),
        ("name: Bad Name\nsource: s3://a/b\nlicence: l\n", "lower-case"),
        ("name: x\nsource: s3://a/b\nlicence: l\nlabels: y\n", "unknown key 'labels'"),
    ],
)
def test_a_broken_spec_names_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_spec(path)
    assert str(path) in str(err.value)
