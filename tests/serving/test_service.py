"""The service over real HTTP on a real local Ray, serving an encoder registered by the registration pipeline.

Embeddings are checked against the offline path written independently here (nibabel decoding, the
library's preprocessing and ``Encoder.encode_volume``); bad input, access and size limits against the
status and reason the API promises, and the replicas against dying.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest
import requests
import torch

from braindino.volumes import evenly_spaced, preprocess
from pipelines.registry import fetch_encoder
from serving.client import Client, ServiceError, embed_main
from tests.conftest import real_scan
from serving.settings import ENCODER_MODEL

pytestmark = pytest.mark.timeout(600)
IDENTIFYING_NAME = "Doe^Jane_19700101"  # a client file name that must never come back


@pytest.fixture(scope="module")
def offline_encoder(registry, tmp_path_factory):
    fetched = fetch_encoder(ENCODER_MODEL, registry.mlflow.tracking_uri, tmp_path_factory.mktemp("offline"))
    return fetched, fetched.load()


def offline_embedding(service, path: Path, encoder, with_patch_mean: bool = False) -> tuple[torch.Tensor, list[int]]:
    """The volume embedding computed without the service: nibabel, preprocess, evenly spaced slices, encode_volume."""
    image = nib.load(path)
    _, slices = preprocess(np.asarray(image.dataobj, dtype=np.float32), image.affine, service.registry.preprocess)
    kept = evenly_spaced(slices, service.slices_per_volume)
    batch = torch.from_numpy(np.stack([s for _, s, _ in kept]))[:, None]
    return encoder.encode_volume(batch, with_patch_mean=with_patch_mean), [z for z, _, _ in kept]


def post(service, name: str, raw: bytes, route: str = "/v1/embed", **params) -> requests.Response:
    return requests.post(f"{service.url}{route}", files={"file": (name, raw)}, params=params,
                         headers=service.auth, timeout=120)


def replica_actors(ray) -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "braindino#" in a["name"]}


def ingress_deleted_files() -> list[str]:
    """Files the ingress replica holds open although they were deleted (leaked upload temporaries)."""
    processes, leaked = 0, []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and "ServeReplica:braindino:Ingress" in (proc / "cmdline").read_text():
                processes += 1
                leaked += [target for fd in (proc / "fd").iterdir() if (target := os.readlink(fd)).endswith("(deleted)")]
        except OSError:
            continue
    assert processes == 1, f"found {processes} ingress replica processes"
    return leaked


def serve_logs(ray) -> str:
    """Every Serve log of this session (controller, proxy, replicas)."""
    folder = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "serve"
    return "".join(path.read_text(errors="replace") for path in folder.glob("*.log"))


def test_embedding_of_a_real_scan_equals_the_offline_encoder_and_names_its_version(service, offline_encoder):
    fetched, encoder = offline_encoder
    path = real_scan("icbm2009c_t1").path
    response = post(service, path.name, path.read_bytes(), per_slice="true", tokens="cls+patch_mean")
    assert response.status_code == 200, response.text
    answer = response.json()
    expected, z = offline_embedding(service, path, encoder, with_patch_mean=True)
    assert answer["dim"] == 2 * encoder.embed_dim and answer["tokens"] == "cls+patch_mean"
    np.testing.assert_allclose(answer["embedding"], expected.numpy(), rtol=1e-4, atol=1e-5)
    assert [row["z"] for row in answer["per_slice"]] == z
    assert answer["input"] == {"format": "nifti1", "canonical_shape": answer["input"]["canonical_shape"], "slices": len(z)}
    card = answer["encoder"]
    assert card["version"] == service.registry.encoder_version and card["name"] == "braindino-encoder"
    assert card["weights_sha256"] == hashlib.sha256(fetched.weights.read_bytes()).hexdigest()


def nifti_as_mgz(image: nib.Nifti1Image) -> bytes:
    data = np.asarray(image.dataobj, dtype=np.float32)
    return gzip.compress(nib.MGHImage(data, image.affine).to_bytes(), compresslevel=1)


def nifti_as_nrrd(image: nib.Nifti1Image, folder: Path) -> bytes:
    """The same voxels and geometry as NRRD in LPS space (each row of 'space directions' is one array axis)."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine
    header = {"space": "left-posterior-superior", "space directions": lps[:3, :3].T, "space origin": lps[:3, 3]}
    target = folder / "scan.nrrd"
    nrrd.write(str(target), np.asarray(image.dataobj, dtype=np.float32), {**header, "encoding": "raw"})
    return target.read_bytes()


