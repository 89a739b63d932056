"""``braindino serve``: run the service on this machine's Ray (or the cluster in $RAY_ADDRESS) until interrupted.

    braindino serve                                   # models:/braindino-encoder@champion on 127.0.0.1:8000
    braindino serve --set encoder.model=models:/braindino-encoder@candidate --set http.port=8080
    braindino serve --set "heads=[bundled-sequence, bundled-tissue]"   # with their heads (@champion)

The defaults are the ones the Serve config in configs/serve/ carries; ``--set`` changes any of them
(``--print-config`` lists them). The encoder takes one whole GPU when this machine has one. The bearer
token comes from $BRAINDINO_SERVE_TOKEN or $BRAINDINO_SERVE_TOKEN_FILE; on a local Ray without either,
one is generated and printed. Stop with Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
from dataclasses import dataclass, field, replace

from serving.auth import TOKEN_ENV, TOKEN_FILE_ENV

EXAMPLES = """  braindino serve                        (models:/braindino-encoder@champion on 127.0.0.1:8000)
  braindino serve --set encoder.model=models:/braindino-encoder@candidate --set http.port=8080
  braindino serve --set "heads=[bundled-sequence, bundled-tissue]"   (with their heads, @champion)"""
from serving.settings import EncoderSettings, IngressSettings


@dataclass(frozen=True)
class HttpOptions:
    host: str = "127.0.0.1"  # 0.0.0.0 to listen on every interface
    port: int = 8000


@dataclass(frozen=True)
class ServeJobConfig:
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    ingress: IngressSettings = field(default_factory=IngressSettings)
    http: HttpOptions = field(default_factory=HttpOptions)
    encoder_gpus: int = -1  # whole GPUs for the encoder: -1 takes one when this machine has one, else 0
    heads: list[str] = field(default_factory=list)  # tasks whose heads to serve: models:/braindino-head-TASK@head_alias
    head_alias: str = "champion"


def ensure_token() -> None:
    """A token for a local run: keep the configured one, else generate one (replicas inherit the environment)."""
    if os.environ.get(TOKEN_ENV) or os.environ.get(TOKEN_FILE_ENV):
        return
    if os.environ.get("RAY_ADDRESS"):
        from pipelines.failures import UserFacingError

        raise UserFacingError(f"no API token: set {TOKEN_ENV} (or {TOKEN_FILE_ENV}) in the cluster's environment "
                              "and in this shell: the Serve replicas read it there")
    os.environ[TOKEN_ENV] = secrets.token_urlsafe(32)
    from pipelines.console import console

    console().warn(f"no token configured; this run accepts: export {TOKEN_ENV}={os.environ[TOKEN_ENV]}")


def encoder_gpus(config: ServeJobConfig) -> int:
    if config.encoder_gpus >= 0:
        return config.encoder_gpus
    import torch

    return 1 if torch.cuda.is_available() else 0


def run(config: ServeJobConfig) -> None:
    from ray import serve

    from pipelines.console import console
    from pipelines.jobs import connect_ray
    from pipelines.registry import head_model_name
    from serving.app import APP_NAME, build_app
    from serving.heads import HeadSettings, build_head_app, head_application

    out = console()
    url = f"http://{config.http.host}:{config.http.port}"
    out.intro(f"serve {config.encoder.model} on {url}", {"heads": ", ".join(config.heads) or "none",
                                                       "MLflow": config.encoder.resolved_tracking_uri()})
    ensure_token()
    connect_ray()
    encoder = replace(config.encoder, tracking_uri=config.encoder.resolved_tracking_uri())
    gpus = encoder_gpus(config)
    serve.start(http_options={"host": config.http.host, "port": config.http.port})
    serve.run(build_app(encoder, config.ingress, encoder_options={"ray_actor_options": {"num_cpus": 1, "num_gpus": gpus}}),
              name=APP_NAME, route_prefix="/")
    if config.heads:
        serve.run_many([serve.RunTarget(build_head_app(HeadSettings(
            task=task, model=f"models:/{head_model_name(task)}@{config.head_alias}", tracking_uri=encoder.tracking_uri)),
            name=head_application(task), route_prefix=None) for task in config.heads])
    out.say(f"[serve] {encoder.model} on {'1 GPU' if gpus else 'CPU'}, heads {config.heads}; API at {url}/v1, "
            f"OpenAPI at {url}/openapi.json")
    out.say(f"[serve] try: braindino embed SCAN.nii.gz --url {url}   (Ctrl-C stops)")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    out.say("[serve] shutting down")
    serve.shutdown()
    out.summary({"served": f"{encoder.model} at {url}/v1", "heads": ", ".join(config.heads) or "none"})


def main(argv=None) -> None:
    from pipelines.jobs import run_job

    run_job("braindino serve", "Run the service on this machine's Ray (or the cluster in $RAY_ADDRESS) until "
            "interrupted; defaults come from the Serve config in configs/serve/.", ServeJobConfig, run, argv, EXAMPLES)
