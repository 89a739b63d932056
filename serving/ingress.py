"""The HTTP ingress: FastAPI under ``/v1`` (OpenAPI at ``/openapi.json``), decoding uploads before anything is batched.

Routes: ``POST /v1/embed``, ``GET /v1/models`` (bearer token required), ``GET /healthz`` (the ingress
answers) and ``GET /readyz`` (the encoder is loaded and reachable), both without a token. An upload is
read within the size limit, decoded and preprocessed here, in a bounded thread pool, so the encoder's
batches only ever hold valid input; every refusal is a 4xx with ``{"error", "detail"}``.

(No ``from __future__ import annotations`` here: FastAPI must see the routes' real annotations, such as
``Request``, through Serve's class-based view.)
"""

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from braindino.volumes import PreprocessSpec
from serving.auth import bearer_token, require_tokens
from serving.encoder import EncoderCall, SliceEmbeddings
from serving.errors import ApiError, api_error_response, invalid_request_response
from serving.scans import PreparedScan, prepare_scan
from serving.settings import IngressSettings, defaults, parse_settings
from serving.uploads import UPLOAD_BODY, read_upload

DEPLOYMENT = "Ingress"
API_VERSION = "v1"
AUTH = [Depends(bearer_token)]
READY_TIMEOUT_S = 5.0

api = FastAPI(
    title="BrainDINO", version=API_VERSION,
    description="Brain-MRI embeddings from the frozen BrainDINO encoder. Send 'Authorization: Bearer <token>' "
                "on every /v1 route. Research use only: not a medical device.",
)
api.add_exception_handler(ApiError, api_error_response)
api.add_exception_handler(RequestValidationError, invalid_request_response)


def encoder_card(description: dict[str, Any]) -> dict[str, Any]:
    """What every answer says about the encoder that produced it."""
    return {key: description[key] for key in ("reference", "name", "version", "weights_sha256")}


def embedding_answer(prepared: PreparedScan, output: SliceEmbeddings, description: dict[str, Any],
                     tokens: str, per_slice: bool) -> dict[str, Any]:
    """The volume embedding (mean over the slices, as the offline ``Encoder.encode_volume``), optionally per slice."""
    slices = torch.from_numpy(output.cls if tokens == "cls" else np.concatenate([output.cls, output.patch_mean], axis=1))
    answer = {
        "encoder": encoder_card(description),
        "input": {"format": prepared.format, "canonical_shape": list(prepared.volume.shape),
                  "slices": len(prepared.z)},
        "tokens": tokens,
        "dim": int(slices.shape[1]),
        "embedding": slices.mean(dim=0).tolist(),
    }
    if per_slice:
        answer["per_slice"] = [{"z": int(z), "embedding": row} for z, row in zip(prepared.z, slices.tolist())]
    return answer


@serve.deployment(
    name=DEPLOYMENT,
    max_ongoing_requests=16,  # at least the encoder's max_batch_size, or its batches never fill
    ray_actor_options={"num_cpus": 1},
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8},
    user_config=defaults(IngressSettings),
)
@serve.ingress(api)
class Ingress:
    """Routes requests: decodes uploads, asks the encoder deployment through its handle."""

    def __init__(self, encoder: DeploymentHandle) -> None:
        require_tokens()
        self.encoder = encoder
        self.settings = IngressSettings()
        self.decoders = ThreadPoolExecutor(self.settings.decode_threads, thread_name_prefix="decode")
        self.description: dict[str, Any] | None = None

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        settings = parse_settings(IngressSettings, user_config, DEPLOYMENT)
        if settings.decode_threads != self.settings.decode_threads:
            self.decoders.shutdown(wait=False)
            self.decoders = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        self.settings = settings

    async def encoder_description(self, refresh: bool = False) -> dict[str, Any]:
        if self.description is None or refresh:
            self.description = await self.encoder.describe.remote()
        return self.description

    async def prepare(self, filename: str, raw: bytes, description: dict[str, Any]) -> PreparedScan:
        spec = PreprocessSpec.from_json(description["preprocess"])
        return await asyncio.get_running_loop().run_in_executor(
            self.decoders, prepare_scan, filename, raw, spec, self.settings.policy, self.settings.slices_per_volume)

    async def encode_upload(self, request: Request) -> tuple[PreparedScan, SliceEmbeddings, dict[str, Any]]:
        """The upload's slices and their embeddings; preprocessed again if the encoder was swapped meanwhile."""
        filename, raw = await read_upload(request, self.settings.max_upload_bytes)
        for attempt in range(2):
            description = await self.encoder_description(refresh=attempt > 0)
            prepared = await self.prepare(filename, raw, description)
            output = await self.encoder.embed_slices.remote(EncoderCall(prepared.slices))
            if output.weights_sha256 == description["weights_sha256"]:
                return prepared, output, description
        raise ApiError(503, "encoder_changing", "the encoder was replaced while this request ran; send it again")

    @api.get("/healthz", tags=["health"])
    async def healthz(self) -> dict[str, str]:
        """Liveness: the ingress answers."""
        return {"status": "ok"}

    @api.get("/readyz", tags=["health"])
    async def readyz(self) -> dict[str, str]:
        """Readiness: the encoder is loaded and answers within a few seconds (503 otherwise)."""
        try:
            description = await asyncio.wait_for(self.encoder_description(refresh=True), READY_TIMEOUT_S)
        except Exception as err:  # noqa: BLE001 - any failure to reach the encoder means not ready
            raise ApiError(503, "not_ready", f"the encoder deployment is not answering ({type(err).__name__})") from None
        return {"status": "ready", "encoder_version": description["version"]}

    @api.get("/v1/models", dependencies=AUTH, tags=["models"])
    async def models(self) -> dict[str, Any]:
        """What is deployed: the encoder (version, digest, preprocessing) and the task heads."""
        description = await self.encoder_description(refresh=True)
        return {"api_version": API_VERSION, "encoder": description, "heads": []}

    @api.post("/v1/embed", dependencies=AUTH, tags=["encoder"], openapi_extra=UPLOAD_BODY)
    async def embed(self, request: Request, tokens: Literal["cls", "cls+patch_mean"] = "cls",
                    per_slice: bool = False) -> dict[str, Any]:
        """A scan -> its volume embedding (the mean of its slices' embeddings); ``per_slice`` adds each slice's."""
        prepared, output, description = await self.encode_upload(request)
        return embedding_answer(prepared, output, description, tokens, per_slice)
