"""The registry contract: model names, and fetching registered encoders and heads without unpickling anything.

Names: the frozen encoder is ``braindino-encoder``; the head of task ``TASK`` is ``braindino-head-TASK``.
A registered encoder version holds an export folder (``encoder.safetensors``, ``encoder.json``,
``preprocess.json``) among its artifacts; a registered head version holds a head export folder
(``head.safetensors``, ``head.json``: see ``braindino.heads.export``). Either version carries its weights'
SHA-256 as the tag ``weights_sha256``; a head version also carries ``encoder.weights_sha256``, the digest of
the encoder it was trained on. Evaluation and serving read these folders directly: safetensors and JSON only.
Through MLflow an encoder version is a pyfunc logged from code (``pipelines/encoder_pyfunc.py``): loading
it runs that file and reads the same folder, so no path unpickles anything. An encoder version also
names the code that trained it (tags ``git.commit``, ``git.dirty``).
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from braindino.features import Encoder
from braindino.heads import HEAD_CONFIG, HEAD_WEIGHTS, HeadExportError, HeadSpec, TaskHead, load_head
from braindino.volumes import PreprocessSpec

ENCODER_MODEL = "braindino-encoder"
HEAD_MODEL_PREFIX = "braindino-head-"
EXPORT_ARTIFACT = "encoder"  # the pyfunc's artifact key for the export folder
WEIGHTS_FILE = "encoder.safetensors"
PREPROCESS_FILE = "preprocess.json"
DIGEST_TAG = "weights_sha256"
ENCODER_DIGEST_TAG = "encoder.weights_sha256"


class RegistryError(LookupError):
    """A registry reference that names nothing usable (no such model, alias or export), or the wrong encoder."""


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


@dataclass(frozen=True)
class FetchedHead:
    """A head export on local disk, and where it came from (``name``/``version`` empty for a folder)."""

    reference: str
    directory: Path
    weights_sha256: str
    spec: HeadSpec
    name: str = ""
    version: str = ""

    def load(self) -> TaskHead:
        return load_head(self.directory)


def export_folder(root: Path, reference: str, weights: str = WEIGHTS_FILE, beside: str = PREPROCESS_FILE) -> Path:
    """The one folder under ``root`` that holds ``weights`` (and ``beside`` next to it)."""
    found = sorted(path.parent for path in root.rglob(weights))
    if len(found) != 1:
        raise RegistryError(f"{reference}: expected one {weights} in its artifacts, found {len(found)}")
    if not (found[0] / beside).exists():
        raise RegistryError(f"{reference}: the export at {found[0]} has no {beside}")
    return found[0]


def download_version(reference: str, tracking_uri: str, dest: str | Path | None, weights: str, beside: str):
    """``(version, export folder)`` of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``, downloaded into ``dest``
    (a new temporary folder by default), its weights checked against the version's ``weights_sha256`` tag."""
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
        detail = err.message.splitlines()[0] if err.message else type(err).__name__
        raise RegistryError(f"{reference} names no registered version at {tracking_uri} ({detail}): register one "
                            "('braindino pretrain' or 'braindino register') or point the alias at a version "
                            "('braindino register promote --version N --alias ALIAS')") from None
    target = Path(dest) if dest is not None else Path(tempfile.mkdtemp(prefix="braindino-model-"))
    # The version's own artifact location, not a models:/ URI: MLflow resolves models:/ against the process's
    # global registry URI whatever it is told, and a job need not have one.
    location = client.get_model_version_download_uri(name, version.version)
    mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(target), tracking_uri=tracking_uri)
    directory = export_folder(target, reference, weights, beside)
    digest = sha256_file(directory / weights)
    recorded = version.tags.get(DIGEST_TAG)
    if recorded and recorded != digest:
        raise RegistryError(f"{reference} (version {version.version}): downloaded weights have SHA-256 {digest}, "
                            f"the registry records {recorded}")
    return version, directory, digest


def fetch_encoder(reference: str, tracking_uri: str, dest: str | Path | None = None) -> FetchedEncoder:
    """A registered encoder (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``) or an export folder."""
    if not reference.startswith("models:/"):
        directory = export_folder(Path(reference), reference)
        return FetchedEncoder(reference, directory, sha256_file(directory / WEIGHTS_FILE))
    version, directory, digest = download_version(reference, tracking_uri, dest, WEIGHTS_FILE, PREPROCESS_FILE)
    return FetchedEncoder(reference, directory, digest, version.name, str(version.version))


def fetch_head(reference: str, tracking_uri: str, encoder_sha256: str | None = None,
               dest: str | Path | None = None) -> FetchedHead:
    """A registered head (``models:/braindino-head-TASK@ALIAS`` or ``/VERSION``) or a head export folder.

    With ``encoder_sha256`` (the weights digest of the encoder it will run on) a head trained on another
    encoder is refused, naming both digests.
    """
    if reference.startswith("models:/"):
        version, directory, digest = download_version(reference, tracking_uri, dest, HEAD_WEIGHTS, HEAD_CONFIG)
        name, number = version.name, str(version.version)
    else:
        directory = export_folder(Path(reference), reference, HEAD_WEIGHTS, HEAD_CONFIG)
        digest, name, number = sha256_file(directory / HEAD_WEIGHTS), "", ""
    spec = HeadSpec.from_json((directory / HEAD_CONFIG).read_text(), f"{reference}: {HEAD_CONFIG}")
    try:
        load_head(directory, encoder_sha256)
    except HeadExportError as err:
        raise RegistryError(f"{reference}: {err}") from None
    return FetchedHead(reference, directory, digest, spec, name, number)
