"""The Serve application: ``serve run serving.app:app`` locally, ``serve deploy configs/serve/braindino.yaml`` on a cluster.

``app`` (CPU replicas) and ``gpu_app`` (the encoder on one whole GPU) are built applications, because
``serve build`` accepts nothing else; ``configs/serve/braindino.yaml`` and ``braindino-gpu.yaml`` are what
``serve build`` writes for them (the application renamed ``braindino``). ``build_app`` binds the same
graph with other settings and resources (``braindino serve``, the tests, the benchmark).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ray.serve import Application

from serving.encoder import EncoderDeployment
from serving.ingress import Ingress
from serving.settings import EncoderSettings, IngressSettings

APP_NAME = "braindino"


def build_app(encoder: EncoderSettings | None = None, ingress: IngressSettings | None = None,
              encoder_options: dict[str, Any] | None = None, ingress_options: dict[str, Any] | None = None) -> Application:
    """The ingress bound to the encoder, each with its ``user_config`` and optional deployment options."""
    encoder_node = EncoderDeployment.options(
        user_config=dataclasses.asdict(encoder or EncoderSettings()), **(encoder_options or {})).bind()
    return Ingress.options(
        user_config=dataclasses.asdict(ingress or IngressSettings()), **(ingress_options or {})).bind(encoder_node)


app = build_app()
# On a GPU a forward pass should span the whole batch of requests (8 x 64 slices), or batching gains nothing.
gpu_app = build_app(EncoderSettings(max_batch_size=16, forward_batch_size=1024),
                    encoder_options={"ray_actor_options": {"num_cpus": 1, "num_gpus": 1}, "max_ongoing_requests": 32},
                    ingress_options={"max_ongoing_requests": 32})
