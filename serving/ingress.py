"""The HTTP ingress: FastAPI under ``/v1`` (OpenAPI at ``/openapi.json``), decoding uploads before anything is batched.

Routes: ``POST /v1/embed``, ``POST /v1/predict/{task}``, ``POST /v1/segment/{task}``, ``GET /v1/models``
(bearer token required), ``GET /healthz`` (the ingress answers) and ``GET /readyz`` (the encoder is loaded
and reachable), both without a token. Heads run as Serve applications of their own (``head-TASK``,
``serving/heads.py``), found by name when a request names their task. An upload is
read within the size limit, decoded and preprocessed here, in a bounded thread pool, so the encoder's
batches only ever hold valid input; every refusal is a 4xx with ``{"error", "detail"}``.

Two constraints of Serve's class-based FastAPI view: no ``from __future__ import annotations`` (FastAPI must
see the routes' real annotations, such as ``Request``), and everything a route calls by name is defined
above the class (``@serve.ingress`` freezes the routes, with the module names they use, when it runs).
"""

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import json

from fastapi import Depends, FastAPI, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from braindino.features import VolumeInput, volume_input
from braindino.volumes import PreprocessSpec
from serving import heads
from serving.answers import embedding_answer, encoder_card, head_card, nifti_gz, prediction_answer
from serving.auth import bearer_token, require_tokens
from serving.encoder import EncodedSlices, EncoderCall
from serving.errors import ApiError, api_error_response, invalid_request_response
from serving.scans import DecodedScan, decode_scan
from serving.settings import IngressSettings, defaults, parse_settings
from serving.uploads import UPLOAD_BODY, read_upload

DEPLOYMENT = "Ingress"
API_VERSION = "v1"
AUTH = [Depends(bearer_token)]
READY_TIMEOUT_S = 5.0
TASK = Path(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="a task name, as GET /v1/models lists them")
NIFTI_RESPONSE = {200: {"content": {"application/gzip": {}}, "description": "the label volume (.nii.gz) on the "
                        "scan's grid and affine; the header X-BrainDINO-Models names the models and the label names"}}

api = FastAPI(
    title="BrainDINO", version=API_VERSION,
    description="Brain-MRI embeddings from the frozen BrainDINO encoder. Send 'Authorization: Bearer <token>' "
                "on every /v1 route. Research use only: not a medical device.",
)
api.add_exception_handler(ApiError, api_error_response)
api.add_exception_handler(RequestValidationError, invalid_request_response)


