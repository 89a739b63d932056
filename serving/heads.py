"""Task heads: one light deployment per head, each in a Serve application of its own (``head-TASK``).

A head never holds an encoder: it asks the encoder deployment (application ``encoder_app``) through its
handle for the features its export names (CLS or CLS + mean patch token of evenly spaced slices, or the
patch tokens of chosen blocks), then runs its small module. Deploying a head is adding one application to
the Serve config; the encoder keeps running. A head refuses to start when the encoder's weights digest is
not the one it was trained on (the message names both), and refuses any features whose digest differs.
``configs/serve/head.yaml`` is what ``serve build serving.heads:app`` writes: the template of one head's
application.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
from dataclasses import dataclass
from typing import Any

import torch
from ray import serve
from ray.serve import Application

from braindino.features import VolumeFeatures, volume_input
from braindino.heads import LabelVolume, TaskHead
from braindino.volumes import CanonicalVolume
from pipelines.registry import fetch_head, head_model_name
from serving.encoder import DEPLOYMENT as ENCODER_DEPLOYMENT
from serving.encoder import EncoderCall
from serving.settings import defaults, parse_settings

DEPLOYMENT = "Head"
APP_PREFIX = "head-"  # the application serving task TASK is head-TASK


def head_application(task: str) -> str:
    return f"{APP_PREFIX}{task}"


@dataclass(frozen=True)
class HeadSettings:
    """One head deployment: its task, where its export comes from, and the application holding the encoder."""

    task: str = ""  # required: the task name (registry model braindino-head-TASK)
    model: str = ""  # empty: models:/braindino-head-TASK@champion; or models:/NAME/VERSION, or an export folder
    tracking_uri: str = ""  # empty: $MLFLOW_TRACKING_URI, else the local sqlite store under .local/
    encoder_app: str = "braindino"  # the Serve application whose Encoder deployment the head reads

    def __post_init__(self) -> None:
        if not self.task:
            raise ValueError("task is required: the name of the head's task (as registered, braindino-head-TASK)")

    @property
    def reference(self) -> str:
        return self.model or f"models:/{head_model_name(self.task)}@champion"


@dataclass(frozen=True)
class HeadAnswer:
    """What a head returns: its card (task, kind, registry version, digests) and its result."""

    card: dict[str, Any]
    result: dict[str, Any] | LabelVolume


@dataclass(frozen=True)
class Refusal:
    """An answer a head declines to give, for the ingress to return as an API error."""

    status: int
    code: str
    detail: str


def load_task_head(settings: HeadSettings, encoder_sha256: str) -> tuple[TaskHead, dict[str, Any]]:
    """The head export ``settings`` names, refused unless trained on the encoder with ``encoder_sha256``, and its card."""
    from pipelines.tracking import TrackingConfig

    with tempfile.TemporaryDirectory(prefix="braindino-head-") as folder:
        fetched = fetch_head(settings.reference, TrackingConfig(tracking_uri=settings.tracking_uri).resolved_uri(),
                             encoder_sha256, folder)
        head = fetched.load()
    spec = head.spec
    card = {"task": spec.task, "kind": spec.kind, "family": spec.family, "unit": spec.unit,
            "reference": settings.reference, "name": fetched.name, "version": fetched.version,
            "weights_sha256": fetched.weights_sha256, "trained_on": dataclasses.asdict(spec.encoder),
            "features": spec.features.to_dict(), "output": spec.output}
    return head, card


@serve.deployment(
    name=DEPLOYMENT,
    num_replicas=1,
    max_ongoing_requests=16,
    ray_actor_options={"num_cpus": 0.5},
    user_config=defaults(HeadSettings, task="TASK"),
)
class HeadDeployment:
    """A task head: ``describe()``, ``predict(volume)`` (plain data) and ``segment(volume)`` (a label volume)."""

    def __init__(self) -> None:
        self.head: TaskHead | None = None
        self.card: dict[str, Any] = {}
        self.encoder = None

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        settings = parse_settings(HeadSettings, user_config, DEPLOYMENT)
        encoder = serve.get_deployment_handle(ENCODER_DEPLOYMENT, settings.encoder_app)
        description = await encoder.describe.remote()
        self.head, self.card = await asyncio.to_thread(load_task_head, settings, description["weights_sha256"])
        self.encoder = encoder

    def check_health(self) -> None:
        if self.head is None:
            raise RuntimeError(f"deployment {DEPLOYMENT} has no head loaded")

    def describe(self) -> dict[str, Any]:
        return dict(self.card)

    async def features(self, volume: CanonicalVolume) -> tuple[VolumeFeatures, str]:
        """The features this head reads for ``volume``, from the encoder deployment, and their weights digest."""
        spec = self.head.spec
        inputs = volume_input(volume, self.head.preprocess, spec.features.slices_per_volume)
        out = await self.encoder.encode_slices.remote(EncoderCall(inputs.slices.numpy(), spec.features.blocks))
        blocks = torch.from_numpy(out.blocks) if out.blocks is not None else None
        features = VolumeFeatures(inputs.z, torch.from_numpy(out.cls), torch.from_numpy(out.patch_mean), blocks, out.grid)
        return features, out.weights_sha256

    def wrong_route(self, route: str) -> Refusal | None:
        spec = self.head.spec
        if (route == "segment") == (spec.kind == "segmentation"):
            return None
        right = "segment" if spec.kind == "segmentation" else "predict"
        return Refusal(409, "wrong_route", f"task {spec.task!r} is a {spec.kind} head: POST /v1/{right}/{spec.task}")

    def foreign_features(self, digest: str) -> Refusal | None:
        trained_on = self.head.spec.encoder.weights_sha256
        if digest == trained_on:
            return None
        return Refusal(409, "encoder_mismatch", f"head {self.head.spec.task!r} was trained on encoder weights sha256 "
                                                f"{trained_on}; the deployed encoder has {digest}. Register a head "
                                                "trained on the deployed encoder")

    async def predict(self, volume: CanonicalVolume) -> HeadAnswer | Refusal:
        """Class probabilities with their labels, a value with its unit, or a risk score (per volume or per slice)."""
        if refusal := self.wrong_route("predict"):
            return refusal
        features, digest = await self.features(volume)
        return self.foreign_features(digest) or HeadAnswer(self.card, self.head.answer(features))

    async def segment(self, volume: CanonicalVolume) -> HeadAnswer | Refusal:
        """The label volume on the grid and affine the scan came in on."""
        if refusal := self.wrong_route("segment"):
            return refusal
        features, digest = await self.features(volume)
        if refusal := self.foreign_features(digest):
            return refusal
        return HeadAnswer(self.card, await asyncio.to_thread(self.head.segment, features, volume))


def build_head_app(settings: HeadSettings, options: dict[str, Any] | None = None) -> Application:
    """One head's application (deploy it as ``head_application(settings.task)``, ``route_prefix=None``)."""
    return HeadDeployment.options(user_config=dataclasses.asdict(settings), **(options or {})).bind()


app = HeadDeployment.bind()
