"""Backbone, RoPE and projection heads."""

from braindino.models.heads import HeadConfig, ProjectionHead, prototypes_for_dataset
from braindino.models.rope import RopeConfig
from braindino.models.vit import BackboneOutput, ViTConfig, VisionTransformer, fold_rgb_patch_embedding

__all__ = [
    "BackboneOutput",
    "HeadConfig",
    "ProjectionHead",
    "RopeConfig",
    "ViTConfig",
    "VisionTransformer",
    "fold_rgb_patch_embedding",
    "prototypes_for_dataset",
]
