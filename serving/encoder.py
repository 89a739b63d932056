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
    """One request's input: preprocessed slices ``[S, 1, size, size]`` float32, and the blocks whose patch
    tokens it needs (a segmentation head's; none for embeddings)."""

    slices: np.ndarray
    blocks: tuple[int, ...] = ()


@dataclass(frozen=True)
class EncodedSlices:
    """Per-slice outputs: CLS and mean patch token ``[S, D]``, the requested blocks' patch tokens
    ``[S, n_blocks, h*w, D]`` (None without blocks), the patch grid, and the digest of the weights that made them."""

    cls: np.ndarray
    patch_mean: np.ndarray
    blocks: np.ndarray | None
    grid: tuple[int, int]
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


def encode(encoder: Encoder, calls: list[EncoderCall], forward_batch_size: int, digest: str) -> list[EncodedSlices]:
    """Every call's outputs: the calls asking for the same blocks run as one concatenated batch, split back after."""
    outputs: dict[int, EncodedSlices] = {}
    for blocks in dict.fromkeys(call.blocks for call in calls):
        group = [i for i, call in enumerate(calls) if call.blocks == blocks]
        slices = torch.from_numpy(np.concatenate([calls[i].slices for i in group]))
        tokens = encoder.encode_tokens(slices, blocks, forward_batch_size)
        bounds = np.cumsum([len(calls[i].slices) for i in group])[:-1]
        parts = [np.split(t.numpy(), bounds) if t is not None else [None] * len(group)
                 for t in (tokens.cls, tokens.patch_mean, tokens.blocks)]
        for i, cls, patch_mean, block_tokens in zip(group, *parts):
            outputs[i] = EncodedSlices(cls, patch_mean, block_tokens, tokens.grid, digest)
    return [outputs[i] for i in range(len(calls))]


@serve.deployment(
    name=DEPLOYMENT,
    num_replicas=1,
    max_ongoing_requests=16,  # at least max_batch_size, or batches never fill (the default of 5 caps them at 5)
    ray_actor_options={"num_cpus": 1, "num_gpus": 0},
    user_config=defaults(EncoderSettings),
    health_check_period_s=10,
)
class EncoderDeployment:
    """The frozen encoder behind a handle: ``describe()``, and the batched ``encode_slices(EncoderCall)``."""

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
        self.encode_slices.set_max_batch_size(settings.max_batch_size)
        self.encode_slices.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self.settings = settings

    def check_health(self) -> None:
        if self.loaded is None:
            raise RuntimeError(f"deployment {DEPLOYMENT} has no encoder loaded")

    def describe(self) -> dict[str, Any]:
        """The loaded encoder: reference, registry name and version, weights digest, preprocessing spec."""
        return dict(self.loaded.description)

    @serve.batch(max_batch_size=EncoderSettings.max_batch_size, batch_wait_timeout_s=EncoderSettings.batch_wait_timeout_s)
    async def encode_slices(self, calls: list[EncoderCall]) -> list[EncodedSlices]:
        loaded = self.loaded
        # in a thread, so that the next batch gathers while this one runs
        return await asyncio.to_thread(encode, loaded.encoder, calls, self.settings.forward_batch_size,
                                       loaded.description["weights_sha256"])
