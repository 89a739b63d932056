"""What a manifest names in this repository: job scripts, configs, images and secrets.

Pods run the image built from ``infra/image/Dockerfile`` with ``/app`` (the repository's folders) as
their working directory, so a manifest names scripts and configs by their repository path. Images
are ``braindino:<project version>-<variant>``, a variant being one the Dockerfile builds (``cuda``
for containers that request GPUs, ``cpu`` for the rest).
"""

from __future__ import annotations

import re
import shlex
import tomllib
from functools import cache
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "infra" / "image" / "Dockerfile"
IMAGE_NAME = "braindino"
GPU_RESOURCE = "nvidia.com/gpu"
REPO_PATH = re.compile(r"^(?:pipelines|configs|serving|ingest|braindino|infra)/[\w./-]+$")
SECRET_NAMES = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL|_URI$|_URL$")
PLAIN_URLS = {"MLFLOW_TRACKING_URI"}  # a Service address, not a credential


def reference_problems(body: dict[str, Any]) -> list[str]:
    return file_problems(body) + image_problems(body) + secret_problems(body)


def file_problems(body: dict[str, Any]) -> list[str]:
    """Scripts and configs that commands and entrypoints name but the repository lacks."""
    return [f"{where}: names {token}, which is not a file in the repository"
            for where, argv in commands(body) for token in argv
            if REPO_PATH.match(token) and not (ROOT / token).is_file()]


def image_problems(body: dict[str, Any]) -> list[str]:
    found = []
    for where, container in containers(body):
        wanted = image(variant="cuda" if GPU_RESOURCE in _requested(container) else "cpu")
        if container.get("image") != wanted:
            found.append(f"{where}.image: {container.get('image')!r}; this repository builds {wanted!r} for it "
                         f"(variants {sorted(image_variants())} of {DOCKERFILE.relative_to(ROOT)})")
    return found


def secret_problems(body: dict[str, Any]) -> list[str]:
    """Credentials written into a manifest instead of read from a Secret."""
    found = [f"{where}: a Secret with inline data; create it with kubectl (infra/README.md), never in a manifest"
             for where, node in _walk(body) if isinstance(node, dict) and node.get("kind") == "Secret"]
    for where, container in containers(body):
        for var in container.get("env", []):
            name = var.get("name", "")
            if "value" in var and SECRET_NAMES.search(name) and name not in PLAIN_URLS:
                found.append(f"{where}.env.{name}: a credential as a literal value; use valueFrom.secretKeyRef")
    return found


def secret_refs(body: dict[str, Any]) -> set[tuple[str, str]]:
    """(Secret name, key) of every ``secretKeyRef`` in the document."""
    return {(node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]) for _, node in _walk(body)
            if isinstance(node, dict) and isinstance(node.get("secretKeyRef"), dict)}


def commands(body: dict[str, Any]) -> Iterator[tuple[str, list[str]]]:
    """(where, argv) of every container command and every RayJob entrypoint in the document."""
    for where, node in _walk(body):
        if isinstance(node, dict):
            if isinstance(node.get("entrypoint"), str):
                yield f"{where}.entrypoint", shlex.split(node["entrypoint"])
            if "image" in node and ("command" in node or "args" in node):
                yield where, [*node.get("command", []), *node.get("args", [])]


def job_invocations(body: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(script, its arguments) of each ``python pipelines/<job>.py ...`` the document runs."""
    found = []
    for _, argv in commands(body):
        for i, token in enumerate(argv[:-1]):
            if token == "python" and argv[i + 1].startswith("pipelines/"):
                found.append((argv[i + 1], argv[i + 2:]))
    return found


def containers(body: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for where, node in _walk(body):
        if isinstance(node, list) and where.rsplit(".", 1)[-1] in ("containers", "initContainers"):
            for i, container in enumerate(node):
                yield f"{where}[{i}]", container


def image(variant: str) -> str:
    return f"{IMAGE_NAME}:{project_version()}-{variant}"


@cache
def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@cache
def image_variants() -> frozenset[str]:
    """The ``VARIANT`` build argument's choices: the Dockerfile's ``torch-<variant>`` stages."""
    return frozenset(re.findall(r"^FROM\s+\S+\s+AS\s+torch-(\w+)\s*$", DOCKERFILE.read_text(), re.MULTILINE | re.IGNORECASE))


def _requested(container: dict[str, Any]) -> set[str]:
    resources = container.get("resources", {})
    return {*resources.get("requests", {}), *resources.get("limits", {})}


def _walk(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    yield where or "(root)", node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{where}[{i}]")
