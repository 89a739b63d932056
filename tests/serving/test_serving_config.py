"""The Serve configs, settings, token checks and upload naming, without Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from braindino.config import ConfigError
from serving.auth import TOKEN_ENV, TOKEN_FILE_ENV, configured_tokens, require_tokens, token_accepted, NoTokenConfigured
from serving.heads import HeadSettings
from serving.scans import upload_key
from serving.settings import EncoderSettings, IngressSettings, parse_settings

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "serve"


def serve_build(import_path: str, output: Path) -> dict:
    """What ``serve build IMPORT_PATH`` writes, through Ray's own command."""
    from click.testing import CliRunner
    from ray.serve.scripts import cli

    result = CliRunner().invoke(cli, ["build", import_path, "-o", str(output)])
    assert result.exit_code == 0, result.output
    return yaml.safe_load(output.read_text())


@pytest.mark.parametrize("file, import_path, name, route_prefix", [
    ("braindino.yaml", "serving.app:app", "braindino", "/"),
    ("braindino-gpu.yaml", "serving.app:gpu_app", "braindino", "/"),
    ("head.yaml", "serving.heads:app", "head-TASK", None),
])
def test_the_serve_config_is_what_serve_build_writes(file, import_path, name, route_prefix, tmp_path):
    built = serve_build(import_path, tmp_path / "built.yaml")
    kept = yaml.safe_load((CONFIGS / file).read_text())
    (application,) = kept["applications"]
    assert (application.pop("name"), application.pop("route_prefix")) == (name, route_prefix)
    for application in built["applications"]:
        application.pop("name"), application.pop("route_prefix")
    assert kept == built, f"configs/serve/{file} differs from `serve build {import_path}`: rebuild it"


def test_the_rayservice_embeds_what_serve_build_writes(tmp_path):
    """infra/k8s/rayservice.yaml's serveConfigV2 holds the GPU application exactly as ``serve build`` writes it."""
    service = yaml.safe_load((CONFIGS.parents[1] / "infra" / "k8s" / "rayservice.yaml").read_text())
    (embedded,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    (built,) = serve_build("serving.app:gpu_app", tmp_path / "built.yaml")["applications"]
    assert embedded.pop("name") == "braindino"
    built.pop("name")
    assert embedded == built, "infra/k8s/rayservice.yaml's serveConfigV2 differs from `serve build serving.app:gpu_app`"


@pytest.mark.parametrize("file", ["braindino.yaml", "braindino-gpu.yaml"])
def test_batches_can_fill_and_gpus_are_whole(file):
    deployments = {d["name"]: d for d in yaml.safe_load((CONFIGS / file).read_text())["applications"][0]["deployments"]}
    batch = deployments["Encoder"]["user_config"]["max_batch_size"]
    assert deployments["Encoder"]["max_ongoing_requests"] >= batch
    assert deployments["Ingress"]["max_ongoing_requests"] >= batch
    gpus = deployments["Encoder"]["ray_actor_options"].get("num_gpus", 0)
    assert gpus == int(gpus)


def test_settings_errors_name_the_deployment_and_the_key():
    assert parse_settings(EncoderSettings, {"max_batch_size": 4}, "Encoder") == EncoderSettings(max_batch_size=4)
    with pytest.raises(ConfigError, match="user_config of deployment Encoder: unknown key 'max_batch'"):
        parse_settings(EncoderSettings, {"max_batch": 4}, "Encoder")
    with pytest.raises(ConfigError, match="Ingress.*four_d must be one of"):
        parse_settings(IngressSettings, {"four_d": "all"}, "Ingress")
    with pytest.raises(ConfigError, match="max_upload_mb must be > 0"):
        parse_settings(IngressSettings, {"max_upload_mb": 0}, "Ingress")
    with pytest.raises(ConfigError, match="user_config of deployment Head: .*task is required"):
        parse_settings(HeadSettings, {"model": "models:/braindino-head-x/1"}, "Head")
    assert parse_settings(HeadSettings, {"task": "sequence"}, "Head").reference == "models:/braindino-head-sequence@champion"


def test_tokens_come_from_the_environment_and_a_rotatable_file(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)
    with pytest.raises(NoTokenConfigured, match=TOKEN_ENV):
        require_tokens()
    secret = tmp_path / "token"
    secret.write_text("old-token\n\nnew-token\n")
    monkeypatch.setenv(TOKEN_FILE_ENV, str(secret))
    monkeypatch.setenv(TOKEN_ENV, "env-token")
    accepted = configured_tokens()
    assert accepted == ["env-token", "old-token", "new-token"]
    assert all(token_accepted(t, accepted) for t in accepted)
    assert not any(token_accepted(t, accepted) for t in ("", "new-toke", "new-tokenx", "NEW-TOKEN"))
    monkeypatch.setenv(TOKEN_FILE_ENV, str(tmp_path / "absent"))
    with pytest.raises(NoTokenConfigured, match="cannot be read"):
        configured_tokens()


def test_an_upload_is_named_by_its_format_never_by_the_client():
    assert upload_key("Doe^Jane 1970-01-01.NII.GZ") == "upload.nii.gz"
    assert upload_key("Doe_Jane.mgz") == "upload.mgz"
    assert upload_key("series.zip") == "upload.zip"
    assert upload_key("Doe_Jane") == "upload"
