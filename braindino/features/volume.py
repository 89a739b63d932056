"""From a preprocessed canonical volume to encoder input and features: the one path evaluation and serving share.

The volume is what ``braindino.volumes.preprocess`` returns (and what ingest stores): RAS, resampled to
the spec's spacing, intensity-normalised. ``volume_input`` cuts its axial slices at the spec's slice size
(those with at least ``min_foreground`` foreground) and keeps ``slices_per_volume`` of them evenly spaced
(all of them for 0); ``volume_features`` runs the frozen encoder over them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from braindino.features.encoder import Encoder
from braindino.volumes import CanonicalVolume, PreprocessSpec, axial_slices, evenly_spaced

Tokens = Literal["cls", "cls+patch_mean"]


@dataclass(frozen=True)
class FeatureSpec:
    """Which encoder features a head reads: the slice embedding, how many slices, which blocks' patch tokens."""

    tokens: Tokens = "cls"  # per-slice embedding: CLS, or CLS then the mean patch token
    slices_per_volume: int = 128  # evenly spaced axial slices; 0 keeps every slice with enough foreground
    blocks: tuple[int, ...] = ()  # blocks whose patch tokens a segmentation decoder reads

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        if self.tokens not in ("cls", "cls+patch_mean"):
            raise ValueError(f"FeatureSpec.tokens must be 'cls' or 'cls+patch_mean', got {self.tokens!r}")
        if self.slices_per_volume < 0:
            raise ValueError(f"FeatureSpec.slices_per_volume must be >= 0, got {self.slices_per_volume}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "blocks": list(self.blocks)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FeatureSpec:
        return cls(**raw)


@dataclass(frozen=True)
class VolumeInput:
    slices: Tensor  # [S, 1, H, W] float32
    z: np.ndarray  # [S] axial index of each slice in the canonical volume


@dataclass(frozen=True)
class VolumeFeatures:
    z: np.ndarray  # [S]
    cls: Tensor  # [S, D]
    patch_mean: Tensor  # [S, D]
    blocks: Tensor | None  # [S, n_blocks, h*w, D] or None
    grid: tuple[int, int]

    def slice_embeddings(self, tokens: Tokens) -> Tensor:
        """``[S, D]`` (CLS) or ``[S, 2D]`` (CLS then mean patch token)."""
        return self.cls if tokens == "cls" else torch.cat([self.cls, self.patch_mean], dim=-1)


def volume_input(volume: CanonicalVolume, spec: PreprocessSpec, slices_per_volume: int) -> VolumeInput:
    """The encoder input of a preprocessed canonical volume; ``ValueError`` when no slice has enough foreground."""
    slices = axial_slices(volume, spec.slice_size, spec.min_foreground)
    if slices_per_volume:
        slices = evenly_spaced(slices, slices_per_volume)
    if not slices:
        raise ValueError(f"no axial slice of this {volume.shape} volume has {spec.min_foreground:.0%} foreground")
    images = torch.from_numpy(np.stack([image for _, image, _ in slices]))[:, None]
    return VolumeInput(images, np.array([z for z, _, _ in slices], dtype=np.int64))


def volume_features(encoder: Encoder, volume: CanonicalVolume, spec: PreprocessSpec, features: FeatureSpec,
                    batch_size: int = 64) -> VolumeFeatures:
    """Features of a preprocessed canonical volume, as ``features`` asks, from the frozen ``encoder``."""
    inputs = volume_input(volume, spec, features.slices_per_volume)
    tokens = encoder.encode_tokens(inputs.slices, features.blocks, batch_size)
    return VolumeFeatures(inputs.z, tokens.cls, tokens.patch_mean, tokens.blocks, tokens.grid)


def evenly_spaced_blocks(depth: int, count: int) -> tuple[int, ...]:
    """``count`` block indices spread over ``depth`` blocks, ending at the last: 4 of 12 gives (2, 5, 8, 11)."""
    count = min(count, depth)
    return tuple(int(b) for b in np.round(np.linspace(depth / count - 1, depth - 1, count)).astype(int))
