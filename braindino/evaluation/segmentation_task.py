"""The segmentation task runner: a decoder on multi-block patch tokens, trained on slices, scored per scan.

Training and model selection work on axial slices of the canonical grid (cross-entropy plus soft Dice;
validation by the mean Dice of the labels over the validation subjects' slices). Test scans are scored by
``SegmentationCases.score`` on each scan's original grid, in millimetres (``segmentation_scores``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from braindino.evaluation.protocol import Fitted
from braindino.evaluation.segmentation import segmentation_scores
from braindino.features.volume import VolumeFeatures
from braindino.heads.inference import LabelVolume, label_volume
from braindino.heads.models import DecoderConfig, SegmentationDecoder
from braindino.heads.training import FitSettings, fit_selected, minibatches
from braindino.volumes import CanonicalVolume, canonicalise, centre_pad_crop, resample, source_grid, voxel_spacing

SCORES = ("dice", "hd95", "nsd")


class SegmentationCases(Protocol):
    """Per-scan data of a segmentation task (rows are scans)."""

    labels: dict[int, str]  # label value -> name; 0 is background

    def slices(self, row: int) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """Patch tokens ``[S, n_blocks, h*w, D]``, reference label slices ``[S, H, W]`` and the token grid."""

    def score(self, row: int, probabilities: np.ndarray, keep: bool) -> np.ndarray:
        """Scores ``[n_labels, 3]`` (Dice, HD95 mm, NSD) of per-slice probabilities ``[S, K, H, W]`` on the
        scan's original grid; ``keep`` asks to keep the prediction (NIfTI, overlay)."""


def soft_dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """One minus the mean soft Dice of the foreground classes present in the batch or predicted."""
    probabilities = torch.softmax(logits, dim=1)[:, 1:]
    onehot = F.one_hot(targets, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probabilities.dtype)
    dims = (0, 2, 3)
    overlap = (probabilities * onehot).sum(dims)
    total = probabilities.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * overlap + 1e-3) / (total + 1e-3)).mean()


def slice_dice(logits: Tensor, targets: Tensor, n_classes: int) -> float:
    """Mean hard Dice over the foreground classes of a stack of slices (a class absent from both counts 1)."""
    predicted = logits.argmax(1)
    scores = []
    for label in range(1, n_classes):
        found, wanted = predicted == label, targets == label
        total = int(found.sum() + wanted.sum())
        scores.append(1.0 if total == 0 else 2.0 * int((found & wanted).sum()) / total)
    return float(np.mean(scores))


@dataclass(frozen=True)
class ScanCase:
    """One segmented scan, loaded on demand: its preprocessed canonical volume (geometry and provenance), its
    encoder features (with the decoder's blocks) and its reference labels on the scan's original grid."""

    subject: str
    volume: Callable[[], CanonicalVolume]
    features: Callable[[], VolumeFeatures]
    reference: Callable[[], np.ndarray]


@dataclass(frozen=True)
class KeptPrediction:
    """A test scan's prediction the protocol asked to keep: on the original grid (``labels``) and as the
    canonical axial slices ``z`` it was made on (``slices``, beside the ``reference`` slices)."""

    row: int
    case: ScanCase
    labels: LabelVolume
    z: np.ndarray
    slices: np.ndarray  # [S, H, W] predicted labels
    reference: np.ndarray  # [S, H, W] reference labels


class ScanCases:
    """``SegmentationCases`` over ``ScanCase`` rows; reference slices are made once per scan and kept.

    ``keep`` receives a ``KeptPrediction`` for every scan the protocol asks to keep.
    """

    def __init__(self, cases: list[ScanCase], labels: dict[int, str], slice_size: int, tolerance_mm: float,
                 keep: Callable[[KeptPrediction], None] | None = None) -> None:
        self.cases, self.labels, self.slice_size, self.tolerance = cases, labels, slice_size, tolerance_mm
        self.keep = keep
        self._targets: dict[int, Tensor] = {}

    def slices(self, row: int) -> tuple[Tensor, Tensor, tuple[int, int]]:
        features = self.cases[row].features()
        if row not in self._targets:
            self._targets[row] = reference_slices(self.cases[row].reference(), self.cases[row].volume(), features.z,
                                                  self.slice_size)
        return features.blocks, self._targets[row], features.grid

    def score(self, row: int, probabilities: np.ndarray, keep: bool) -> np.ndarray:
        case = self.cases[row]
        volume, features = case.volume(), case.features()
        names = {str(value): name for value, name in self.labels.items()}
        predicted = label_volume(probabilities, features.z, volume, names)
        if keep and self.keep is not None:
            self.keep(KeptPrediction(row, case, predicted, features.z, probabilities.argmax(1),
                                     self._targets[row].numpy() if row in self._targets else self.slices(row)[1].numpy()))
        reference = case.reference()
        scores = segmentation_scores(predicted.labels, reference, voxel_spacing(predicted.affine), self.labels, self.tolerance)
        return np.array([[s.dice, s.hd95, s.nsd] for s in scores.values()], dtype=np.float64)


