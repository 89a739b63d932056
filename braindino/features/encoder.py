"""Frozen encoder API: load an exported backbone, embed slices and volumes.

Export layout (format version 2): ``NAME.safetensors`` holds the backbone state dict (keys as in
``VisionTransformer.state_dict()``), and ``NAME.json`` beside it holds ``{"format_version": 2,
"vit": ViTConfig fields}``, including ``vit.rope`` (``base``, the ``coordinates`` layout the encoder
was trained with, and the training-only augmentation settings). An encoder always runs with the
layout it was trained with. Version 1 sidecars held ``vit.rope_base`` and predate the layout choice:
their encoders were trained on centred patch indices and load with ``coordinates: patch_index``.
Inputs are already-normalised single-channel slices ``[B, 1, H, W]`` (preprocessing lives in
``braindino.volumes``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from braindino.config import ConfigError, build
from braindino.features.pooling import AttentionPooling
from braindino.models.vit import ViTConfig, VisionTransformer

FORMAT_VERSION = 2


class CheckpointError(ValueError):
    """An encoder checkpoint that does not match the architecture it is loaded into."""


def sidecar_path(path: str | Path) -> Path:
    """The JSON config file that accompanies ``path`` (same name, ``.json`` suffix)."""
    return Path(path).with_suffix(".json")


def read_sidecar_config(path: str | Path) -> ViTConfig:
    """The ``ViTConfig`` stored in the JSON sidecar of checkpoint ``path``."""
    sidecar = sidecar_path(path)
    if not sidecar.exists():
        raise CheckpointError(f"{sidecar} not found: pass config= to Encoder.from_checkpoint or write the sidecar")
    payload = upgrade_sidecar(json.loads(sidecar.read_text()), sidecar)
    try:
        return build(ViTConfig, payload["vit"], str(sidecar), "vit.")
    except ConfigError as err:
        raise CheckpointError(str(err)) from err


def upgrade_sidecar(payload: dict, source: Path) -> dict:
    """A sidecar mapping in the current format; version 1 becomes version 2 with the patch-index layout."""
    if payload.get("format_version") == 1:
        vit = dict(payload["vit"])
        vit["rope"] = {"base": vit.pop("rope_base", 100.0), "coordinates": "patch_index"}
        payload = {**payload, "format_version": 2, "vit": vit}
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{source}: format_version {payload.get('format_version')!r}, expected 1 or "
                              f"{FORMAT_VERSION}")
    return payload


def check_state_dict(expected: dict[str, Tensor], found: dict[str, Tensor], source: str) -> None:
    """Raise ``CheckpointError`` naming every missing, unexpected and wrongly shaped key."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong_shape = sorted(
        f"{key} {tuple(found[key].shape)} != {tuple(expected[key].shape)}"
        for key in set(expected) & set(found)
        if found[key].shape != expected[key].shape
    )
    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            f"{source} does not match the encoder architecture: missing keys {missing}, "
            f"unexpected keys {unexpected}, wrong shapes {wrong_shape}; check the ViT config in its JSON sidecar"
        )


class Encoder(nn.Module):
    """A frozen ViT in eval mode (it owns ``backbone``: pass a copy of a backbone still being trained)."""

    def __init__(self, backbone: VisionTransformer) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False).eval()

    @property
    def config(self) -> ViTConfig:
        return self.backbone.config

    @property
    def embed_dim(self) -> int:
        return self.backbone.embed_dim

    def train(self, mode: bool = True) -> "Encoder":
        """Always stays in eval mode: the encoder is frozen."""
        return super().train(False)

    @classmethod
    def from_checkpoint(cls, path: str | Path, config: ViTConfig | None = None) -> "Encoder":
        """Load ``path`` (safetensors) strictly; ``config`` defaults to the JSON sidecar's ``vit`` entry."""
        path = Path(path)
        if config is None:
            config = read_sidecar_config(path)
        backbone = VisionTransformer(config)
        state = load_file(path, device="cpu")
        check_state_dict(backbone.state_dict(), state, str(path))
        backbone.load_state_dict(state, strict=True)
        return cls(backbone)

    def save(self, path: str | Path) -> None:
        """Write the weights to ``path`` (safetensors) and the ViT config to its JSON sidecar."""
        path = Path(path)
        state = {key: value.detach().contiguous().cpu() for key, value in self.backbone.state_dict().items()}
        save_file(state, path, metadata={"format_version": str(FORMAT_VERSION)})
        sidecar = {"format_version": FORMAT_VERSION, "vit": self.config.to_dict()}
        sidecar_path(path).write_text(json.dumps(sidecar, indent=2) + "\n")

    @torch.no_grad()
    def encode_slices(self, slices: Tensor, with_patch_mean: bool = False, batch_size: int | None = None) -> Tensor:
        """Slice embeddings ``[B, D]`` (CLS), or ``[B, 2D]`` (CLS then mean patch token) with ``with_patch_mean``."""
        weight = self.backbone.patch_embed.proj.weight
        chunks = slices.split(batch_size) if batch_size else (slices,)
        embeddings = []
        for chunk in chunks:
            out = self.backbone(chunk.to(device=weight.device, dtype=weight.dtype))
            embeddings.append(torch.cat([out.cls, out.patches.mean(dim=1)], -1) if with_patch_mean else out.cls)
        return torch.cat(embeddings)

    def encode_volume(
        self,
        slices: Tensor,
        with_patch_mean: bool = False,
        pooling: AttentionPooling | None = None,
        batch_size: int | None = 64,
    ) -> Tensor:
        """One embedding for a volume's slices ``[S, 1, H, W]``: the mean of slice embeddings, or ``pooling`` of them.

        ``pooling`` is a trainable head: gradients reach it, never the encoder.
        """
        embeddings = self.encode_slices(slices, with_patch_mean, batch_size)
        return pooling(embeddings) if pooling is not None else embeddings.mean(dim=0)
