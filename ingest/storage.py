"""Object storage access: one config for S3 (AWS, MinIO, Ceph, the local test server) and local disk.

Credentials follow the standard AWS chain (environment, profile, instance role) unless the config
names keys; ``endpoint_url`` points the same code at any S3-compatible server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from braindino.config import SECRET


@dataclass(frozen=True)
class ObjectStoreConfig:
    endpoint_url: str | None = None  # None: AWS itself
    region: str = "us-east-1"
    access_key: str | None = field(default=None, metadata=SECRET, repr=False)  # None: the standard credential chain
    secret_key: str | None = field(default=None, metadata=SECRET, repr=False)

    def boto3_client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def s3_filesystem(self) -> pafs.S3FileSystem:
        options: dict = {"region": self.region}
        if self.endpoint_url:
            parsed = urlparse(self.endpoint_url)
            options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
        if self.access_key and self.secret_key:
            options.update(access_key=self.access_key, secret_key=self.secret_key)
        return pafs.S3FileSystem(**options)

    def resolve(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """``s3://bucket/key`` or a local path -> (pyarrow filesystem, path within it)."""
        if uri.startswith("s3://"):
            return self.s3_filesystem(), uri.removeprefix("s3://").rstrip("/")
        if "://" in uri and not uri.startswith("file://"):
            raise ValueError(f"unsupported storage URI {uri!r}: use s3://bucket/prefix or a local path")
        return pafs.LocalFileSystem(), str(Path(uri.removeprefix("file://")).resolve())
