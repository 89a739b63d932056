"""What an ingest run is told: where outputs go and how scans become slices."""

from __future__ import annotations

from dataclasses import dataclass, field

from braindino.volumes import PreprocessSpec
from datastore.objectstore import ObjectStoreConfig
from ingest.readers.scan import ScanPolicy

INGEST_VERSION = 1  # recorded in every scan row and the run's MLflow params


@dataclass(frozen=True)
class IngestSettings:
    """Where outputs go and how scans become slices."""

    output: str = ".local/ingest"  # s3://bucket/prefix or a local folder: zarr/, shards/, manifest/, qc/
    storage: ObjectStoreConfig = field(default_factory=ObjectStoreConfig)
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    policy: ScanPolicy = field(default_factory=ScanPolicy)
    shard_size: int = 1000  # samples per shard
    shuffle_seed: int = 0
    concurrency: int = 2  # scans processed at once

    def __post_init__(self) -> None:
        if self.shard_size <= 0 or self.concurrency <= 0:
            raise ValueError("shard_size and concurrency must be positive")
