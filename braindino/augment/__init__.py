"""Multi-crop augmentation for brain-MRI slices: a per-sample CPU form, a batched torch form, and the
batch contract (crops plus iBOT masks) the training step consumes."""

from braindino.augment.batched import BatchedMultiCrop
from braindino.augment.collate import MultiCropBatch, batch_from_views, collate_multicrop
from braindino.augment.config import MultiCropConfig
from braindino.augment.cpu import MultiCropAugment

__all__ = [
    "BatchedMultiCrop",
    "MultiCropAugment",
    "MultiCropBatch",
    "MultiCropConfig",
    "batch_from_views",
    "collate_multicrop",
]
