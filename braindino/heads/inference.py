"""Running a head export: from a preprocessed canonical volume (or its features) to the task's answer.

``TaskHead.predict_volume(encoder, volume)`` is the whole path serving needs: the encoder features a head
reads (``braindino.features.volume_features``, the function evaluation uses), the head, and the answer in
plain data (probabilities with their class names, a value with its unit, a risk score) or, for
segmentation, a label volume on the scan's own grid and affine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from braindino.features import Encoder, VolumeFeatures, volume_features
from braindino.heads.export import HeadSpec, read_head
from braindino.volumes import CanonicalVolume, PreprocessSpec, labels_to_source_grid, slices_to_volume, source_grid


@dataclass(frozen=True)
class LabelVolume:
    """A segmentation on the grid the scan came in on: ``labels`` (int16, the source shape) and its affine."""

    labels: np.ndarray
    affine: np.ndarray
    names: dict[str, str]  # label value (as a string) -> name


def label_volume(probabilities: np.ndarray, z: np.ndarray, volume: CanonicalVolume, names: dict[str, str]) -> LabelVolume:
    """Per-slice class probabilities ``[S, K, H, W]`` of ``volume``'s axial slices ``z`` -> labels on its source grid.

    The slices go back into the canonical grid (everything else background), each class is interpolated
    linearly onto the source grid, and each voxel takes its most probable class.
    """
    background = np.eye(probabilities.shape[1], dtype=np.float32)[0]
    canonical = slices_to_volume(probabilities, z, volume.shape, background)
    affine, shape = source_grid(volume)
    return LabelVolume(labels_to_source_grid(canonical, volume.affine, affine, shape), affine, names)


class TaskHead:
    """A loaded head export: its ``spec`` and frozen ``module``."""

    def __init__(self, spec: HeadSpec, module: nn.Module) -> None:
        self.spec = spec
        self.module = module.eval().requires_grad_(False)

    @property
    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec.from_json(json.dumps(self.spec.preprocess))

    @torch.no_grad()
    def outputs(self, features: VolumeFeatures, batch_size: int = 16) -> Tensor:
        """Raw head outputs: ``[1, out]`` per volume or ``[S, out]`` per slice; segmentation logits ``[S, K, H, W]``."""
        if self.spec.kind == "segmentation":
            if features.blocks is None:
                raise ValueError(f"head {self.spec.task!r} reads the patch tokens of blocks {list(self.spec.features.blocks)}; "
                                 "these features carry none")
            return torch.cat([self.module(chunk, features.grid) for chunk in features.blocks.split(batch_size)])
        embeddings = features.slice_embeddings(self.spec.features.tokens)
        return self.module(embeddings[None] if self.spec.unit == "volume" else embeddings[:, None])

    def answer(self, features: VolumeFeatures) -> dict[str, Any]:
        """The prediction as plain data: per volume, or per slice (with each slice's axial index ``z``)."""
        out = self.outputs(features).double()
        output = self.spec.output
        if self.spec.kind == "classification":
            probabilities = torch.softmax(out, dim=-1)
            rows = [{"label": output["classes"][int(p.argmax())],
                     "probabilities": dict(zip(output["classes"], p.tolist()))} for p in probabilities]
        elif self.spec.kind == "regression":
            values = out[:, 0] * output["target_std"] + output["target_mean"]
            rows = [{"value": float(v), "unit": output["unit"]} for v in values]
        elif self.spec.kind == "survival":
            median = output.get("train_median_risk")
            rows = [{"risk": float(r), **({"high_risk": bool(r > median)} if median is not None else {})} for r in out[:, 0]]
        else:
            raise ValueError(f"head {self.spec.task!r} segments: use segment()")
        if self.spec.unit == "volume":
            return rows[0]
        return {"slices": [{"z": int(z), **row} for z, row in zip(features.z, rows)]}

    def segment(self, features: VolumeFeatures, volume: CanonicalVolume) -> LabelVolume:
        """The label volume on ``volume``'s source grid (its provenance records it) from ``features`` of ``volume``."""
        probabilities = torch.softmax(self.outputs(features), dim=1).numpy()
        return label_volume(probabilities, features.z, volume, self.spec.output["labels"])

    def predict_volume(self, encoder: Encoder, volume: CanonicalVolume, batch_size: int = 64) -> dict[str, Any] | LabelVolume:
        """The head's answer for a preprocessed canonical volume (``braindino.volumes.preprocess`` of a scan)."""
        features = volume_features(encoder, volume, self.preprocess, self.spec.features, batch_size)
        return self.segment(features, volume) if self.spec.kind == "segmentation" else self.answer(features)


def load_head(folder: str | Path, encoder_sha256: str | None = None) -> TaskHead:
    """A head export as a ``TaskHead``; ``HeadExportError`` when ``encoder_sha256`` is not its encoder's digest."""
    spec, module = read_head(folder, encoder_sha256)
    return TaskHead(spec, module)
