"""What each deployment reads from its ``user_config`` in the Serve config, as typed, validated settings.

The defaults here are the ones ``serving/app.py`` binds, so ``serve build serving.app:app`` writes them
into ``configs/serve/``; editing a ``user_config`` there and running ``serve deploy`` reconfigures the
running replicas in place. An unknown key or a value of the wrong type fails the deployment with a
message naming the deployment and the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from braindino.config import build
from ingest.readers.scan import ScanPolicy

T = TypeVar("T")
ENCODER_MODEL = "models:/braindino-encoder@champion"


@dataclass(frozen=True)
class EncoderSettings:
    """The encoder deployment: which registered encoder, and how requests are batched."""

    model: str = ENCODER_MODEL  # models:/NAME@ALIAS, models:/NAME/VERSION or an export folder
    tracking_uri: str = ""  # empty: $MLFLOW_TRACKING_URI, else the local sqlite store under .local/
    max_batch_size: int = 8  # requests per batched forward (1 turns batching off); <= max_ongoing_requests
    batch_wait_timeout_s: float = 0.02  # how long a partial batch waits for more requests
    forward_batch_size: int = 64  # slices per forward pass within a batch (bounds activation memory)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.forward_batch_size < 1 or self.batch_wait_timeout_s < 0:
            raise ValueError("max_batch_size and forward_batch_size must be >= 1 and batch_wait_timeout_s >= 0")

    def resolved_tracking_uri(self) -> str:
        from pipelines.tracking import TrackingConfig

        return TrackingConfig(tracking_uri=self.tracking_uri).resolved_uri()


@dataclass(frozen=True)
class IngressSettings:
    """The HTTP ingress: upload limits, how scans are decoded, how many slices a volume contributes."""

    max_upload_mb: float = 512.0  # larger uploads get 413 before their body is read
    slices_per_volume: int = 64  # evenly spaced axial slices per scan (0: every slice with enough foreground)
    four_d: Literal["refuse", "first"] = "refuse"  # a 4D upload is refused, or its first volume is used
    max_axis_length: int = 2048  # voxels per axis a header may declare
    max_decoded_mb: int = 2048  # decoded voxel bytes a header or archive may declare (gzip and zip bombs)
    max_dicom_files: int = 4096  # files in a DICOM zip
    decode_threads: int = 4  # uploads decoded at once per replica (bounds memory)

    def __post_init__(self) -> None:
        if self.max_upload_mb <= 0 or self.slices_per_volume < 0 or self.decode_threads < 1:
            raise ValueError("max_upload_mb must be > 0, slices_per_volume >= 0 and decode_threads >= 1")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def policy(self) -> ScanPolicy:
        """The ingest readers' limits for an upload."""
        return ScanPolicy(four_d=self.four_d, max_decoded_bytes=self.max_decoded_mb * 2**20,
                          max_axis_length=self.max_axis_length, max_files=self.max_dicom_files)


def defaults(cls: type, **required: Any) -> dict[str, Any]:
    """A settings class's defaults (``required`` fills fields without one) as the plain ``user_config`` mapping
    that ``serve build`` writes."""
    return dataclasses.asdict(cls(**required))


def parse_settings(cls: type[T], user_config: dict[str, Any] | None, deployment: str) -> T:
    """``user_config`` as ``cls``; ``ConfigError`` naming the deployment and the key when it does not fit."""
    return build(cls, dict(user_config or {}), f"user_config of deployment {deployment}")
