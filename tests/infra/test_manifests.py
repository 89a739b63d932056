"""The cluster manifests validate against their kinds' schemas, and the validators can fail.

KubeRay kinds go against the repository's copy of the KubeRay v1.7.0 CRD schemas, made strict; core
kinds against kubernetes-validate's strict schemas (offline). Faults planted in copies of every
manifest (each key misspelt in turn, each integer written as a string, free strings given a wrong
value) must each be reported against the field that was changed.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
from pathlib import Path

import pytest
import yaml

from infra import manifests, references
from infra.manifests import Document, load_documents, manifest_files, problems

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = manifest_files()
DOCUMENTS = [doc for path in MANIFESTS for doc in load_documents(path)]
FREE_FORM = {"labels", "annotations", "nodeSelector", "clusterSelector", "matchLabels", "selector", "requests",
             "limits", "rayStartParams"}


def test_every_kind_the_platform_needs_is_there():
    kinds = {(doc.body["apiVersion"], doc.kind) for doc in DOCUMENTS}
    assert {("ray.io/v1", "RayCluster"), ("ray.io/v1", "RayJob"), ("batch/v1", "CronJob"), ("apps/v1", "Deployment"),
            ("v1", "Service"), ("ray.io/v1", "RayCronJob"), ("ray.io/v1", "RayService")} <= kinds
    jobs = {script for doc in DOCUMENTS if doc.kind == "RayJob" for script, _ in references.job_invocations(doc.body)}
    assert jobs == {"pipelines/pretrain.py", "pipelines/evaluate.py"}


@pytest.mark.parametrize("document", DOCUMENTS, ids=str)
def test_manifest_is_valid(document):
    assert problems(document) == []


@pytest.mark.parametrize("document", [d for d in DOCUMENTS if not d.body["apiVersion"].startswith("ray.io/")], ids=str)
def test_core_kinds_also_pass_kubernetes_validate_itself(document):
    import kubernetes_validate

    assert kubernetes_validate.validate(document.body, manifests.KUBERNETES_VERSION, strict=True)


def test_planted_typos_in_manifest_files_fail_the_command_line(tmp_path, capsys):
    """Text edits in copies of the files: a misspelt key, a quoted integer, a wrong mode."""
    edits = {"raycluster.yaml": ("maxReplicas: 16", "maxReplica: 16"),
             "mlflow.yaml": ("replicas: 1", 'replicas: "1"'),
             "rayjob-pretrain.yaml": ("submissionMode: K8sJobMode", "submissionMode: K8sJob"),
             "ingest-cronjob.yaml": ("concurrencyPolicy: Forbid", "concurrencyPolicy: Forbidden")}
    copies = []
    for name, (before, after) in edits.items():
        text = (manifests.K8S / name).read_text()
        assert before in text
        (tmp_path / name).write_text(text.replace(before, after, 1))
        copies.append(str(tmp_path / name))
    assert manifests.main(copies) == 1
    out = capsys.readouterr().out
    assert "'maxReplica' was unexpected" in out and "replicas: '1' is not of type 'integer'" in out
    assert "submissionMode: 'K8sJob' is not one of" in out and "concurrencyPolicy: 'Forbidden' is not one of" in out
    assert manifests.main([str(p) for p in MANIFESTS]) == 0


def test_every_kuberay_kind_has_its_schema_in_the_repository():
    """The schemas CI validates against are the repository's copy: a missing one fails, never skips."""
    for kind, stem in manifests.KUBERAY_FILES.items():
        path = manifests.KUBERAY_SCHEMAS / f"{stem}.v1.json"
        assert path.is_file(), f"{path} is missing"
        assert json.loads(path.read_text())["properties"]["spec"]["type"] == "object"
    assert "Apache-2.0" in (manifests.KUBERAY_SCHEMAS / "SOURCE.md").read_text()


