"""The run logger: what a pretraining run writes to its MLflow run (from rank 0 only), and the PCA figure.

Metrics per logged step: loss terms, the schedule values the step ran with (lr, weight decay, EMA
momentum, teacher temperature, prototype freeze), health signals (teacher entropy, KL to uniform,
feature std, prototype usage, collapse warning), throughput (images/s, tokens/s) and the data-wait
fraction, all at the step counted across stages, so both stages' curves share one axis. At evaluation
intervals: a PCA-RGB map of the teacher's patch features on fixed real slices (PNG artifact) and a kNN
sequence-probe accuracy.
"""

from __future__ import annotations

import io
import logging
import math
import time
from pathlib import Path

import numpy as np

from braindino.volumes.display import Tile, map_image, montage, montage_scale, physical_size, slice_caption, slice_image
from datastore.shards import SampleRecord

log = logging.getLogger("braindino.pretrain")


class RunLogger:
    """Writes to one MLflow run through a client (no global MLflow state); a no-op off rank 0."""

    def __init__(self, tracking_uri: str, run_id: str, enabled: bool):
        self.enabled = enabled and bool(run_id)
        self.run_id = run_id
        self.client = None
        if self.enabled:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri)

    def metrics(self, values: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in values.items() if math.isfinite(float(v))]
        self.client.log_batch(self.run_id, metrics=batch)

    def tag(self, key: str, value: str) -> None:
        if self.enabled:
            self.client.set_tag(self.run_id, key, value)

    def artifact(self, path: str | Path, folder: str) -> None:
        if self.enabled:
            self.client.log_artifact(self.run_id, str(path), artifact_path=folder)


def pca_figure(images: np.ndarray, rgb: np.ndarray, records: list[SampleRecord]) -> bytes:
    """PNG bytes: one row per slice, the slice beside its PCA-RGB patch map, both in the QC montages' display
    convention (anterior up, the subject's left on the left, true aspect) and captioned with the scan's
    pseudonym, sequence and slice index."""
    extents = [physical_size(image.shape, record.spacing) for image, record in zip(images, records)]
    scale = montage_scale(extents)
    tiles = []
    for image, colours, record in zip(images, rgb, records):
        grey = slice_image(image, record.spacing, scale)
        scan_id = record.volume_id.rsplit("-", 1)[0]  # a volume id is the scan pseudonym + "-" + a content digest
        tiles += [Tile(grey, slice_caption(scan_id, record.sequence, record.z)),
                  Tile(map_image(colours, grey.size), ("teacher patch features", "PCA 1-3 as RGB"))]
    buffer = io.BytesIO()
    montage(tiles, columns=2).save(buffer, format="PNG")
    return buffer.getvalue()
