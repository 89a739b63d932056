"""Frozen encoder API for evaluation and serving."""

from braindino.features.encoder import CheckpointError, Encoder
from braindino.features.pooling import AttentionPooling

__all__ = ["AttentionPooling", "CheckpointError", "Encoder"]
