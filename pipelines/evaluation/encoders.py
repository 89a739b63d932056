"""The encoders one evaluation compares: the candidate, and baselines under the same protocol.

A baseline is ``random-init`` (the candidate's architecture with untrained weights, fixed by a seed so
its features cache like any other encoder's), a registry URI or an export folder. Every encoder reads the
scans the ingest stored, so its preprocessing must match how they were made (spacing and intensity
clipping); the slice size and the slices kept are cut again for each encoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from braindino.features import Encoder
from braindino.features.encoder import read_sidecar_config
from braindino.models.vit import ViTConfig, VisionTransformer
from braindino.volumes import PreprocessSpec
from pipelines.registry import PREPROCESS_FILE, WEIGHTS_FILE, FetchedEncoder, fetch_encoder

RANDOM_INIT = "random-init"


@dataclass(frozen=True)
class EncoderUnderTest:
    label: str  # how reports name it
    encoder: FetchedEncoder
    candidate: bool

    @cached_property
    def config(self) -> ViTConfig:
        return read_sidecar_config(self.encoder.weights)

    @cached_property
    def parameters(self) -> int:
        return sum(p.numel() for p in VisionTransformer(self.config).parameters())


def describe(fetched: FetchedEncoder) -> str:
    return f"{fetched.name} v{fetched.version}" if fetched.name else Path(fetched.reference).name or fetched.reference


def random_init_like(candidate: FetchedEncoder, folder: Path, seed: int = 0) -> FetchedEncoder:
    """An untrained encoder of the candidate's architecture and preprocessing, written as an export folder."""
    folder.mkdir(parents=True, exist_ok=True)
    config = read_sidecar_config(candidate.weights)
    torch.manual_seed(seed)
    Encoder(VisionTransformer(config)).save(folder / WEIGHTS_FILE)
    (folder / PREPROCESS_FILE).write_text(candidate.preprocess.to_json() + "\n")
    return fetch_encoder(str(folder), "")


def resolve_encoders(reference: str, baselines: list[str], tracking_uri: str, workdir: Path) -> list[EncoderUnderTest]:
    """The candidate first, then each baseline, fetched (or built) into ``workdir``."""
    candidate = fetch_encoder(reference, tracking_uri, workdir / "candidate")
    encoders = [EncoderUnderTest(describe(candidate), candidate, True)]
    for index, baseline in enumerate(baselines):
        if baseline == RANDOM_INIT:
            fetched = random_init_like(candidate, workdir / RANDOM_INIT)
            label = f"random-init ({encoders[0].config.size})"
        else:
            fetched = fetch_encoder(baseline, tracking_uri, workdir / f"baseline{index}")
            label = describe(fetched)
        encoders.append(EncoderUnderTest(label, fetched, False))
    return encoders


def check_preprocess(encoder: EncoderUnderTest, manifest_root: str, made_with: dict | None) -> None:
    """Refuse an encoder whose spacing or intensity clipping differs from how the stored scans were made."""
    if made_with is None:
        raise ValueError(f"{manifest_root}: the manifest records no preprocessing spec; run the ingest again on it")
    stored = PreprocessSpec.from_json(json.dumps(made_with))
    wanted = encoder.encoder.preprocess
    for name in ("spacing", "clip_percentiles"):
        if getattr(stored, name) != getattr(wanted, name):
            raise ValueError(
                f"encoder {encoder.label} expects {name} {getattr(wanted, name)}, but the scans in {manifest_root} were "
                f"made with {getattr(stored, name)}: ingest these datasets into another root with the encoder's "
                f"preprocessing ({wanted.to_json()}) and evaluate there")
