"""Task heads on the frozen encoder: the modules, their export contract, and running them (plain PyTorch)."""

from braindino.heads.export import (HEAD_CONFIG, HEAD_FORMAT_VERSION, HEAD_WEIGHTS, EncoderRef, HeadExportError, HeadSpec,
                                    architecture_of, build_module, read_head, save_head)
from braindino.heads.inference import LabelVolume, TaskHead, label_volume, load_head
from braindino.heads.models import (DecoderConfig, EmbeddingHead, EmbeddingHeadConfig, SegmentationDecoder,
                                    trainable_parameters)

__all__ = ["HEAD_CONFIG", "HEAD_FORMAT_VERSION", "HEAD_WEIGHTS", "DecoderConfig", "EmbeddingHead", "EmbeddingHeadConfig",
           "EncoderRef", "HeadExportError", "HeadSpec", "LabelVolume", "SegmentationDecoder", "TaskHead",
           "architecture_of", "build_module", "label_volume", "load_head", "read_head", "save_head", "trainable_parameters"]
