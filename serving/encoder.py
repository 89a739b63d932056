"""The encoder deployment: the one copy of the frozen encoder, loaded from the registry, batched across requests.

Callers (the ingress and every head) send already decoded and validated slices, so nothing in a batch
can fail because of one request's input. Requests are batched with ``@serve.batch``: the slices of up to
``max_batch_size`` requests run through the encoder together, ``forward_batch_size`` slices per forward
pass, on the GPU when the replica has one (its ``num_gpus`` is a whole GPU, never a fraction).
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ray import serve

from braindino.features import Encoder
from pipelines.registry import fetch_encoder
from serving.settings import EncoderSettings, defaults, parse_settings

DEPLOYMENT = "Encoder"


@dataclass(frozen=True)
class EncoderCall:
    """One request's input: preprocessed slices ``[S, 1, size, size]`` float32."""

    slices: np.ndarray


@dataclass(frozen=True)
class SliceEmbeddings:
    """Per-slice outputs ``[S, D]`` (CLS and mean patch token), and the digest of the weights that made them."""

    cls: np.ndarray
    patch_mean: np.ndarray
    weights_sha256: str


@dataclass(frozen=True)
class LoadedEncoder:
    """A registered encoder in memory, and what answers report about it."""

    encoder: Encoder
    description: dict[str, Any]


def load_encoder(settings: EncoderSettings, device: torch.device) -> LoadedEncoder:
    """Fetch ``settings.model`` (safetensors + JSON only) and move it to ``device``; the download is removed."""
    with tempfile.TemporaryDirectory(prefix="braindino-encoder-") as folder:
        fetched = fetch_encoder(settings.model, settings.resolved_tracking_uri(), folder)
        encoder = fetched.load().to(device)
        preprocess = fetched.preprocess
    description = {
        "reference": settings.model, "name": fetched.name, "version": fetched.version,
        "weights_sha256": fetched.weights_sha256, "embed_dim": encoder.embed_dim, "depth": encoder.config.depth,
        "preprocess": preprocess.to_json(), "device": str(device),
    }
    return LoadedEncoder(encoder, description)


def encode(encoder: Encoder, calls: list[EncoderCall], forward_batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """CLS and mean patch token of every call's slices, run as one concatenated batch and split back."""
    counts = [len(call.slices) for call in calls]
    slices = torch.from_numpy(np.concatenate([call.slices for call in calls]))
    both = encoder.encode_slices(slices, with_patch_mean=True, batch_size=forward_batch_size).float().cpu().numpy()
    cls, patch_mean = np.split(both, 2, axis=1)
    bounds = np.cumsum(counts)[:-1]
    return list(zip(np.split(cls, bounds), np.split(patch_mean, bounds)))


@serve.deployment(
    name=DEPLOYMENT,
    num_replicas=1,
    max_ongoing_requests=16,  # at least max_batch_size, or batches never fill (the default of 5 caps them at 5)
    ray_actor_options={"num_cpus": 1, "num_gpus": 0},
    user_config=defaults(EncoderSettings),
    health_check_period_s=10,
)
class EncoderDeployment:
    """The frozen encoder behind a handle: ``describe()``, and the batched ``embed_slices(EncoderCall)``."""

    def __init__(self) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.settings: EncoderSettings | None = None
        self.loaded: LoadedEncoder | None = None

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        settings = parse_settings(EncoderSettings, user_config, DEPLOYMENT)
        ongoing = serve.get_replica_context()._deployment_config.max_ongoing_requests
        if ongoing < settings.max_batch_size:
            raise ValueError(f"deployment {DEPLOYMENT}: max_ongoing_requests {ongoing} is below user_config "
                             f"max_batch_size {settings.max_batch_size}, so no batch could ever fill; raise it")
        if self.settings is None or (settings.model, settings.tracking_uri) != (self.settings.model, self.settings.tracking_uri):
            self.loaded = load_encoder(settings, self.device)
        self.embed_slices.set_max_batch_size(settings.max_batch_size)
        self.embed_slices.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self.settings = settings

    def check_health(self) -> None:
        if self.loaded is None:
            raise RuntimeError(f"deployment {DEPLOYMENT} has no encoder loaded")

    def describe(self) -> dict[str, Any]:
        """The loaded encoder: reference, registry name and version, weights digest, preprocessing spec."""
        return dict(self.loaded.description)

    @serve.batch(max_batch_size=EncoderSettings.max_batch_size, batch_wait_timeout_s=EncoderSettings.batch_wait_timeout_s)
    async def embed_slices(self, calls: list[EncoderCall]) -> list[SliceEmbeddings]:
        loaded, forward = self.loaded, self.settings.forward_batch_size
        # in a thread, so that the next batch gathers while this one runs
        outputs = await asyncio.to_thread(encode, loaded.encoder, calls, forward)
        digest = loaded.description["weights_sha256"]
        return [SliceEmbeddings(cls, patch_mean, digest) for cls, patch_mean in outputs]
