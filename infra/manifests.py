"""Check the Kubernetes manifests under ``infra/k8s/`` before they reach a cluster, offline.

- KubeRay kinds (``ray.io/v1``) against the CRD schemas of KubeRay v1.7.0, made strict: the CRDs do
  not forbid unknown fields (the API server drops them silently), so every object schema that lists
  its properties gets ``additionalProperties: false`` here and a misspelt key is an error;
- Kubernetes' own kinds against the strict schemas that ``kubernetes-validate`` ships (offline);
- strings both leave free (``submissionMode``, ``concurrencyPolicy``, toleration operators, ...)
  against the values their controllers accept, and ``rayStartParams`` against ``ray start``'s options;
- what the manifests name in this repository (``infra.references``).

    python -m infra.manifests [FILE ...]     # every manifest by default; one line per problem, exit 1
"""

from __future__ import annotations

import copy
import json
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Iterator

import yaml

from infra.references import reference_problems

K8S = Path(__file__).resolve().parent / "k8s"
KUBERAY_SCHEMAS = K8S / "schemas" / "kuberay-v1.7.0"
KUBERAY_FILES = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices",
                 "RayCronJob": "raycronjobs"}
KUBERNETES_VERSION = "1.32"  # the oldest Kubernetes the manifests target

# Custom resources' own metadata: the CRDs leave it an open object.
CUSTOM_RESOURCE_METADATA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"},
        "generateName": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*)?-$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "oneOf": [{"required": ["name"]}, {"required": ["generateName"]}],
}

SERVICE_TYPES = {"ClusterIP", "NodePort", "LoadBalancer", "ExternalName"}
# Field path suffixes ("*" stands for one list item) -> the values the controllers accept.
ALLOWED: dict[tuple[str, ...], set[str]] = {
    ("submissionMode",): {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"},
    ("concurrencyPolicy",): {"Allow", "Forbid", "Replace"},
    ("restartPolicy",): {"Always", "OnFailure", "Never"},
    ("imagePullPolicy",): {"Always", "IfNotPresent", "Never"},
    ("managedBy",): {"ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"},
    ("serviceType",): SERVICE_TYPES,
    ("headService", "spec", "type"): SERVICE_TYPES,
    ("serveService", "spec", "type"): SERVICE_TYPES,
    ("tolerations", "*", "operator"): {"Exists", "Equal"},
    ("tolerations", "*", "effect"): {"NoSchedule", "PreferNoSchedule", "NoExecute"},
    ("matchExpressions", "*", "operator"): {"In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"},
    ("ports", "*", "protocol"): {"TCP", "UDP", "SCTP"},
    ("emptyDir", "medium"): {"", "Memory"},
}
# Paths from the document root whose allowed values depend on the kind.
ALLOWED_BY_KIND: dict[str, dict[tuple[str, ...], set[str]]] = {
    "Service": {("spec", "type"): SERVICE_TYPES},
    "RayService": {("spec", "upgradeStrategy", "type"): {"NewCluster", "NewClusterWithIncrementalUpgrade", "None"}},
}


@dataclass(frozen=True)
class Document:
    """One YAML document of a manifest file."""

    path: Path
    index: int
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", "?"))

    def __str__(self) -> str:
        meta = self.body.get("metadata") or {}
        name = meta.get("name") or meta.get("generateName") or "?"
        return f"{self.path.name}#{self.index} {self.kind}/{name}"


def manifest_files(root: Path = K8S) -> list[Path]:
    """Every manifest: the applied ones in ``root`` and the documented options below it (not the schemas)."""
    return sorted(p for p in root.rglob("*.yaml") if "schemas" not in p.relative_to(root).parts)


def load_documents(path: Path) -> list[Document]:
    return [Document(path, i, body) for i, body in enumerate(yaml.safe_load_all(path.read_text())) if body]


def problems(document: Document) -> list[str]:
    """Everything wrong with one document, each line naming the document and the field."""
    found = schema_problems(document.body) + allowed_value_problems(document.body) + ray_start_problems(document.body)
    found += reference_problems(document.body)
    return [f"{document}: {problem}" for problem in found]


def schema_problems(body: dict[str, Any]) -> list[str]:
    """The document against its kind's schema: strict KubeRay schemas, or kubernetes-validate."""
    kind = body.get("kind")
    if not isinstance(kind, str) or not isinstance(body.get("apiVersion"), str):
        return ["apiVersion and kind are required"]
    if body["apiVersion"].startswith("ray.io/"):
        if body["apiVersion"] != "ray.io/v1" or kind not in KUBERAY_FILES:
            return [f"unknown KubeRay kind {body.get('apiVersion')}/{kind} (known: ray.io/v1 {sorted(KUBERAY_FILES)})"]
        return _errors(kuberay_validator(kind), body)
    validator = core_validator(body["apiVersion"], kind)
    if validator is None:
        return [f"kubernetes-validate has no schema for {body['apiVersion']}/{kind} in Kubernetes {KUBERNETES_VERSION}"]
    return _errors(validator, body)


@cache
def core_validator(api_version: str, kind: str):
    """A validator for a Kubernetes kind from the strict schemas that kubernetes-validate ships.

    What ``kubernetes_validate.validate(body, version, strict=True)`` does, with the schemas loaded
    once per kind and every error reported rather than the first.
    """
    import jsonschema
    from kubernetes_validate.utils import schema_contents
    from referencing import Registry, Resource

    folder = f"kubernetes-json-schema/v{KUBERNETES_VERSION}.0-local-strict"
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)  # apps/v1 -> apps-v1, v1 -> v1
    try:
        schema = schema_contents(f"{folder}/{kind.lower()}-{group}.json", KUBERNETES_VERSION)
    except FileNotFoundError:
        return None
    definitions = schema_contents(f"{folder}/_definitions.json", KUBERNETES_VERSION)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