def test_a_missing_schema_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setattr(manifests, "KUBERAY_SCHEMAS", tmp_path)
    manifests.kuberay_validator.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="rayjobs.v1.json"):
            manifests.schema_problems({"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "x"}})
    finally:
        manifests.kuberay_validator.cache_clear()


def test_strict_closes_every_listed_object_and_leaves_open_maps_open():
    schema = {"type": "object", "properties": {
        "a": {"type": "object", "properties": {"b": {"type": "integer"}}},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "raw": {"type": "object", "properties": {"c": {}}, "x-kubernetes-preserve-unknown-fields": True},
        "items": {"type": "array", "items": {"type": "object", "properties": {"d": {"type": "string"}}}}}}
    closed = manifests.strict(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["a"]["additionalProperties"] is False
    assert closed["properties"]["items"]["items"]["additionalProperties"] is False
    assert closed["properties"]["labels"]["additionalProperties"] == {"type": "string"}
    assert "additionalProperties" not in closed["properties"]["raw"]
    assert "additionalProperties" not in schema  # the input is left alone


def test_kubernetes_validate_reads_its_schemas_from_the_installed_package():
    """Offline: the schemas for the targeted Kubernetes version are files inside the package."""
    import kubernetes_validate

    package = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    strict_dir = package / f"v{manifests.KUBERNETES_VERSION}.0-local-strict"
    assert (strict_dir / "cronjob-batch-v1.json").is_file() and (strict_dir / "_definitions.json").is_file()


def _keys(node, path=()):
    """Paths of every key outside free-form maps (labels, resource quantities, ...)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, key)
            if key not in FREE_FORM:
                yield from _keys(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _keys(value, (*path, i))


def _integers(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _integers(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _integers(value, (*path, i))
    elif isinstance(node, int) and not isinstance(node, bool):
        yield path


def _planted(document, change) -> list[str]:
    """``problems`` of a copy of ``document`` changed by ``change(body)``."""
    body = copy.deepcopy(document.body)
    change(body)
    return problems(Document(document.path, document.index, body))


def _parent(body, path):
    for part in path[:-1]:
        body = body[part]
    return body


@pytest.mark.parametrize("document", DOCUMENTS, ids=str)
def test_each_misspelt_key_is_caught(document):
    paths = list(_keys(document.body))
    assert paths
    missed = []
    for path in paths:
        def misspell(body, path=path):
            parent = _parent(body, path)
            parent[f"{path[-1]}x"] = parent.pop(path[-1])

        if not any(f"'{path[-1]}x'" in line or f"--{path[-1]}x" in line or "required" in line
                   for line in _planted(document, misspell)):
            missed.append(".".join(map(str, path)))
    assert missed == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=str)
def test_each_integer_written_as_a_string_is_caught(document):
    for path in _integers(document.body):
        def stringify(body, path=path):
            parent = _parent(body, path)
            parent[path[-1]] = str(parent[path[-1]])

        found = _planted(document, stringify)
        assert any("is not of type 'integer'" in line for line in found), (path, found)


@pytest.mark.parametrize("field, wrong", [("submissionMode", "K8sJob"), ("concurrencyPolicy", "forbid"),
                                          ("restartPolicy", "never"), ("operator", "Exist"), ("effect", "NoSchedul")])
def test_a_free_string_outside_its_allowed_values_is_caught(field, wrong):
    planted = 0
    for document in DOCUMENTS:
        for path in [p for p in _keys(document.body) if p[-1] == field]:
            found = _planted(document, lambda body, path=path: _parent(body, path).__setitem__(path[-1], wrong))
            assert any(f"{field}: {wrong!r} is not one of" in line for line in found), found
            planted += 1
    assert planted, f"no manifest sets {field}"


def test_an_unknown_ray_start_option_or_entrypoint_file_is_caught():
    cluster = next(doc for doc in DOCUMENTS if doc.kind == "RayCluster")
    found = _planted(cluster, lambda body: body["spec"]["headGroupSpec"]["rayStartParams"].update(
        {"num-gpu": "1"}))
    assert any("`ray start` has no option --num-gpu" in line for line in found)
    job = next(doc for doc in DOCUMENTS if doc.kind == "RayJob" and "pretrain/" in doc.body["spec"]["entrypoint"])
    found = _planted(job, lambda body: body["spec"].update(
        entrypoint=body["spec"]["entrypoint"].replace("pretrain/", "pretrian/")))
    assert any("pretrian" in line and "not a file in the repository" in line for line in found)


def test_a_gpu_container_on_the_cpu_image_and_an_inline_credential_are_caught():
    cluster = next(doc for doc in DOCUMENTS if doc.kind == "RayCluster")

    def cpu_image_on_gpus(body):
        gpu_group = next(g for g in body["spec"]["workerGroupSpecs"] if "num-gpus" in g["rayStartParams"])
        gpu_group["template"]["spec"]["containers"][0]["image"] = references.image("cpu")

    assert any("braindino:" in line and "-cuda" in line for line in _planted(cluster, cpu_image_on_gpus))
    server = next(doc for doc in DOCUMENTS if doc.kind == "Deployment")

    def inline_database_url(body):
        env = body["spec"]["template"]["spec"]["containers"][0]["env"]
        next(v for v in env if v["name"] == "MLFLOW_BACKEND_STORE_URI").update(
            value="postgresql://mlflow:hunter2@db/mlflow", valueFrom=None)
        for var in env:
            if var.get("valueFrom") is None:
                var.pop("valueFrom", None)

    found = _planted(server, inline_database_url)
    assert any("MLFLOW_BACKEND_STORE_URI: a credential as a literal value" in line for line in found)


def test_secrets_are_referenced_never_inlined_and_each_is_documented():
    """Object-storage keys, the pseudonym key, the Ray token and the database URL come from Secrets that
    infra/README.md tells the operator to create."""
    refs = set().union(*(references.secret_refs(doc.body) for doc in DOCUMENTS))
    names = {name for name, _ in refs}
    assert {"braindino-object-store", "braindino-pseudonym", "braindino-ray-auth", "braindino-mlflow-db"} <= names
    assert not any(doc.kind == "Secret" for doc in DOCUMENTS)
    readme = (ROOT / "infra" / "README.md").read_text()
    for name, key in sorted(refs):
        assert re.search(rf"kubectl create secret generic {name}\b[^\n]*--from-literal={key}=", readme), (name, key)


def test_gpu_workers_get_gpus_node_selection_tolerations_and_shared_memory():
    cluster = next(doc for doc in DOCUMENTS if doc.kind == "RayCluster").body
    gpu = next(g for g in cluster["spec"]["workerGroupSpecs"] if "num-gpus" in g["rayStartParams"])
    pod = gpu["template"]["spec"]
    container = pod["containers"][0]
    gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    assert gpus == container["resources"]["requests"]["nvidia.com/gpu"] == gpu["rayStartParams"]["num-gpus"]
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    shm = next(v for v in pod["volumes"] if v["name"] in {m["name"] for m in container["volumeMounts"]
                                                          if m["mountPath"] == "/dev/shm"})
    assert shm["emptyDir"]["medium"] == "Memory"
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no tasks on the head
    assert any("num-gpus" not in g["rayStartParams"] for g in cluster["spec"]["workerGroupSpecs"])  # Ray Data CPUs


def test_schedule_forbids_overlapping_runs():
    cronjob = next(doc for doc in DOCUMENTS if doc.kind == "CronJob").body
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert [script for script, _ in references.job_invocations(cronjob)] == ["pipelines/ingestion.py"]


@pytest.mark.parametrize("document", [d for d in DOCUMENTS if references.job_invocations(d.body)], ids=str)
def test_each_job_accepts_the_config_and_overrides_its_manifest_gives_it(document, capsys):
    """The entrypoint's own parser loads the config with the manifest's --set items (--print-config)."""
    for script, args in references.job_invocations(document.body):
        module = importlib.import_module(script.removesuffix(".py").replace("/", "."))
        with pytest.raises(SystemExit) as exited:
            module.main([*args, "--print-config"])
        assert exited.value.code in (0, None), capsys.readouterr()
        printed = yaml.safe_load(capsys.readouterr().out)
        for override in [a for i, a in enumerate(args) if i and args[i - 1] == "--set"]:
            key, value = override.split("=", 1)
            node = printed
            for part in key.split("."):
                node = node[part]
            assert node == yaml.safe_load(value)
