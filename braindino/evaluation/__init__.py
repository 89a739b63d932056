"""Evaluation maths on frozen features: probes and projections (plain PyTorch/NumPy)."""

from braindino.evaluation.knn import knn_accuracy
from braindino.evaluation.pca import patch_foreground, pca_rgb

__all__ = ["knn_accuracy", "patch_foreground", "pca_rgb"]
