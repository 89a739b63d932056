"""The head export contract (format version 1): what evaluation writes, the registry stores, serving loads.

A head export is a folder holding two files and nothing that is ever unpickled:

``head.safetensors``
    the head module's state dict (float32), keys as in ``EmbeddingHead`` or ``SegmentationDecoder``.
``head.json``
    ``format_version``  1
    ``task``            the task name; the registry model is ``braindino-head-<task>``
    ``family``          e.g. ``sequence_classification``, ``tumour_segmentation``, ``survival``
    ``kind``            ``classification`` | ``regression`` | ``survival`` | ``segmentation``
    ``unit``            ``volume`` (one prediction per scan) or ``slice`` (one per axial slice)
    ``architecture``    ``{"type": "embedding_mlp", in_dim, out_dim, hidden_dim, pooling}`` or
                        ``{"type": "segmentation_decoder", embed_dim, n_blocks, n_classes, patch_size, width}``
    ``features``        the ``FeatureSpec`` it reads: ``tokens`` (``cls`` | ``cls+patch_mean``),
                        ``slices_per_volume`` (0: every slice), ``blocks`` (segmentation)
    ``output``          classification ``{"classes": [...]}`` (logit order); regression ``{"unit",
                        "target_mean", "target_std"}`` (outputs are standardised targets); survival
                        ``{"risk": ..., "train_median_risk"}``; segmentation ``{"labels": {"0": "background", ...}}``
    ``encoder``         ``{"name", "version", "weights_sha256"}`` of the encoder it was trained on
    ``preprocess``      that encoder's ``PreprocessSpec`` (JSON)

``braindino.heads.load_head(folder, encoder_sha256)`` reads it and refuses an encoder whose weights
digest differs; ``TaskHead.predict_volume(encoder, volume)`` runs it on a preprocessed canonical volume.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from safetensors.torch import load_file, save_file
from torch import nn

from braindino.features.volume import FeatureSpec
from braindino.heads.models import DecoderConfig, EmbeddingHead, EmbeddingHeadConfig, SegmentationDecoder

HEAD_FORMAT_VERSION = 1
HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head.json"
Kind = Literal["classification", "regression", "survival", "segmentation"]
KINDS = ("classification", "regression", "survival", "segmentation")
OUTPUT_KEYS = {"classification": ("classes",), "regression": ("unit", "target_mean", "target_std"),
               "survival": ("risk",), "segmentation": ("labels",)}


class HeadExportError(ValueError):
    """A head export that is malformed, or that does not belong to the encoder it is loaded with."""


@dataclass(frozen=True)
class EncoderRef:
    """The registered encoder a head was trained on."""

    name: str
    version: str
    weights_sha256: str


@dataclass(frozen=True)
class HeadSpec:
    task: str
    family: str
    kind: Kind
    architecture: dict[str, Any]
    features: FeatureSpec
    output: dict[str, Any]
    encoder: EncoderRef
    preprocess: dict[str, Any]
    unit: Literal["volume", "slice"] = "volume"
    format_version: int = HEAD_FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # free-form facts (trainable parameters, metric)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise HeadExportError(f"head kind {self.kind!r} is not one of {list(KINDS)}")
        missing = [key for key in OUTPUT_KEYS[self.kind] if key not in self.output]
        if missing:
            raise HeadExportError(f"a {self.kind} head's output spec needs {missing}")
        if self.unit not in ("volume", "slice"):
            raise HeadExportError(f"head unit must be 'volume' or 'slice', got {self.unit!r}")

    def to_json(self) -> str:
        payload = asdict(self)
        payload["features"] = self.features.to_dict()
        return json.dumps(payload, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = HEAD_CONFIG) -> HeadSpec:
        raw = json.loads(text)
        if raw.get("format_version") != HEAD_FORMAT_VERSION:
            raise HeadExportError(f"{source}: head format_version {raw.get('format_version')!r}; this code reads "
                                  f"{HEAD_FORMAT_VERSION}")
        try:
            raw["features"] = FeatureSpec.from_dict(raw["features"])
            raw["encoder"] = EncoderRef(**raw["encoder"])
            return cls(**raw)
        except (KeyError, TypeError) as err:
            raise HeadExportError(f"{source}: not a head spec ({err})") from None


def build_module(architecture: dict[str, Any]) -> nn.Module:
    """The untrained head module an ``architecture`` entry describes."""
    kind, fields = architecture.get("type"), {k: v for k, v in architecture.items() if k != "type"}
    try:
        if kind == "embedding_mlp":
            return EmbeddingHead(EmbeddingHeadConfig(**fields))
        if kind == "segmentation_decoder":
            return SegmentationDecoder(DecoderConfig(**fields))
    except TypeError as err:
        raise HeadExportError(f"architecture {architecture}: {err}") from None
    raise HeadExportError(f"architecture type {kind!r} is not 'embedding_mlp' or 'segmentation_decoder'")


def architecture_of(module: nn.Module) -> dict[str, Any]:
    kind = "embedding_mlp" if isinstance(module, EmbeddingHead) else "segmentation_decoder"
    return {"type": kind, **asdict(module.config)}


def save_head(folder: str | Path, module: nn.Module, spec: HeadSpec) -> Path:
    """Write ``head.safetensors`` and ``head.json`` into ``folder``; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().float().contiguous().cpu() for key, value in module.state_dict().items()}
    save_file(state, folder / HEAD_WEIGHTS, metadata={"format_version": str(HEAD_FORMAT_VERSION), "task": spec.task})
    (folder / HEAD_CONFIG).write_text(spec.to_json() + "\n")
    return folder


def read_head(folder: str | Path, encoder_sha256: str | None = None) -> tuple[HeadSpec, nn.Module]:
    """The spec and the loaded module of a head export; refuses a different encoder when ``encoder_sha256`` is given."""
    folder = Path(folder)
    for name in (HEAD_CONFIG, HEAD_WEIGHTS):
        if not (folder / name).exists():
            raise HeadExportError(f"{folder} is not a head export: {name} is missing")
    spec = HeadSpec.from_json((folder / HEAD_CONFIG).read_text(), str(folder / HEAD_CONFIG))
    check_encoder(spec, encoder_sha256)
    module = build_module(spec.architecture)
    state = load_file(folder / HEAD_WEIGHTS, device="cpu")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise HeadExportError(f"{folder / HEAD_WEIGHTS} does not match its architecture in {HEAD_CONFIG}: {err}") from None
    return spec, module.eval().requires_grad_(False)


def check_encoder(spec: HeadSpec, encoder_sha256: str | None) -> None:
    """Raise when a head trained on one encoder is used with another (weights digests differ)."""
    if encoder_sha256 is not None and encoder_sha256 != spec.encoder.weights_sha256:
        raise HeadExportError(
            f"head {spec.task!r} was trained on encoder {spec.encoder.name or '<export folder>'} "
            f"version {spec.encoder.version or '-'} with weights sha256 {spec.encoder.weights_sha256}; the encoder "
            f"given has weights sha256 {encoder_sha256}. Evaluate that encoder to train a head for it")


__all__ = ["EncoderRef", "HeadExportError", "HeadSpec", "architecture_of", "build_module", "read_head", "save_head"]
