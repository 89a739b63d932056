"""The training input: shards named by the ingest manifest, streamed by Ray Data to the workers.

``shard_index`` reads the latest committed manifest (never a directory listing) and returns the shard
paths, the manifest digest and what the data is (datasets, sequences). ``build_dataset`` turns that
into a Ray Data stream: read WebDataset shards -> decode the float16 ``npy`` slice to float32 ->
optionally the CPU multi-crop (``data.augment_on: ray_data``), its tasks and actors sized by
``pipelines.train.resources``. Shard order is shuffled every pass and the workers shuffle locally,
so batches mix subjects (ingest already mixes them within shards).

``worker_batches`` is the worker side: an endless, position-tracking iterator of raw batches (one pass
over the data is a "data epoch"; training is counted in iterations, not epochs), watched for stalls
(``pipelines.train.watchdog``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from braindino.augment import BatchedMultiCrop, MultiCropAugment, MultiCropBatch, MultiCropConfig, batch_from_views
from braindino.ssl.masking import BlockMaskGenerator
from braindino.volumes import PreprocessSpec
from datastore.manifest import ManifestMissing, ManifestStore
from datastore.objectstore import ObjectStoreConfig
from datastore.shards import SampleRecord
from pipelines.train.checkpoint import DataPosition
from pipelines.train.config import PretrainConfig, StageConfig
from pipelines.train.resources import DataResources
from pipelines.train.watchdog import AUGMENT, AUGMENT_BATCH, DECODE, READ, SPLIT, StreamWatchdog, reported


@dataclass(frozen=True)
class ShardIndex:
    """What one committed manifest version says the training data is."""

    root: str
    version: int
    digest: str
    shards: tuple[str, ...]  # paths within the filesystem ``store.resolve(root)`` returns
    n_slices: int
    scans: tuple[dict, ...]  # (dataset, sequence, subject, slices_kept) per ok scan
    preprocess: PreprocessSpec  # what ingest made every slice with
    inactive_keys: frozenset[str] = frozenset()  # superseded samples still inside listed shards: skipped
    licences: dict = field(default_factory=dict)  # dataset -> {"licence", "citation"}

    def datasets(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for scan in self.scans:
            counts[scan["dataset"]] = counts.get(scan["dataset"], 0) + 1
        return counts


def shard_index(root: str, store: ObjectStoreConfig) -> ShardIndex:
    """The active shards of the latest manifest under ``root`` (the ingest output root)."""
    if not root:
        raise ManifestMissing("data.manifest is empty: set it to the ingest output root (e.g. s3://bucket/ingest)")
    manifests = ManifestStore(root, store)
    manifest = manifests.latest()
    if manifest.version == 0:
        raise ManifestMissing(f"{root} holds no committed manifest (manifest/v*.json): run 'braindino ingest' into it "
                              "first, or point data.manifest at an ingest output root")
    slices = manifest.active_slices()
    if slices.num_rows == 0:
        raise ValueError(f"{root}: manifest v{manifest.version} lists no active slices to train on")
    shards = sorted(set(slices["shard"].to_pylist()))
    digest = hashlib.sha256()
    digest.update(f"v{manifest.version}:{manifest.run_id}\n".encode())
    for shard, key in sorted(zip(slices["shard"].to_pylist(), slices["sample_key"].to_pylist())):
        digest.update(f"{shard}/{key}\n".encode())
    scans = tuple({k: getattr(row, k) for k in ("dataset", "sequence", "subject", "slices_kept")}
                  for row in manifest.current_scans() if row.status == "ok")
    return ShardIndex(root=root, version=manifest.version, digest=digest.hexdigest(),
                      shards=tuple(f"{manifests.root}/{s}" for s in shards), n_slices=slices.num_rows, scans=scans,
                      preprocess=PreprocessSpec.from_json(json.dumps(manifest.preprocess)),
                      inactive_keys=frozenset(manifest.inactive_sample_keys()), licences=manifest.datasets)


def _decode(batch: dict, inactive_keys: list[str], progress) -> dict:
    """float16 ``npy`` slices -> float32 ``image`` rows, dropping samples of superseded scans."""
    def decode() -> dict:
        images = np.asarray(batch["npy"])
        if inactive_keys:  # samples of superseded scans share shards with active ones
            images = images[~np.isin(np.asarray(batch["__key__"]).astype(str), inactive_keys)]
        return {"image": images.astype(np.float32)}

    return reported(progress, DECODE, len(batch["npy"]), decode)


class _CpuMultiCrop:
    """Ray Data UDF: the CPU multi-crop over each batch of slices (``MultiCropAugment.many``), one crop
    stack per slice. Its torch kernels run on one thread."""

    def __init__(self, config: MultiCropConfig, progress=None):
        torch.set_num_threads(1)
        self.augment = MultiCropAugment(config, seed=None)
        self.progress = progress
        if progress is not None:
            progress.actor_started.remote(AUGMENT)

    def __call__(self, batch: dict) -> dict:
        return reported(self.progress, AUGMENT, len(batch["image"]), lambda: self.crops(batch["image"]))

    def crops(self, images: np.ndarray) -> dict:
        views = self.augment.many(list(images))
        out = {"global": np.stack([np.stack(v["global"]) for v in views]).astype(np.float32)}
        if views[0]["local"]:
            out["local"] = np.stack([np.stack(v["local"]) for v in views]).astype(np.float32)
        return out


def build_dataset(index: ShardIndex, config: PretrainConfig, stage: StageConfig,
                  resources: DataResources = DataResources(), progress=None):
    """The Ray Data stream for one stage (the crop sizes differ between stages).

    Shard order is shuffled on every pass (seeded by ``seed``); reading and decoding run fused in one
    task. ``resources`` sizes the tasks and actors (``plan_data_resources``); ``progress`` is the run's
    ``StreamProgress`` actor, to which the stages report for the stall watchdog.
    """
    import ray.data

    fs, _ = config.data.store.resolve(index.root)
    ds = ray.data.read_webdataset(list(index.shards), filesystem=fs, num_cpus=resources.read_cpus,
                                  shuffle=ray.data.FileShuffleConfig(seed=config.seed))
    ds = ds.map_batches(_decode, fn_args=(sorted(index.inactive_keys), progress), batch_format="numpy",
                        num_cpus=resources.read_cpus)
    return with_augmentation(ds, config, stage, resources, progress)


def with_augmentation(ds, config: PretrainConfig, stage: StageConfig, resources: DataResources = DataResources(),
                      progress=None):
    """Append the CPU multi-crop to a stream of ``image`` rows when ``data.augment_on`` is ``ray_data``."""
    import ray.data

    if config.data.augment_on != "ray_data":
        return ds
    low, high = resources.augment_actors
    return ds.map_batches(_CpuMultiCrop, fn_constructor_args=(stage.crops, progress), batch_format="numpy",
                          batch_size=AUGMENT_BATCH, num_cpus=resources.augment_cpus,
                          compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high))


def stream_stages(config: PretrainConfig) -> tuple[str, ...]:
    """The stream's stages in order, as the stall watchdog names them."""
    return (READ, DECODE, *((AUGMENT,) if config.data.augment_on == "ray_data" else ()), SPLIT)