def test_every_format_of_one_scan_gives_one_embedding(service, offline_encoder, tmp_path):
    path = real_scan("colin27_t1").path
    image = nib.load(path)
    raw = {
        "ch2.nii.gz": path.read_bytes(),
        "ch2.nii": gzip.decompress(path.read_bytes()),
        "ch2.mgz": nifti_as_mgz(image),
        "ch2.nrrd": nifti_as_nrrd(image, tmp_path),
    }
    with ThreadPoolExecutor(len(raw)) as pool:
        answers = dict(zip(raw, pool.map(lambda item: post(service, *item), raw.items())))
    for name, response in answers.items():
        assert response.status_code == 200, (name, response.text)
    expected, _ = offline_embedding(service, path, offline_encoder[1])
    for name, response in answers.items():
        np.testing.assert_allclose(response.json()["embedding"], expected.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    assert {n: r.json()["input"]["format"] for n, r in answers.items()} == {
        "ch2.nii.gz": "nifti1", "ch2.nii": "nifti1", "ch2.mgz": "mgh", "ch2.nrrd": "nrrd"}


def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, raw in files.items():
            archive.writestr(name, raw)
    return buffer.getvalue()


def with_patient(path: Path, name: str) -> bytes:
    """The DICOM file with ``name`` as its patient's name and ID."""
    dataset = pydicom.dcmread(path)
    dataset.PatientName = dataset.PatientID = name
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


def test_a_zip_of_one_dicom_series_is_embedded_without_its_identifiers(service):
    mosaic = with_patient(real_scan("heudiconv_mosaic").path, IDENTIFYING_NAME)
    response = post(service, f"{IDENTIFYING_NAME}.zip", zipped({f"{IDENTIFYING_NAME}/IM0001": mosaic}))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["input"]["format"] == "dicom" and len(answer["embedding"]) == answer["dim"]
    assert IDENTIFYING_NAME not in response.text


def gzip_bomb() -> bytes:
    """A .nii.gz whose header declares 8x8x8 voxels and whose stream inflates to 256 MiB."""
    header = nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)).to_bytes()
    stream = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(16 * 2**20)
    return stream.compress(header) + b"".join(stream.compress(zeros) for _ in range(16)) + stream.flush()


def absurd_header() -> bytes:
    """A NIfTI header declaring 30000^3 voxels, followed by a few bytes."""
    image = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    image.header.set_data_shape((30000, 30000, 30000))
    return image.header.binaryblock + bytes(4) + bytes(64)


def several_series_zip() -> bytes:
    files = {f"a/{p.name}": p.read_bytes() for p in sorted(real_scan("heudiconv_dwi").path.iterdir())}
    return zipped({**files, "b/IM0001": real_scan("heudiconv_mosaic").path.read_bytes()})


