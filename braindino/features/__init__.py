"""Frozen encoder API for evaluation and serving."""

from braindino.features.encoder import CheckpointError, Encoder, SliceTokens
from braindino.features.pooling import AttentionPooling, masked_mean
from braindino.features.volume import (FeatureSpec, VolumeFeatures, VolumeInput, evenly_spaced_blocks, volume_features,
                                       volume_input)

__all__ = ["AttentionPooling", "CheckpointError", "Encoder", "FeatureSpec", "SliceTokens", "VolumeFeatures",
           "VolumeInput", "evenly_spaced_blocks", "masked_mean", "volume_features", "volume_input"]
