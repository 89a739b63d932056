"""Task heads over real HTTP: heads registered as evaluation registers them, deployed as applications of their
own beside the running encoder, checked against the offline head on the same scan."""

from __future__ import annotations

import gzip
import json
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest
import requests
import torch

from braindino.features import Encoder, FeatureSpec
from braindino.heads import (DecoderConfig, EmbeddingHead, EmbeddingHeadConfig, EncoderRef, HeadSpec, SegmentationDecoder,
                             architecture_of, load_head, save_head)
from braindino.models.vit import ViTConfig, VisionTransformer
from braindino.volumes import preprocess
from pipelines.evaluation.heads import register_head
from pipelines.registry import fetch_encoder, sha256_file
from serving.client import predict_main, segment_main
from serving.heads import HeadSettings, build_head_app, head_application
from serving.settings import ENCODER_MODEL
from tests.conftest import real_scan

pytestmark = pytest.mark.timeout(600)
CLASSES = ["T1w", "T2w"]
LABELS = {"0": "background", "1": "grey matter", "2": "white matter"}


@dataclass(frozen=True)
class RegisteredHead:
    folder: Path
    version: str


def register(service, module: torch.nn.Module, spec: HeadSpec, folder: Path) -> RegisteredHead:
    """Export and register a head the way evaluation does, as braindino-head-TASK @champion."""
    save_head(folder, module, spec)
    tracking = service.registry.mlflow.tracking_uri
    mlflow.set_tracking_uri(tracking)
    experiment = mlflow.get_experiment_by_name("braindino-evaluate") or mlflow.get_experiment(mlflow.create_experiment(
        "braindino-evaluate", artifact_location=f"{service.registry.mlflow.artifact_root}/evaluate"))
    with mlflow.start_run(experiment_id=experiment.experiment_id):
        version = register_head(folder, spec, f"# head {spec.task}\n", {}, tracking, "champion")
    return RegisteredHead(folder, version)


def head_spec(task: str, module: torch.nn.Module, kind: str, features: FeatureSpec, output: dict, digest: str,
              version: str, service) -> HeadSpec:
    return HeadSpec(task=task, family=f"{task}_{kind}", kind=kind, architecture=architecture_of(module),
                    features=features, output=output, encoder=EncoderRef("braindino-encoder", version, digest),
                    preprocess=json.loads(service.registry.preprocess.to_json()))


@pytest.fixture(scope="module")
def heads(service, ray_session, tmp_path_factory):
    """A sequence classifier and a tissue segmenter registered for the champion, and a head (an export folder)
    trained on another encoder, deployed together as three head applications while the encoder keeps running."""
    from ray import serve

    root = tmp_path_factory.mktemp("heads")
    torch.manual_seed(1)
    digest, version = service.registry.encoder_sha256, service.registry.encoder_version
    classifier = EmbeddingHead(EmbeddingHeadConfig(64, len(CLASSES), 32, "attention"))
    torch.nn.init.normal_(classifier.pooling.score.weight)
    segmenter = SegmentationDecoder(DecoderConfig(embed_dim=64, n_blocks=2, n_classes=len(LABELS), patch_size=16, width=16))
    Encoder(VisionTransformer(ViTConfig(size="micro"))).save(root / "other.safetensors")
    other_digest = sha256_file(root / "other.safetensors")
    registered = {
        "sequence": register(service, classifier, head_spec(
            "sequence", classifier, "classification", FeatureSpec(tokens="cls", slices_per_volume=12),
            {"classes": CLASSES}, digest, version, service), root / "sequence"),
        "tissue": register(service, segmenter, head_spec(
            "tissue", segmenter, "segmentation", FeatureSpec(slices_per_volume=0, blocks=(0, 1)),
            {"labels": LABELS}, digest, version, service), root / "tissue"),
    }
    foreign = save_head(root / "foreign", classifier, head_spec(
        "foreign", classifier, "classification", FeatureSpec(slices_per_volume=12), {"classes": CLASSES},
        other_digest, "", service))
    settings = [HeadSettings(task=task, tracking_uri=service.registry.mlflow.tracking_uri) for task in registered]
    settings.append(HeadSettings(task="foreign", model=str(foreign)))
    encoder_replicas = replica_names(ray_session, "braindino#")
    serve.run_many([serve.RunTarget(build_head_app(head, {"ray_actor_options": {"num_cpus": 0.25},
                                                          "max_constructor_retry_count": 1}),
                                    name=head_application(head.task), route_prefix=None) for head in settings],
                   wait_for_applications_running=False)
    statuses = wait_for_terminal_status([head_application(head.task) for head in settings])
    yield registered, statuses, encoder_replicas, other_digest
    for head in settings:
        serve.delete(head_application(head.task))


def replica_names(ray, prefix: str) -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if prefix in a["name"]}


def wait_for_terminal_status(applications: list[str], timeout_s: float = 300.0) -> dict:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = serve.status().applications
        if all(name in status and status[name].status in ("RUNNING", "DEPLOY_FAILED") for name in applications):
            return {name: status[name] for name in applications}
        time.sleep(2)
    raise TimeoutError(f"{applications} did not finish deploying: {serve.status().applications}")