def failure(application: Any) -> str:
    """Why a Serve application is not running: the last line (the error itself) of each unhealthy deployment's
    message, else the application's own message."""
    messages = [d.message for d in application.deployments.values() if d.status != "HEALTHY" and d.message]
    lines = [message.strip().splitlines()[-1] for message in messages or [application.message or ""] if message.strip()]
    return "; ".join(lines)


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

    async def decode(self, filename: str, raw: bytes, description: dict[str, Any]) -> DecodedScan:
        spec = PreprocessSpec.from_json(description["preprocess"])
        return await asyncio.get_running_loop().run_in_executor(
            self.decoders, decode_scan, filename, raw, spec, self.settings.policy)

    async def encode_upload(self, request: Request) -> tuple[DecodedScan, VolumeInput, EncodedSlices, dict[str, Any]]:
        """The upload, its slices and their embeddings; decoded again if the encoder was swapped meanwhile."""
        filename, raw = await read_upload(request, self.settings.max_upload_bytes)
        for attempt in range(2):
            description = await self.encoder_description(refresh=attempt > 0)
            decoded = await self.decode(filename, raw, description)
            spec = PreprocessSpec.from_json(description["preprocess"])
            inputs = volume_input(decoded.volume, spec, self.settings.slices_per_volume)
            output = await self.encoder.encode_slices.remote(EncoderCall(inputs.slices.numpy()))
            if output.weights_sha256 == description["weights_sha256"]:
                return decoded, inputs, output, description
        raise ApiError(503, "encoder_changing", "the encoder was replaced while this request ran; send it again")

    async def head_applications(self) -> dict[str, Any]:
        """Task -> Serve status of every head application (``head-TASK``)."""
        status = await asyncio.to_thread(serve.status)
        return {name.removeprefix(heads.APP_PREFIX): app for name, app in status.applications.items()
                if name.startswith(heads.APP_PREFIX)}

    async def head(self, task: str) -> DeploymentHandle:
        """The running head of ``task``: 404 when none is deployed, 503 while it is not running."""
        applications = await self.head_applications()
        if task not in applications:
            raise ApiError(404, "unknown_task", f"no head serves task {task!r}; deployed tasks: {sorted(applications)}")
        if applications[task].status != "RUNNING":
            raise ApiError(503, "head_unavailable", f"the head of task {task!r} is {applications[task].status}: "
                                                    f"{failure(applications[task])}")
        return serve.get_deployment_handle(heads.DEPLOYMENT, heads.head_application(task))

    async def ask_head(self, task: str, route: str, request: Request) -> tuple[DecodedScan, heads.HeadAnswer, dict[str, Any]]:
        """Decode the upload and hand its volume to the head of ``task`` (which asks the encoder for its features)."""
        head = await self.head(task)
        filename, raw = await read_upload(request, self.settings.max_upload_bytes)
        description = await self.encoder_description()
        decoded = await self.decode(filename, raw, description)
        answer = await getattr(head, route).remote(decoded.volume)
        if isinstance(answer, heads.Refusal):
            raise ApiError(answer.status, answer.code, answer.detail)
        return decoded, answer, description

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
        listed = []
        for task, application in sorted((await self.head_applications()).items()):
            if application.status == "RUNNING":
                listed.append({**await serve.get_deployment_handle(heads.DEPLOYMENT, heads.head_application(task))
                               .describe.remote(), "status": application.status})
            else:
                listed.append({"task": task, "status": application.status, "message": failure(application)})
        return {"api_version": API_VERSION, "encoder": description, "heads": listed}

    @api.post("/v1/embed", dependencies=AUTH, tags=["encoder"], openapi_extra=UPLOAD_BODY)
    async def embed(self, request: Request, tokens: Literal["cls", "cls+patch_mean"] = "cls",
                    per_slice: bool = False) -> dict[str, Any]:
        """A scan -> its volume embedding (the mean of its slices' embeddings); ``per_slice`` adds each slice's."""
        decoded, inputs, output, description = await self.encode_upload(request)
        return embedding_answer(decoded, inputs, output, description, tokens, per_slice)

    @api.post("/v1/predict/{task}", dependencies=AUTH, tags=["heads"], openapi_extra=UPLOAD_BODY)
    async def predict(self, request: Request, task: str = TASK) -> dict[str, Any]:
        """A scan -> the task head's output: class probabilities with their labels, a value with its unit, or a risk."""
        decoded, answer, description = await self.ask_head(task, "predict", request)
        return prediction_answer(decoded, answer.card, answer.result, description)

    @api.post("/v1/segment/{task}", dependencies=AUTH, tags=["heads"], openapi_extra=UPLOAD_BODY,
              response_class=Response, responses=NIFTI_RESPONSE)
    async def segment(self, request: Request, task: str = TASK) -> Response:
        """A scan -> a NIfTI label volume on the scan's own grid and affine."""
        decoded, answer, description = await self.ask_head(task, "segment", request)
        models = {"task": task, "head": head_card(answer.card), "encoder": encoder_card(description),
                  "labels": answer.result.names}
        content = await asyncio.to_thread(nifti_gz, answer.result)
        return Response(content, media_type="application/gzip", headers={
            "Content-Disposition": f'attachment; filename="{task}-labels.nii.gz"', "X-BrainDINO-Models": json.dumps(models)})

