"""Task heads on real scans: the export contract, segmentation mapped back onto the scan's own grid, the Cox
head's mechanics, and a sequence classifier that does not read the source grid."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from braindino.evaluation.protocol import run_protocol
from braindino.evaluation.segmentation_task import ScanCase, ScanCases, SegmentationTask
from braindino.evaluation.splits import split_subjects
from braindino.evaluation.tasks import EmbeddingTask, KnnProbe
from braindino.features import Encoder, FeatureSpec, volume_features
from braindino.heads import (EmbeddingHead, EmbeddingHeadConfig, EncoderRef, HeadExportError, HeadSpec, architecture_of,
                             load_head, save_head, trainable_parameters)
from braindino.heads.training import FitSettings
from braindino.models.vit import ViTConfig, VisionTransformer
from braindino.volumes import PreprocessSpec, canonicalise, labels_to_source_grid, preprocess, source_grid
from ingest.readers import ScanPayload, read_scan
from tests.conftest import real_scan

SPEC = PreprocessSpec(spacing=(3.0, 3.0, 3.0), slice_size=80)


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    torch.manual_seed(0)
    return Encoder(VisionTransformer(ViTConfig(size="micro")))


def read(name: str):
    path = real_scan(name).path
    return read_scan(ScanPayload(path.name, {path.name: path.read_bytes()}))


def head_spec(kind="classification", digest="a" * 64, **output) -> HeadSpec:
    module = EmbeddingHead(EmbeddingHeadConfig(64, 3, 32, "attention"))
    return module, HeadSpec(task="sequence", family="sequence_classification", kind=kind,
                            architecture=architecture_of(module), features=FeatureSpec(slices_per_volume=16),
                            output=output or {"classes": ["T1w", "T2w", "T1c"]},
                            encoder=EncoderRef("braindino-encoder", "3", digest), preprocess=json.loads(SPEC.to_json()))


def test_a_head_export_round_trips_and_refuses_another_encoder(tmp_path, encoder):
    module, spec = head_spec()
    torch.nn.init.normal_(module.pooling.score.weight)  # not the initial state
    folder = save_head(tmp_path / "head", module, spec)
    assert sorted(p.name for p in folder.iterdir()) == ["head.json", "head.safetensors"]
    head = load_head(folder, encoder_sha256="a" * 64)
    slices = torch.randn(2, 7, 64)
    assert torch.equal(head.module(slices), module.eval()(slices))
    assert head.spec == spec and head.preprocess == SPEC
    with pytest.raises(HeadExportError, match=f"{'a' * 64}.*{'b' * 64}"):
        load_head(folder, encoder_sha256="b" * 64)
    raw = json.loads((folder / "head.json").read_text())
    (folder / "head.json").write_text(json.dumps({**raw, "format_version": 9}))
    with pytest.raises(HeadExportError, match="format_version 9"):
        load_head(folder)
    with pytest.raises(HeadExportError, match="needs \\['unit', 'target_mean', 'target_std'\\]"):
        head_spec(kind="regression", classes=["x"])
    share = trainable_parameters(module) / sum(p.numel() for p in encoder.parameters())
    assert 0 < share < 0.2


@pytest.fixture(scope="module")
def tumour_cases(encoder):
    """The two pyradiomics tumour cases (real T1c, real masks), preprocessed, with blocks 0 and 1 of the encoder."""
    cases = []
    for index in (1, 2):
        image, mask = read(f"pyradiomics_brain{index}_t1c"), read(f"pyradiomics_brain{index}_tumour")
        volume, _ = preprocess(image.data, image.affine, SPEC)
        features = volume_features(encoder, volume, SPEC, FeatureSpec(slices_per_volume=0, blocks=(0, 1)))
        labels = np.rint(mask.data).astype(np.int16)
        cases.append((image, ScanCase(f"brain{index}", lambda v=volume: v, lambda f=features: f, lambda m=labels: m)))
    return cases


def test_tumour_segmentation_lands_on_the_scans_own_grid_where_the_reference_is(tmp_path, tumour_cases, one_thread):
    kept = {}
    cases = ScanCases([case for _, case in tumour_cases], {0: "background", 1: "tumour"}, SPEC.slice_size, 2.0,
                      keep=lambda kept_prediction: kept.setdefault(kept_prediction.row, kept_prediction.labels))
    task = SegmentationTask(cases, rows=2, embed_dim=64, n_blocks=2, width=64,
                            settings=FitSettings(epochs=25, learning_rates=(3e-3,), batch_size=16))
    fitted = task.fit(np.array([0]), np.array([], dtype=int), seed=0)  # trained on brain1 only
    scores = task.predict(fitted, np.array([0]), keep=True)
    image, _ = tumour_cases[0]
    predicted = kept[0]
    assert predicted.labels.shape == image.data.shape and np.allclose(predicted.affine, image.affine)
    reference = tumour_cases[0][1].reference()
    dice = 2 * ((predicted.labels == 1) & (reference == 1)).sum() / ((predicted.labels == 1).sum() + reference.sum())
    assert dice > 0.5 and scores[0, 0, 0] == pytest.approx(dice)  # Dice on the training subject, original grid
    path = tmp_path / "brain1_tumour.nii.gz"
    nib.save(nib.Nifti1Image(predicted.labels, predicted.affine), path)
    written = nib.load(path)
    assert written.shape == image.data.shape and np.allclose(written.affine, image.affine)
    assert scores.shape == (1, 1, 3) and scores[0, 0, 1] >= 0 and 0 <= scores[0, 0, 2] <= 1


def test_cox_head_mechanics_on_a_synthetic_survival_table_joined_to_real_slice_embeddings(encoder, one_thread):
    """Synthetic times and events, for mechanics only: no claim about survival from MRI is made here."""
    image = read("icbm2009c_t1")
    volume, _ = preprocess(image.data, image.affine, SPEC)
    embeddings = volume_features(encoder, volume, SPEC, FeatureSpec(slices_per_volume=0)).cls  # real slices as rows
    rng = np.random.default_rng(0)
    direction = rng.normal(size=embeddings.shape[1])
    score = (embeddings.numpy() - embeddings.numpy().mean(0)) @ direction
    risk = (score - score.mean()) / score.std()
    time = rng.exponential(np.exp(-1.5 * risk)) * 100
    event = rng.random(len(time)) < 0.7
    subjects = np.array([f"row{i}" for i in range(len(time))])
    task = EmbeddingTask("survival", embeddings[:, None], torch.ones(len(time), 1, dtype=torch.bool),
                         np.stack([time, event], 1), 1, hidden_dim=32,
                         settings=FitSettings(epochs=60, learning_rates=(1e-2,), eval_every=10))
    result = run_protocol(task, subjects, split_subjects(list(subjects), seed=0), [1.0], seeds=1, resamples=200)
    full = result.fractions[0]
    assert full.metrics["c_index"] > 0.65 and full.interval.low < full.metrics["c_index"] < full.interval.high
    assert "train_median_risk" in result.reference.extra and 0 <= full.metrics["log_rank_p"] <= 1


def regrid(volume: np.ndarray, affine: np.ndarray, target_affine: np.ndarray, shape) -> np.ndarray:
    """``volume`` resampled (linear) onto another grid in the same world space."""
    index_map = np.linalg.inv(affine) @ target_affine
    return ndimage.affine_transform(volume, index_map[:3, :3], index_map[:3, 3], output_shape=shape, order=1)


def test_volume_features_follow_the_scan_not_the_source_grid(encoder):
    """ICBM T1 and T2 moved onto the T1c tumour scan's voxel grid (0.78 x 0.78 x 6.5 mm, LPS; a matrix that
    still holds the whole head) stay nearest to their own sequence, not to the scan whose grid they now have:
    after preprocessing onto the common grid, a sequence classifier on these features is not reading the
    source grid. (Cropping the field of view is another matter: it changes what the slices show.)"""
    t1, t2, t1c = read("icbm2009c_t1"), read("icbm2009c_t2"), read("pyradiomics_brain1_t1c")
    grid = centred(t1c.affine, (300, 300, 32), t2)
    scans = [(t1.data, t1.affine), (t2.data, t2.affine), (t1c.data, t1c.affine),
             (regrid(t1.data, t1.affine, grid, (300, 300, 32)), grid), (regrid(t2.data, t2.affine, grid, (300, 300, 32)), grid)]
    embeddings = []
    for data, affine in scans:
        volume, _ = preprocess(data, affine, SPEC)
        features = volume_features(encoder, volume, SPEC, FeatureSpec(tokens="cls+patch_mean", slices_per_volume=24))
        embeddings.append(features.slice_embeddings("cls+patch_mean").mean(0))
    features = torch.stack(embeddings)[:, None]
    probe = KnnProbe(features, torch.ones(5, 1, dtype=torch.bool), np.array([0, 1, 2, 0, 1]), 3, k=1)
    fitted = probe.fit(np.array([0, 1, 2]), np.array([], dtype=int), 0)  # T1, T2 and the grid's own T1c
    assert probe.predict(fitted, np.array([3, 4])).argmax(1).tolist() == [0, 1]


def centred(affine: np.ndarray, shape, onto) -> np.ndarray:
    """``affine``'s axes and spacing, moved so the grid's centre sits on the centre of scan ``onto``."""
    moved = affine.copy()
    centre_onto = onto.affine @ np.array([*(np.array(onto.data.shape) - 1) / 2, 1.0])
    centre_here = affine @ np.array([*(np.array(shape) - 1) / 2, 1.0])
    moved[:3, 3] += (centre_onto - centre_here)[:3]
    return moved


def test_labels_return_exactly_onto_an_oblique_flipped_source_grid():
    rng = np.random.default_rng(0)
    labels = ndimage.median_filter(rng.integers(0, 3, size=(20, 24, 18)), size=5).astype(np.int16)
    t = np.deg2rad(12.0)
    rotation = np.array([[1, 0, 0, 0], [0, np.cos(t), -np.sin(t), 0], [0, np.sin(t), np.cos(t), 0], [0, 0, 0, 1]])
    affine = rotation @ np.array([[0, 0, -1.5, 40], [-1.2, 0, 0, 30], [0, 2.0, 0, -20], [0, 0, 0, 1.0]])  # axes permuted, flipped
    canonical = canonicalise(labels.astype(np.float32), affine)
    assert canonical.provenance["source_orientation"] != "RAS"
    onehot = np.stack([(canonical.data == k).astype(np.float32) for k in range(3)])
    back = labels_to_source_grid(onehot, canonical.affine, *source_grid(canonical))
    assert back.shape == labels.shape and np.array_equal(back, labels)