def reference_slices(reference: np.ndarray, volume: CanonicalVolume, z: np.ndarray, slice_size: int) -> Tensor:
    """Reference labels (on the scan's original grid) carried onto ``volume``'s canonical grid exactly as the
    image was (reorientation, then nearest-neighbour resampling to its spacing), cut at axial slices ``z``."""
    affine, shape = source_grid(volume)
    if tuple(reference.shape) != shape:
        raise ValueError(f"the reference labels have shape {tuple(reference.shape)}, the scan {shape}: a mask must "
                         "share its image's grid")
    canonical = resample(canonicalise(np.asarray(reference, dtype=np.float32), affine), volume.spacing, order=0)
    if canonical.shape != volume.shape:
        raise ValueError(f"reference labels map to {canonical.shape}, the canonical volume is {volume.shape}")
    labels = np.stack([centre_pad_crop(canonical.data[:, :, int(k)], slice_size) for k in z])
    return torch.from_numpy(np.rint(labels).astype(np.int64))


@dataclass
class SegmentationTask:
    cases: SegmentationCases
    rows: int
    embed_dim: int
    n_blocks: int
    patch_size: int = 16
    width: int = 128
    settings: FitSettings = FitSettings()
    device: str = "cpu"
    primary: str = "dice"
    higher_is_better: bool = True

    @property
    def n_classes(self) -> int:
        return max(self.cases.labels) + 1

    def decoder_config(self) -> DecoderConfig:
        return DecoderConfig(self.embed_dim, self.n_blocks, self.n_classes, self.patch_size, self.width)

    def stack(self, rows: np.ndarray) -> tuple[Tensor, Tensor, tuple[int, int]]:
        parts = [self.cases.slices(int(row)) for row in rows]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), parts[0][2]

    def fit(self, train_rows: np.ndarray, val_rows: np.ndarray, seed: int) -> Fitted:
        tokens, targets, grid = self.stack(train_rows)
        val = self.stack(val_rows) if len(val_rows) else None
        n_classes = self.n_classes

        def batches(rng):
            return [(tokens[b], targets[b]) for b in minibatches(len(tokens), self.settings.batch_size, rng)]

        def loss(module, batch):
            x, y = (t.to(self.device) for t in batch)
            logits = module(x.float(), grid)
            return F.cross_entropy(logits, y) + soft_dice_loss(logits, y)

        @torch.no_grad()
        def score(module) -> tuple[float, float]:
            logits = self.logits(module, val[0], val[2])
            return slice_dice(logits, val[1], n_classes), float(F.cross_entropy(logits, val[1]) + soft_dice_loss(logits, val[1]))

        module, selection = fit_selected(lambda: SegmentationDecoder(self.decoder_config()).to(self.device), batches, loss,
                                         self.settings, seed, score if val is not None else None, True)
        return Fitted(module, selection)

    @torch.no_grad()
    def logits(self, module, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        module.eval()
        return torch.cat([module(chunk.to(self.device).float(), grid).cpu()
                          for chunk in tokens.split(self.settings.batch_size)])

    def predict(self, fitted: Fitted, rows: np.ndarray, keep: bool = False) -> np.ndarray:
        """Scores ``[r, n_labels, 3]`` of each test scan."""
        scores = []
        for row in rows:
            tokens, _, grid = self.cases.slices(int(row))
            probabilities = torch.softmax(self.logits(fitted.model, tokens, grid), dim=1).numpy()
            scores.append(self.cases.score(int(row), probabilities, keep))
        return np.stack(scores) if scores else np.zeros((0, len(self.cases.labels) - 1, 3))

    def metrics(self, rows: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
        if not len(outputs):
            return {name: float("nan") for name in SCORES}
        names = [name for value, name in sorted(self.cases.labels.items()) if value]
        means = outputs.mean(axis=0)  # [n_labels, 3]
        summary = {name: float(means[:, i].mean()) for i, name in enumerate(SCORES)}
        summary.update({f"dice/{label}": float(means[j, 0]) for j, label in enumerate(names)})
        return summary
