"""What a pretraining run shows in MLflow, logged from rank 0 only.

Metrics per logged step: loss terms, lr, weight decay, EMA momentum, teacher temperature, health
signals (teacher entropy, KL to uniform, feature std, prototype usage, collapse warning), throughput
(images/s, tokens/s) and the data-wait fraction. At evaluation intervals: a PCA-RGB map of the
teacher's patch features on fixed real slices (PNG artifact) and a kNN sequence-probe accuracy.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

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
        import time

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


def pca_rgb(patches: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """Project patch features ``[N, h*w, D]`` on their first three principal components -> uint8 ``[N, h, w, 3]``.

    The components are fitted jointly over all slices, so colours are comparable across them.
    """
    n, tokens, dim = patches.shape
    x = patches.reshape(-1, dim).float()
    x = x - x.mean(dim=0, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    components = x @ v[:3].T if v.shape[0] >= 3 else F.pad(x @ v.T, (0, 3 - v.shape[0]))
    low, high = components.quantile(0.01, dim=0), components.quantile(0.99, dim=0)
    rgb = ((components - low) / (high - low).clamp_min(1e-6)).clamp(0, 1)
    return (rgb.reshape(n, *grid, 3).numpy() * 255).astype(np.uint8)


def pca_figure(images: np.ndarray, rgb: np.ndarray, cell: int = 128) -> bytes:
    """PNG bytes: one row per slice, the slice (grey) beside its PCA-RGB patch map."""
    from PIL import Image

    canvas = Image.new("RGB", (2 * cell, cell * len(images)))
    for row, (image, colours) in enumerate(zip(images, rgb)):
        grey = image - image.min()
        grey = (255 * grey / max(float(grey.max()), 1e-6)).astype(np.uint8)
        canvas.paste(Image.fromarray(grey).convert("RGB").resize((cell, cell)), (0, row * cell))
        canvas.paste(Image.fromarray(colours).resize((cell, cell), Image.NEAREST), (cell, row * cell))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def knn_accuracy(features: torch.Tensor, labels: list[str], train: np.ndarray, k: int = 10,
                 temperature: float = 0.07) -> float:
    """Accuracy of a cosine kNN classifier (temperature-weighted votes) from the train rows to the others."""
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(label) for label in labels])
    feats = F.normalize(features.float(), dim=-1)
    bank, queries = feats[torch.from_numpy(train)], feats[torch.from_numpy(~train)]
    if len(queries) == 0 or len(bank) == 0:
        return float("nan")
    sims = queries @ bank.T
    top, idx = sims.topk(min(k, len(bank)), dim=1)
    votes = torch.zeros(len(queries), len(classes))
    votes.scatter_add_(1, y[torch.from_numpy(train)][idx], (top / temperature).exp())
    return (votes.argmax(1) == y[torch.from_numpy(~train)]).float().mean().item()


def collapse_threshold(embed_dim: int, fraction: float) -> float:
    """``fraction`` of ``1/sqrt(D)``, the per-dimension std of features spread over the sphere."""
    return fraction / math.sqrt(embed_dim)