def test_bad_inputs_get_a_4xx_naming_the_reason_and_the_service_keeps_answering(service, ray_session):
    colin = real_scan("colin27_t1").path.read_bytes()
    icbm = real_scan("icbm2009c_t1").path.read_bytes()
    cases = [  # (file name, bytes, status, error code)
        (f"{IDENTIFYING_NAME}.pdf", b"%PDF-1.7\n" + bytes(4096), 415, "bad_magic"),
        (f"{IDENTIFYING_NAME}.nii", icbm[: len(icbm) // 3], 422, "size_mismatch"),
        (f"{IDENTIFYING_NAME}.nii.gz", colin[: len(colin) // 2], 422, "truncated_gzip"),
        (f"{IDENTIFYING_NAME}.nii.gz", gzip_bomb(), 422, "size_mismatch"),
        (f"{IDENTIFYING_NAME}.nii", absurd_header(), 422, "absurd_dimensions"),
        (f"{IDENTIFYING_NAME}.nii.gz", real_scan("nibabel_example4d").path.read_bytes(), 422, "unsupported_4d"),
        (f"{IDENTIFYING_NAME}.zip", several_series_zip(), 422, "several_series"),
    ]
    before = replica_actors(ray_session)
    for name, raw, status, code in cases:
        response = post(service, name, raw)
        assert (response.status_code, response.json()["error"]) == (status, code), response.text
        assert response.json()["detail"] and IDENTIFYING_NAME not in response.text
    no_file = requests.post(f"{service.url}/v1/embed", files={"other": ("x.nii", b"x")}, headers=service.auth, timeout=30)
    assert (no_file.status_code, no_file.json()["error"]) == (400, "missing_file")
    not_multipart = requests.post(f"{service.url}/v1/embed", data=colin, headers=service.auth, timeout=30)
    assert (not_multipart.status_code, not_multipart.json()["error"]) == (415, "not_multipart")
    bad_option = post(service, "ch2.nii.gz", colin, tokens="everything")
    assert (bad_option.status_code, bad_option.json()["error"]) == (422, "invalid_request")
    assert "tokens" in bad_option.json()["detail"]
    assert post(service, "ch2.nii.gz", colin).status_code == 200
    assert replica_actors(ray_session) == before  # no replica died or was replaced
    assert ingress_deleted_files() == []  # spooled uploads were closed, which removes them
    assert IDENTIFYING_NAME not in serve_logs(ray_session)


def test_eight_concurrent_requests_with_one_bad_input_give_seven_answers(service):
    colin = real_scan("colin27_t1").path.read_bytes()
    uploads = [("ch2.nii.gz", colin)] * 7 + [("ch2.nii.gz", colin[:-4096])]
    with ThreadPoolExecutor(8) as pool:
        statuses = [r.status_code for r in pool.map(lambda item: post(service, *item), uploads)]
    assert statuses == [200] * 7 + [422]


def test_tokens_are_required_on_v1_and_not_on_health(service):
    path = real_scan("colin27_t1").path
    missing = requests.post(f"{service.url}/v1/embed", files={"file": (path.name, path.read_bytes())}, timeout=30)
    assert missing.status_code == 401 and missing.json()["error"] == "missing_token"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = requests.get(f"{service.url}/v1/models", headers={"Authorization": f"Bearer {service.token}x"}, timeout=30)
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_token"
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    basic = requests.get(f"{service.url}/v1/models", headers={"Authorization": f"Basic {service.token}"}, timeout=30)
    assert basic.status_code == 401
    assert requests.get(f"{service.url}/healthz", timeout=30).json() == {"status": "ok"}
    assert requests.get(f"{service.url}/readyz", timeout=30).json()["encoder_version"] == service.registry.encoder_version


def test_an_upload_over_the_limit_gets_413(service):
    oversize = bytes(service.upload_mb * 2**20 + 1)
    declared = post(service, "big.nii", oversize)
    assert declared.status_code == 413 and declared.json()["error"] == "upload_too_large"

    def chunks():  # no Content-Length: the limit is found while the body streams
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.nii\"\r\n\r\n"
        for _ in range(service.upload_mb + 1):
            yield bytes(2**20)

    streamed = requests.post(f"{service.url}/v1/embed", data=chunks(), timeout=60,
                             headers={**service.auth, "Content-Type": "multipart/form-data; boundary=b"})
    assert streamed.status_code == 413 and streamed.json()["error"] == "upload_too_large"
    assert ingress_deleted_files() == []


def test_models_lists_the_encoder_with_its_registry_version_and_preprocessing(service):
    answer = requests.get(f"{service.url}/v1/models", headers=service.auth, timeout=30).json()
    encoder = answer["encoder"]
    assert answer["api_version"] == "v1"
    assert (encoder["name"], encoder["version"], encoder["reference"]) == (
        "braindino-encoder", service.registry.encoder_version, ENCODER_MODEL)
    assert json.loads(encoder["preprocess"]) == json.loads(service.registry.preprocess.to_json())


def test_openapi_documents_the_versioned_routes_and_the_bearer_scheme(service):
    spec = requests.get(f"{service.url}/openapi.json", timeout=30).json()
    assert {"/v1/embed", "/v1/models", "/healthz", "/readyz"} <= set(spec["paths"])
    body = spec["paths"]["/v1/embed"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["file"]["format"] == "binary"
    assert any(s.get("scheme") == "bearer" for s in spec["components"]["securitySchemes"].values())


def test_the_client_prints_the_embedding_and_reports_refusals(service, capsys):
    path = real_scan("colin27_t1").path
    embed_main([str(path), "--url", service.url, "--token", service.token])
    printed = json.loads(capsys.readouterr().out)
    direct = post(service, path.name, path.read_bytes()).json()
    assert printed["embedding"] == direct["embedding"] and printed["encoder"] == direct["encoder"]
    with pytest.raises(SystemExit, match="401 invalid_token"):
        embed_main([str(path), "--url", service.url, "--token", "not-the-token"])
    with pytest.raises(ServiceError, match="unsupported_4d"):
        Client(service.url, service.token).embed(real_scan("nibabel_example4d").path)
