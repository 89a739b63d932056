"""Encoder features of a task's scans: a Ray Data job that fills a cache keyed by encoder and scan.

Cache layout under ``features.cache`` (a folder or ``s3://``), one zarr group per entry::

    <encoder weights sha256>/<extraction key>/<scan content digest>/
        z [S] int64, cls [S, D] float32, patch_mean [S, D] float32,
        blocks [S, n_blocks, h*w, D] float16 (segmentation only)
        attrs: grid, format_version, complete (written last: an entry without it does not exist)

The extraction key is a digest of everything else that decides the features: the encoder's
preprocessing spec, the slices per volume and the blocks. A changed scan has another content digest and
a changed encoder other weights: neither can ever read a stale entry. Only scans without a complete
entry reach the encoder.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from braindino.features import Encoder, FeatureSpec, VolumeFeatures, volume_features
from braindino.volumes import PreprocessSpec
from datastore.manifest import ScanRow
from datastore.objectstore import ObjectStoreConfig
from datastore.volumes import open_root, open_store, read_volume
from pipelines.console import console
from pipelines.evaluation.config import FeatureSettings
from pipelines.registry import FetchedEncoder

FEATURE_FORMAT_VERSION = 1


def extraction_key(preprocess: PreprocessSpec, spec: FeatureSpec) -> str:
    """A digest of what, besides the weights and the scan, decides a cache entry."""
    payload = {"format_version": FEATURE_FORMAT_VERSION, "preprocess": json.loads(preprocess.to_json()),
               "slices_per_volume": spec.slices_per_volume, "blocks": list(spec.blocks)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class FeatureCache:
    """The cache entries of one encoder (weights digest) and one extraction key."""

    def __init__(self, url: str, storage: ObjectStoreConfig, encoder_sha256: str, key: str) -> None:
        self.url, self.storage = url.rstrip("/"), storage
        self.prefix = f"{encoder_sha256}/{key}"

    def group(self, mode: str = "r"):
        return open_store(self.url, self.storage, mode=mode)

    def prepare(self) -> None:
        """Create the entry folder once, before parallel writers add entries to it."""
        self.group("a").require_group(self.prefix)

    def complete(self, digests: list[str]) -> set[str]:
        try:
            folder = self.group("r")[self.prefix]
        except (KeyError, FileNotFoundError):
            return set()
        return {d for d in digests if d in folder and folder[d].attrs.get("complete")}

    def write(self, digest: str, features: VolumeFeatures) -> None:
        entry = self.group("a")[self.prefix].require_group(digest)
        entry.attrs.put({"complete": False})
        arrays = {"z": features.z.astype(np.int64), "cls": features.cls.numpy(), "patch_mean": features.patch_mean.numpy()}
        if features.blocks is not None:
            arrays["blocks"] = features.blocks.numpy().astype(np.float16)
        for name, values in arrays.items():
            chunks = (1, *values.shape[1:]) if name == "blocks" else values.shape
            entry.create_array(name, shape=values.shape, dtype=values.dtype, chunks=chunks, overwrite=True)[...] = values
        entry.attrs.put({"grid": list(features.grid), "format_version": FEATURE_FORMAT_VERSION, "complete": True})

    def read(self, digest: str) -> VolumeFeatures:
        entry = self.group("r")[f"{self.prefix}/{digest}"]
        blocks = torch.from_numpy(np.asarray(entry["blocks"][...], dtype=np.float32)) if "blocks" in entry else None
        return VolumeFeatures(np.asarray(entry["z"][...]), torch.from_numpy(np.asarray(entry["cls"][...])),
                              torch.from_numpy(np.asarray(entry["patch_mean"][...])), blocks, tuple(entry.attrs["grid"]))


class VolumeEncoder:
    """Ray Data actor: stored canonical volumes -> features -> cache entries. The encoder travels as bytes
    (safetensors + its JSON sidecar), so an actor on any node rebuilds it without a shared disk."""

    def __init__(self, weights: bytes, sidecar: bytes, preprocess: str, spec: dict[str, Any], manifest_root: str,
                 cache: FeatureCache, storage: ObjectStoreConfig, batch_size: int, use_gpu: bool, threads: int) -> None:
        torch.set_num_threads(max(1, threads))
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "encoder.safetensors").write_bytes(weights)
            (Path(folder) / "encoder.json").write_bytes(sidecar)
            self.encoder = Encoder.from_checkpoint(Path(folder) / "encoder.safetensors")
        if use_gpu:
            self.encoder = self.encoder.to("cuda")
        self.preprocess, self.spec = PreprocessSpec.from_json(preprocess), FeatureSpec.from_dict(spec)
        self.volumes = open_root(manifest_root, storage, mode="r")
        self.cache, self.batch_size = cache, batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        slices = []
        for zarr_path, digest in zip(batch["zarr_path"], batch["content_digest"]):
            volume = read_volume(self.volumes, str(zarr_path))
            features = volume_features(self.encoder, volume, self.preprocess, self.spec, self.batch_size)
            self.cache.write(str(digest), features)
            slices.append(len(features.z))
        return {"content_digest": np.asarray(batch["content_digest"]), "slices": np.asarray(slices)}


@dataclass(frozen=True)
class ExtractionReport:
    scans: int  # distinct scans asked for
    cached: int  # read from the cache, not encoded
    encoded_scans: int
    encoded_slices: int  # slices that went through the encoder in this run
    seconds: float


def extract_features(scans: list[ScanRow], encoder: FetchedEncoder, spec: FeatureSpec, settings: FeatureSettings,
                     manifest_root: str, storage: ObjectStoreConfig) -> tuple[FeatureCache, ExtractionReport]:
    """Fill the cache for ``scans`` (manifest rows) with Ray Data; Ray must be initialised."""
    import ray

    started = time.monotonic()
    preprocess = encoder.preprocess
    cache = FeatureCache(settings.cache, storage, encoder.weights_sha256, extraction_key(preprocess, spec))
    rows = {scan.content_digest: scan.zarr_path for scan in scans}
    done = cache.complete(sorted(rows))
    todo = [{"zarr_path": path, "content_digest": digest} for digest, path in sorted(rows.items()) if digest not in done]
    encoded = 0
    if todo:
        cache.prepare()
        kwargs = {"weights": encoder.weights.read_bytes(), "sidecar": encoder.weights.with_suffix(".json").read_bytes(),
                  "preprocess": preprocess.to_json(), "spec": spec.to_dict(), "manifest_root": manifest_root,
                  "cache": cache, "storage": storage, "batch_size": settings.batch_size, "use_gpu": settings.use_gpu,
                  "threads": int(settings.cpus_per_actor)}
        volumes = (ray.data.from_items(todo, override_num_blocks=len(todo))
                   .map_batches(VolumeEncoder, fn_constructor_kwargs=kwargs, batch_size=1, concurrency=settings.concurrency,
                                num_cpus=settings.cpus_per_actor, num_gpus=1 if settings.use_gpu else 0))
        with console().progress("volumes encoded", len(todo), "volumes") as advance:
            for row in volumes.iter_rows():
                encoded += int(row["slices"])
                advance(1)
    return cache, ExtractionReport(len(rows), len(done), len(todo), encoded, time.monotonic() - started)