@cache
def kuberay_validator(kind: str):
    """A validator for ``kind`` with the strict schema; a missing schema file is an error, never a pass."""
    import jsonschema

    path = KUBERAY_SCHEMAS / f"{KUBERAY_FILES[kind]}.v1.json"
    if not path.is_file():
        raise FileNotFoundError(f"the KubeRay schema for {kind} is missing: {path} (see {KUBERAY_SCHEMAS}/SOURCE.md)")
    schema = strict(json.loads(path.read_text()))
    schema["properties"]["metadata"] = CUSTOM_RESOURCE_METADATA
    return jsonschema.Draft202012Validator(schema)


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` where every object schema that lists properties forbids any other key.

    Schemas marked ``x-kubernetes-preserve-unknown-fields`` and those that already say what else is
    allowed are left as they are.
    """
    schema = copy.deepcopy(schema)

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for key, value in node.items():
                if key == "properties":
                    for child in value.values():
                        close(child)
                elif key != "enum":
                    close(value)
        elif isinstance(node, list):
            for item in node:
                close(item)

    close(schema)
    return schema


def allowed_value_problems(body: dict[str, Any]) -> list[str]:
    """String fields whose value no controller accepts, though the schema lets any string through."""
    by_kind = ALLOWED_BY_KIND.get(str(body.get("kind")), {})
    found = []
    for path, value in _leaves(body):
        pattern = tuple("*" if isinstance(part, int) else part for part in path)
        allowed = by_kind.get(pattern) or next((v for suffix, v in ALLOWED.items() if pattern[-len(suffix):] == suffix), None)
        if allowed is not None and value not in allowed:
            found.append(f"{_dotted(path)}: {value!r} is not one of {sorted(allowed)}")
    return found


def ray_start_problems(body: dict[str, Any]) -> list[str]:
    """``rayStartParams`` keys that ``ray start`` has no option for (KubeRay passes each as ``--KEY``)."""
    options = ray_start_options()
    return [f"{_dotted(path)}: `ray start` has no option --{path[-1]}"
            for path, _ in _leaves(body, inside="rayStartParams") if path[-1] not in options]


@cache
def ray_start_options() -> frozenset[str]:
    from ray.scripts.scripts import start

    return frozenset(opt[2:] for param in start.params for opt in param.opts if opt.startswith("--"))


def _errors(validator, body: dict[str, Any]) -> list[str]:
    errors = sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{_dotted(error.absolute_path)}: {error.message}" for error in errors]


def _leaves(node: Any, path: tuple = (), inside: str | None = None) -> Iterator[tuple[tuple, Any]]:
    """(path, value) of every scalar; with ``inside``, only the keys of mappings found under that key."""
    if isinstance(node, dict):
        for key, value in node.items():
            if inside is not None and path and path[-1] == inside:
                yield (*path, key), value
            else:
                yield from _leaves(value, (*path, key), inside)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, (*path, i), inside)
    elif inside is None:
        yield path, node


def _dotted(path) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path).replace(".[", "[") or "(root)"


def main(argv: list[str] | None = None) -> int:
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)] or manifest_files()
    found = [line for path in paths for document in load_documents(path) for line in problems(document)]
    print("\n".join(found) or f"{len(paths)} manifest files: no problems")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
