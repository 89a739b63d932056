"""The registry contract: model names, and fetching a registered encoder without unpickling anything.

Names: the frozen encoder is ``braindino-encoder``; the head of task ``TASK`` is ``braindino-head-TASK``.
A registered encoder version holds an export folder (``encoder.safetensors``, ``encoder.json``,
``preprocess.json``) among its artifacts and the weights' SHA-256 as the version tag
``weights_sha256``. Evaluation and serving read that folder directly: safetensors and JSON only.
Through MLflow the version is a pyfunc logged from code (``pipelines/encoder_pyfunc.py``): loading it
runs that file and reads the same folder, so no path unpickles anything. The version also names the
code that trained it (tags ``git.commit``, ``git.dirty``).
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from braindino.features import Encoder
from braindino.volumes import PreprocessSpec

ENCODER_MODEL = "braindino-encoder"
HEAD_MODEL_PREFIX = "braindino-head-"
EXPORT_ARTIFACT = "encoder"  # the pyfunc's artifact key for the export folder
WEIGHTS_FILE = "encoder.safetensors"
PREPROCESS_FILE = "preprocess.json"
DIGEST_TAG = "weights_sha256"


class RegistryError(LookupError):
    """A registry reference that names nothing usable (no such model, alias or export)."""


def head_model_name(task: str) -> str:
    return f"{HEAD_MODEL_PREFIX}{task}"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class FetchedEncoder:
    """An encoder export on local disk, and where it came from (``name``/``version`` empty for a folder)."""

    reference: str
    directory: Path
    weights_sha256: str
    name: str = ""
    version: str = ""

    @property
    def weights(self) -> Path:
        return self.directory / WEIGHTS_FILE

    @property
    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec.from_json((self.directory / PREPROCESS_FILE).read_text())

    def load(self) -> Encoder:
        return Encoder.from_checkpoint(self.weights)


def export_folder(root: Path, reference: str) -> Path:
    """The one folder under ``root`` that holds ``encoder.safetensors``."""
    found = sorted(path.parent for path in root.rglob(WEIGHTS_FILE))
    if len(found) != 1:
        raise RegistryError(f"{reference}: expected one {WEIGHTS_FILE} in its artifacts, found {len(found)}")
    if not (found[0] / PREPROCESS_FILE).exists():
        raise RegistryError(f"{reference}: the export at {found[0]} has no {PREPROCESS_FILE}")
    return found[0]


def fetch_encoder(reference: str, tracking_uri: str, dest: str | Path | None = None) -> FetchedEncoder:
    """A registered encoder (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``) or an export folder.

    Registry versions are downloaded into ``dest`` (a new temporary folder by default) and their weights
    are checked against the version's ``weights_sha256`` tag.
    """
    if not reference.startswith("models:/"):
        directory = export_folder(Path(reference), reference)
        return FetchedEncoder(reference, directory, sha256_file(directory / WEIGHTS_FILE))
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    name, _, selector = reference.removeprefix("models:/").partition("@")
    try:
        if selector:
            version = client.get_model_version_by_alias(name, selector)
        else:
            name, _, number = name.partition("/")
            version = client.get_model_version(name, number)
    except MlflowException as err:
        raise RegistryError(f"{reference} names no registered version at {tracking_uri}: {err.message}") from None
    target = Path(dest) if dest is not None else Path(tempfile.mkdtemp(prefix="braindino-encoder-"))
    mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version.version}", dst_path=str(target),
                                        tracking_uri=tracking_uri)
    directory = export_folder(target, reference)
    digest = sha256_file(directory / WEIGHTS_FILE)
    recorded = version.tags.get(DIGEST_TAG)
    if recorded and recorded != digest:
        raise RegistryError(f"{reference} (version {version.version}): downloaded weights have SHA-256 {digest}, "
                            f"the registry records {recorded}")
    return FetchedEncoder(reference, directory, digest, name, str(version.version))