def post(service, route: str, path: Path, raw: bytes | None = None) -> requests.Response:
    return requests.post(f"{service.url}{route}", files={"file": (path.name, raw or path.read_bytes())},
                         headers=service.auth, timeout=180)


@pytest.fixture(scope="module")
def offline_encoder(service, tmp_path_factory):
    return fetch_encoder(ENCODER_MODEL, service.registry.mlflow.tracking_uri, tmp_path_factory.mktemp("encoder")).load()


def offline_volume(service, path: Path):
    image = nib.load(path)
    volume, _ = preprocess(np.asarray(image.dataobj, dtype=np.float32), image.affine, service.registry.preprocess)
    return image, volume


def test_heads_deploy_beside_the_running_encoder_and_a_foreign_head_refuses_to_start(service, heads, ray_session):
    registered, statuses, encoder_replicas, other_digest = heads
    assert statuses["head-sequence"].status == statuses["head-tissue"].status == "RUNNING"
    assert statuses["head-foreign"].status == "DEPLOY_FAILED"
    message = statuses["head-foreign"].deployments["Head"].message
    assert service.registry.encoder_sha256 in message and other_digest in message
    assert replica_names(ray_session, "braindino#") == encoder_replicas  # the encoder was not redeployed
    models = requests.get(f"{service.url}/v1/models", headers=service.auth, timeout=60).json()
    listed = {head["task"]: head for head in models["heads"]}
    assert listed["sequence"]["version"] == registered["sequence"].version and listed["sequence"]["kind"] == "classification"
    assert listed["tissue"]["trained_on"]["weights_sha256"] == service.registry.encoder_sha256
    assert listed["foreign"]["status"] == "DEPLOY_FAILED" and other_digest in listed["foreign"]["message"]


def test_a_prediction_equals_the_offline_head(service, heads, offline_encoder):
    registered, *_ = heads
    path = real_scan("icbm2009c_t1").path
    response = post(service, "/v1/predict/sequence", path)
    assert response.status_code == 200, response.text
    answer = response.json()
    _, volume = offline_volume(service, path)
    expected = load_head(registered["sequence"].folder).predict_volume(offline_encoder, volume)
    assert answer["prediction"]["label"] == expected["label"]
    np.testing.assert_allclose([answer["prediction"]["probabilities"][c] for c in CLASSES],
                               [expected["probabilities"][c] for c in CLASSES], atol=1e-5)
    assert answer["head"]["version"] == registered["sequence"].version
    assert answer["encoder"]["weights_sha256"] == service.registry.encoder_sha256


def test_a_segmentation_is_a_nifti_on_the_input_grid_equal_to_the_offline_head(service, heads, offline_encoder):
    registered, *_ = heads
    path = real_scan("colin27_t1").path
    response = post(service, "/v1/segment/tissue", path)
    assert response.status_code == 200, response.text
    labels = nib.Nifti1Image.from_bytes(gzip.decompress(response.content))
    image, volume = offline_volume(service, path)
    assert labels.shape == image.shape
    np.testing.assert_allclose(labels.affine, image.affine, atol=1e-4)
    expected = load_head(registered["tissue"].folder).predict_volume(offline_encoder, volume)
    served = np.asarray(labels.dataobj)
    assert np.mean(served == expected.labels) > 0.999 and len(np.unique(served)) > 1
    models = json.loads(response.headers["X-BrainDINO-Models"])
    assert models["head"]["version"] == registered["tissue"].version and models["labels"] == LABELS
    assert models["encoder"]["weights_sha256"] == service.registry.encoder_sha256


def test_unknown_tasks_wrong_routes_and_failed_heads_get_4xx_or_503(service, heads):
    path = real_scan("colin27_t1").path
    unknown = post(service, "/v1/predict/nosuch", path)
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_task")
    assert "'sequence'" in unknown.json()["detail"] and "'tissue'" in unknown.json()["detail"]
    for route, code in (("/v1/predict/tissue", "wrong_route"), ("/v1/segment/sequence", "wrong_route")):
        response = post(service, route, path)
        assert (response.status_code, response.json()["error"]) == (409, code), route
    failed = post(service, "/v1/predict/foreign", path)
    assert (failed.status_code, failed.json()["error"]) == (503, "head_unavailable")
    malformed = post(service, "/v1/predict/Bad.Name", path)
    assert (malformed.status_code, malformed.json()["error"]) == (422, "invalid_request")


def test_the_client_prints_predictions_and_writes_segmentations(service, heads, capsys, tmp_path):
    path = real_scan("colin27_t1").path
    predict_main([str(path), "--task", "sequence", "--url", service.url, "--token", service.token])
    assert set(json.loads(capsys.readouterr().out)["prediction"]["probabilities"]) == set(CLASSES)
    output = tmp_path / "labels.nii.gz"
    segment_main([str(path), "--task", "tissue", "--output", str(output), "--url", service.url, "--token", service.token])
    printed = json.loads(capsys.readouterr().out)
    assert printed["output"] == str(output) and printed["labels"] == LABELS
    assert nib.load(output).shape == nib.load(path).shape
