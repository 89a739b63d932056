"""``braindino embed|predict|segment FILE``: send a scan to a running service and print (or save) the answer.

    braindino embed scan.nii.gz [--per-slice] [--tokens cls+patch_mean]
    braindino predict scan.nii.gz --task TASK
    braindino segment scan.nii.gz --task TASK --output labels.nii.gz

``--url`` defaults to ``$BRAINDINO_URL`` (else http://127.0.0.1:8000) and ``--token`` to
``$BRAINDINO_SERVE_TOKEN``. FILE is a .nii, .nii.gz, .mgz, .mgh, .nrrd, a .zip of one DICOM series, or a
folder holding one DICOM series (zipped on the fly). Answers are printed as JSON; a refusal prints the
service's reason and exits with status 1.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import requests

from serving.auth import TOKEN_ENV

URL_ENV = "BRAINDINO_URL"
DEFAULT_URL = "http://127.0.0.1:8000"


class ServiceError(RuntimeError):
    """A refusal from the service: its HTTP status, error code and detail."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail = status, code, detail


def scan_upload(path: Path) -> tuple[str, bytes]:
    """``(name, bytes)`` to upload: the file itself, or a folder's files as an in-memory zip."""
    if not path.is_dir():
        return path.name, path.read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            archive.write(file, file.relative_to(path).as_posix())
    return f"{path.name}.zip", buffer.getvalue()


class Client:
    """The HTTP API of one deployment at ``url``, authenticated with ``token``."""

    def __init__(self, url: str = DEFAULT_URL, token: str = "", timeout_s: float = 300.0) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = timeout_s

    def _post(self, route: str, path: Path, params: dict[str, Any] | None = None) -> requests.Response:
        name, raw = scan_upload(path)
        response = requests.post(f"{self.url}{route}", files={"file": (name, raw)}, params=params,
                                 headers=self.headers, timeout=self.timeout_s)
        return checked(response)

    def embed(self, path: Path, per_slice: bool = False, tokens: str = "cls") -> dict[str, Any]:
        return self._post("/v1/embed", path, {"per_slice": str(per_slice).lower(), "tokens": tokens}).json()

    def predict(self, path: Path, task: str) -> dict[str, Any]:
        return self._post(f"/v1/predict/{task}", path).json()

    def segment(self, path: Path, task: str) -> tuple[bytes, dict[str, Any]]:
        """The label volume (.nii.gz bytes) and the models that made it."""
        response = self._post(f"/v1/segment/{task}", path)
        return response.content, json.loads(response.headers.get("X-BrainDINO-Models", "{}"))

    def models(self) -> dict[str, Any]:
        return checked(requests.get(f"{self.url}/v1/models", headers=self.headers, timeout=self.timeout_s)).json()

    def wait_ready(self, timeout_s: float = 300.0) -> dict[str, Any]:
        """Poll ``/readyz`` until the service is ready; ``TimeoutError`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                response = requests.get(f"{self.url}/readyz", timeout=10)
                if response.status_code == 200:
                    return response.json()
            except (requests.ConnectionError, requests.Timeout):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.url} was not ready within {timeout_s:.0f} s")
            time.sleep(1.0)


def checked(response: requests.Response) -> requests.Response:
    if response.ok:
        return response
    try:
        body = response.json()
        code, detail = body.get("error", "error"), body.get("detail", response.text)
    except ValueError:
        code, detail = "error", response.text[:500]
    raise ServiceError(response.status_code, code, str(detail))


def parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"braindino {command}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, help="the scan (file, DICOM zip or DICOM folder)")
    parser.add_argument("--url", default=os.environ.get(URL_ENV, DEFAULT_URL))
    parser.add_argument("--token", default=os.environ.get(TOKEN_ENV, ""), help=f"bearer token (default ${TOKEN_ENV})")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the answer")
    if command == "embed":
        parser.add_argument("--per-slice", action="store_true", help="also return each slice's embedding")
        parser.add_argument("--tokens", choices=("cls", "cls+patch_mean"), default="cls")
    else:
        parser.add_argument("--task", required=True, help="the head's task name (GET /v1/models lists them)")
    if command == "segment":
        parser.add_argument("--output", type=Path, required=True, help="where to write the label volume (.nii.gz)")
    return parser


def run(command: str, argv: list[str]) -> None:
    args = parser(command).parse_args(argv)
    if not args.file.exists():
        sys.exit(f"{args.file}: no such file or folder")
    client = Client(args.url, args.token, args.timeout)
    try:
        if command == "embed":
            answer = client.embed(args.file, args.per_slice, args.tokens)
        elif command == "predict":
            answer = client.predict(args.file, args.task)
        else:
            labels, answer = client.segment(args.file, args.task)
            args.output.write_bytes(labels)
            answer = {**answer, "output": str(args.output)}
    except ServiceError as err:
        sys.exit(f"{args.url}: {err}")
    except requests.ConnectionError as err:
        sys.exit(f"{args.url}: cannot connect ({err.__class__.__name__}); is the service running?")
    print(json.dumps(answer, indent=1))


def embed_main(argv: list[str]) -> None:
    run("embed", argv)


def predict_main(argv: list[str]) -> None:
    run("predict", argv)


def segment_main(argv: list[str]) -> None:
    run("segment", argv)