class BatchMaker:
    """Turn a raw batch from the stream into a ``MultiCropBatch`` on ``device`` (augmenting if needed)."""

    def __init__(self, config: PretrainConfig, stage: StageConfig, device: torch.device, seed: int):
        crops, patch = stage.crops, config.model.vit.patch_size
        self.crops = crops
        self.augment_here = config.data.augment_on == "worker"
        self.augment = BatchedMultiCrop(crops)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        grid = (crops.global_size // patch, crops.global_size // patch)
        self.masks = BlockMaskGenerator(grid, *stage.masks.ratio, masked_fraction=stage.masks.probability, seed=seed)
        self.device = device

    def __call__(self, raw: dict[str, torch.Tensor]) -> MultiCropBatch:
        crops = self.crops
        if self.augment_here:
            images = raw["image"].to(self.device, non_blocking=True).unsqueeze(1)
            global_crops, local_crops = self.augment(images, generator=self.generator)
        else:
            global_crops = _view_major(raw["global"].to(self.device, non_blocking=True))
            if "local" in raw:
                local_crops = _view_major(raw["local"].to(self.device, non_blocking=True))
            else:
                local_crops = global_crops.new_zeros((0, 1, crops.local_size, crops.local_size))
        return batch_from_views(global_crops, local_crops, crops.n_global, crops.n_local, self.masks)


def _view_major(views: torch.Tensor) -> torch.Tensor:
    """``[B, V, S, S]`` per-sample stacks -> ``[V * B, 1, S, S]`` with row ``v * B + b``."""
    batch, count, height, width = views.shape
    return views.transpose(0, 1).reshape(count * batch, 1, height, width)


def worker_batches(shard, config: PretrainConfig, stage: StageConfig, position: DataPosition) -> Iterator[dict]:
    """Endless raw batches from this worker's dataset shard, advancing ``position``.

    On resume the first pass skips the batches already consumed in that pass, so the run continues
    in the data instead of restarting it. A wait longer than ``data.stall_timeout_s`` raises ``DataStalled`` naming the stuck stream stage.
    """
    batch = stage.batch_size_per_worker
    watchdog = StreamWatchdog.for_run(
        config.name, config.data.stall_timeout_s, stream_stages(config),
        buffered=config.data.shuffle_buffer + (config.data.prefetch_batches + 1) * batch)
    skip = position.batches_in_epoch
    for item in watchdog.watch(_passes(shard, config, stage, position.data_epoch)):
        if item is _END_OF_PASS:
            position.data_epoch += 1
            position.batches_in_epoch = 0
            skip = 0
            continue
        watchdog.delivered(batch)
        if skip:
            skip -= 1
            continue
        position.batches_in_epoch += 1
        position.samples_seen += batch
        yield item


_END_OF_PASS = object()  # ends each pass in the stream _passes yields


def _passes(shard, config: PretrainConfig, stage: StageConfig, first_epoch: int) -> Iterator:
    """Batches of pass after pass over ``shard``, each pass followed by ``_END_OF_PASS``."""
    epoch = first_epoch
    while True:
        produced = 0
        for batch in shard.iter_torch_batches(
            batch_size=stage.batch_size_per_worker, drop_last=True, dtypes=torch.float32,
            local_shuffle_buffer_size=config.data.shuffle_buffer or None, local_shuffle_seed=config.seed + epoch,
            prefetch_batches=config.data.prefetch_batches,
        ):
            produced += 1
            yield batch
        if produced == 0:
            raise RuntimeError("the dataset shard produced no batch: fewer slices than one batch per worker; "
                               "lower stage batch_size_per_worker or ingest more data")
        epoch += 1
        yield _END_OF_PASS


@dataclass
class ProbeSet:
    """Fixed real slices for the evaluation hooks: a kNN sequence probe and PCA feature maps."""

    images: np.ndarray  # [N, H, W] float32
    labels: list[str]  # the sequence of each slice (T1w, T2w, ...)
    train: np.ndarray  # [N] bool: the kNN memory bank; the rest are queries
    keys: list[str]
    records: list[SampleRecord]  # which slice of which scan each image is

    def classes(self) -> list[str]:
        return sorted(set(self.labels))


def probe_set(index: ShardIndex, store: ObjectStoreConfig, per_class: int, max_classes: int = 4) -> ProbeSet:
    """Up to ``per_class`` slices per sequence, read from the manifest's shards (train/query by alternating z)."""
    from datastore.shards import read_shard

    fs, _ = store.resolve(index.root)
    chosen: dict[str, list[tuple[str, np.ndarray, SampleRecord]]] = {}
    for shard in index.shards:
        for key, image, record in read_shard(fs, shard):
            if key in index.inactive_keys:
                continue
            sequence = record.sequence or "unknown"
            bucket = chosen.setdefault(sequence, []) if len(chosen) < max_classes or sequence in chosen else None
            if bucket is not None and len(bucket) < per_class:
                bucket.append((key, image.astype(np.float32), record))
        if chosen and all(len(v) >= per_class for v in chosen.values()) and len(chosen) >= min(2, max_classes):
            break
    rows = sorted((item for items in chosen.values() for item in items), key=lambda r: (r[2].sequence, r[2].z))
    if not rows:
        raise ValueError(f"{index.root}: no slices found in the manifest's shards for the probe set")
    images = np.stack([r[1] for r in rows])
    labels = [r[2].sequence or "unknown" for r in rows]
    train = np.array([i % 2 == 0 for i in range(len(rows))])
    return ProbeSet(images, labels, train, [r[0] for r in rows], [r[2] for r in rows])


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """``[N, H, W]`` -> ``[N, 1, size, size]`` bilinear (the evaluation view of a whole slice)."""
    return F.interpolate(images.unsqueeze(1).float(), size=(size, size), mode="bilinear", align_corners=False)


def describe(index: ShardIndex) -> str:
    return json.dumps({"root": index.root, "version": index.version, "shards": len(index.shards),
                       "slices": index.n_slices, "datasets": index.datasets()})
