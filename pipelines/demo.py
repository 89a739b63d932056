"""``braindino demo``: local services up, bundled real MRI into a bucket, then each stage in turn."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from braindino.config import load_config
from infra.local.bundled import missing_entries, upload_bundled
from infra.local.derived import upload_tissue_labels
from infra.local.ray_nodes import local_ray_head
from infra.local.services import LocalStack, create_bucket, local_stack
from pipelines.ingestion import IngestConfig
from pipelines.console import console
from pipelines.failures import entry
from pipelines.jobs import run_job, submit_job
from serving.auth import TOKEN_ENV


@dataclass(frozen=True)
class DemoConfig:
    workdir: Path = Path(".local")
    bucket: str = "braindino-raw"
    datasets: dict[str, list[str]] = field(default_factory=lambda: {
        "icbm152": ["icbm2009c_t1", "icbm2009c_t2"],
        "colin27": ["colin27_t1"],
        "heudiconv": ["heudiconv_dwi"],
        "nibabel": ["nibabel_example4d"],
        "pyradiomics": ["pyradiomics_brain1_t1c", "pyradiomics_brain1_tumour", "pyradiomics_brain2_t1c",
                        "pyradiomics_brain2_tumour"],
        "tissue": ["icbm2009a_t1", "colin27_t1bet"],  # with derived tissue labels beside them
    })
    ingest_config: Path = Path("configs/ingest.yaml")  # its datasets: configs/datasets/<name>.yaml
    pretrain_config: Path = Path("configs/pretrain/tiny-cpu.yaml")  # both stages, a few minutes on two cores
    evaluate_config: Path = Path("configs/evaluate/bundled.yaml")  # the candidate vs a random init, heads registered
    serve_config: Path = Path("configs/serve/braindino.yaml")  # deployed with the new encoder, then sent serve_scan
    head_config: Path = Path("configs/serve/head.yaml")  # the application template of each registered head
    serve_scan: str = "icbm2009c_t1"


def say(text: str) -> None:
    console().say(text)


def run(config: DemoConfig) -> None:
    console().intro("the whole platform end to end on local services and bundled real MRI", {
        "workdir": config.workdir.resolve(), "datasets": ", ".join(config.datasets),
        "stages": "ingest, pretrain, evaluate, serve (each a Ray job on a local head)"})
    for item in missing_entries(config.datasets):
        console().warn(f"skipping {item.name}: its source is not installed ({item.install_hint})")
    os.environ.setdefault("BRAINDINO_ENV", "dev")  # the public dev pseudonym key unless a real one is set
    os.environ.setdefault(TOKEN_ENV, secrets.token_urlsafe(24))  # the service's API token; the Ray head inherits it
    with local_stack(config.workdir) as stack:  # the stack puts its S3 keys in the environment
        say(f"[demo] S3 on {stack.store.endpoint_url}; MLflow at {stack.mlflow.tracking_uri}")
        create_bucket(stack.store, config.bucket)
        uploaded = upload_bundled(stack.store, config.bucket, config.datasets)
        if "tissue" in uploaded:
            uploaded["tissue"] += upload_tissue_labels(stack.store, config.bucket, "tissue")
        say(f"[demo] uploaded bundled real MRI to s3://{config.bucket}/raw/")
        for dataset, keys in uploaded.items():
            say(f"  {dataset}: {len(keys)} objects")
        with local_ray_head() as address:  # a cluster as on Kubernetes: it inherits the environment above
            say(f"[demo] Ray head: dashboard and job API at {address}")
            run_ingest_stage(config, stack, address)
            run_pretrain_stage(config, stack, address)
            run_evaluate_stage(config, stack, address)
            run_serve_stage(config, stack, address)
        run_status_stage(config, stack)
        console().summary({"MLflow UI": stack.mlflow.ui_command(), "ingest output": (config.workdir / "ingest").resolve(),
                           "evaluation output": (config.workdir / "evaluate").resolve()})


def tracking_overrides(stack: LocalStack) -> list[str]:
    return [f"tracking.tracking_uri={stack.mlflow.tracking_uri}", f"tracking.artifact_root={stack.mlflow.artifact_root}"]


def run_ingest_stage(config: DemoConfig, stack: LocalStack, address: str) -> None:
    """``ray job submit`` the ingest of the uploaded scans into ``workdir/ingest``; the job prints the summary."""
    output = (config.workdir / "ingest").resolve()
    datasets_dir = load_config(IngestConfig, config.ingest_config).datasets_dir
    say(f"[demo] ingesting s3://{config.bucket}/raw/ into {output}")
    submit_job(address, "ingestion.py", [
        "--config", str(config.ingest_config),
        *(item for name in config.datasets for item in ("--dataset", f"{datasets_dir}/{name}.yaml")),
        "--set", f"ingest.output={output}", "--set", f"ingest.storage.endpoint_url={stack.store.endpoint_url}",
        *(item for override in tracking_overrides(stack) for item in ("--set", override)),
    ])


def run_pretrain_stage(config: DemoConfig, stack: LocalStack, address: str) -> None:
    """``ray job submit`` the tiny two-stage pretraining to the local head; the job registers the encoder."""
    import time

    from mlflow.tracking import MlflowClient

    from pipelines.pretrain import submit
    from pipelines.registry import DIGEST_TAG, ENCODER_MODEL

    name = time.strftime("demo-%Y%m%d-%H%M%S")
    say(f"[demo] pretraining {config.pretrain_config}")
    run_id = submit(address, config.pretrain_config, [
        f"data.manifest={(config.workdir / 'ingest').resolve()}", *tracking_overrides(stack),
        f"checkpoint.storage_path={(config.workdir / 'ray_results').resolve()}",
    ], stack.mlflow.tracking_uri, name)
    say(f"[demo] pretraining run {name}: open http://127.0.0.1:5000 -> experiment braindino-pretrain -> run {run_id}")
    say("[demo]   metrics (loss terms, lr, feature std, images/s, knn_probe_accuracy), artifacts pca/*.png")
    version = MlflowClient(stack.mlflow.tracking_uri).get_model_version_by_alias(ENCODER_MODEL, "candidate")
    say(f"[demo] encoder registered as models:/{ENCODER_MODEL}@candidate (version {version.version}, commit "
          f"{version.tags['git.commit']}, dirty {version.tags['git.dirty']}, weights sha256 {version.tags[DIGEST_TAG]}); "
          "promote with 'braindino register promote --version N'")


def run_evaluate_stage(config: DemoConfig, stack: LocalStack, address: str) -> None:
    """``ray job submit`` the bundled suite: the encoder just registered against a random init of its size."""
    output = (config.workdir / "evaluate").resolve()
    say(f"[demo] evaluating models:/braindino-encoder@candidate with {config.evaluate_config}")
    submit_job(address, "evaluate.py", [
        "--config", str(config.evaluate_config), "--set", f"manifest={(config.workdir / 'ingest').resolve()}",
        "--set", f"storage.endpoint_url={stack.store.endpoint_url}", "--set", f"output={output}",
        "--set", f"features.cache={output / 'features'}",
        *(item for override in tracking_overrides(stack) for item in ("--set", override)),
    ])
    say("[demo] evaluation: experiment braindino-evaluate -> results.md, tasks/*/curves.png, projections, overlays;")
    say("[demo]   heads registered as models:/braindino-head-TASK@candidate (bundled-sequence, bundled-tissue, ...)")


def candidate_heads(tracking_uri: str) -> list[str]:
    """The tasks whose head the evaluation registered as ``braindino-head-TASK@candidate``."""
    from mlflow.tracking import MlflowClient

    from pipelines.registry import HEAD_MODEL_PREFIX

    models = MlflowClient(tracking_uri).search_registered_models(f"name LIKE '{HEAD_MODEL_PREFIX}%'")
    return sorted(m.name.removeprefix(HEAD_MODEL_PREFIX) for m in models if "candidate" in m.aliases)


def demo_serve_config(config: DemoConfig, stack: LocalStack, port: int, tasks: list[str]) -> dict:
    """The Serve config with the @candidate encoder, plus one head application per task (from the head template)."""
    import copy

    import yaml

    from pipelines.registry import head_model_name
    from serving.heads import head_application

    deployed = yaml.safe_load(config.serve_config.read_text())
    deployed["http_options"] = {"host": "127.0.0.1", "port": port}
    (encoder,) = (d for d in deployed["applications"][0]["deployments"] if d["name"] == "Encoder")
    encoder["user_config"].update(model="models:/braindino-encoder@candidate", tracking_uri=stack.mlflow.tracking_uri)
    template = yaml.safe_load(config.head_config.read_text())["applications"][0]
    for task in tasks:
        application = copy.deepcopy(template)
        application["name"] = head_application(task)
        (head,) = application["deployments"]
        head["user_config"].update(task=task, model=f"models:/{head_model_name(task)}@candidate",
                                   tracking_uri=stack.mlflow.tracking_uri)
        head["ray_actor_options"]["num_cpus"] = 0.25  # the demo's head has 4 CPUs for everything
        deployed["applications"].append(application)
    return deployed


def run_serve_stage(config: DemoConfig, stack: LocalStack, address: str) -> None:
    """``serve deploy`` the Serve config with the encoder and heads just registered (@candidate: promotion to
    champion stays a decision for a person), send them a real scan, print what comes back, shut the service down."""
    import subprocess
    import sys

    import yaml

    from infra.local.services import free_port

    serve_cli = str(Path(sys.executable).parent / "serve")
    cli_env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}  # the head runs without Ray auth
    port = free_port()
    tasks = candidate_heads(stack.mlflow.tracking_uri)
    target = (config.workdir / "serve.yaml").resolve()
    target.write_text(yaml.safe_dump(demo_serve_config(config, stack, port, tasks), sort_keys=False))
    say(f"[demo] serve deploy {target}: {config.serve_config} with models:/braindino-encoder@candidate and the "
          f"heads of {tasks or 'no task'} (from {config.head_config})")
    subprocess.run([serve_cli, "deploy", str(target), "--address", address], check=True, env=cli_env)
    try:
        query_service(config, f"http://127.0.0.1:{port}")
    finally:
        subprocess.run([serve_cli, "shutdown", "-y", "--address", address], check=False, env=cli_env)
        say("[demo] service shut down")


def run_status_stage(config: DemoConfig, stack: LocalStack) -> None:
    """``braindino status`` of what the demo built: manifest counts, quarantine, last runs, registered models."""
    from pipelines.status import StatusConfig
    from pipelines.status import run as show_status
    from pipelines.tracking import TrackingConfig

    output = (config.workdir / "ingest").resolve()
    say(f"[demo] braindino status --set output={output} --set tracking.tracking_uri={stack.mlflow.tracking_uri}")
    show_status(StatusConfig(output=str(output), storage=stack.store,
                             tracking=TrackingConfig(tracking_uri=stack.mlflow.tracking_uri)))


def brief(prediction: dict) -> str:
    """A prediction in one short line: per-slice values as their count, range and unit."""
    slices = prediction.get("slices")
    if not slices:
        return str(prediction)
    values = [item["value"] for item in slices if "value" in item]
    if not values:
        return f"{len(slices)} slices: {slices[0]} ..."
    return f"{len(slices)} slices, values {min(values):.3g} to {max(values):.3g} ({slices[0].get('unit', '')})"


def settled_heads(client, timeout_s: float = 180.0) -> list[dict]:
    """The heads ``/v1/models`` lists, once none is still deploying (or after ``timeout_s``)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        heads = client.models()["heads"]
        if all(head["status"] in ("RUNNING", "DEPLOY_FAILED") for head in heads) or time.monotonic() > deadline:
            return heads
        time.sleep(2)


def query_service(config: DemoConfig, url: str) -> None:
    """Embed the demo scan, then ask each head that came up (predict, or segment into workdir/)."""
    from infra.local.catalogue import entry
    from serving.client import Client

    client = Client(url, os.environ[TOKEN_ENV])
    client.wait_ready(timeout_s=300)
    scan = entry(config.serve_scan).path
    answer = client.embed(scan, per_slice=True)
    encoder = answer["encoder"]
    say(f"[demo] POST {url}/v1/embed {scan.name}: embedding of {answer['dim']} values from "
          f"{answer['input']['slices']} slices of the {answer['input']['format']} volume "
          f"{answer['input']['canonical_shape']}; {encoder['name']} version {encoder['version']} "
          f"(weights sha256 {encoder['weights_sha256'][:16]}...)")
    for head in settled_heads(client):
        if head["status"] != "RUNNING":
            say(f"[demo] head {head['task']}: {head['status']} {head.get('message', '')}")
        elif head["kind"] == "segmentation":
            labels, models = client.segment(scan, head["task"])
            path = config.workdir / f"{head['task']}-labels.nii.gz"
            path.write_bytes(labels)
            say(f"[demo] POST {url}/v1/segment/{head['task']}: labels {models['labels']} written to {path}")
        else:
            say(f"[demo] POST {url}/v1/predict/{head['task']}: {brief(client.predict(scan, head['task'])['prediction'])}")
    say(f"[demo]   the same from a shell: {TOKEN_ENV}=... braindino embed|predict|segment SCAN --url {url}")


def main(argv=None) -> None:
    run_job("braindino demo", "Local services up, bundled real MRI into a bucket, then ingest, pretrain, evaluate "
            "and serve in turn, each as a Ray job.", DemoConfig, run, argv,
            "  braindino demo --config configs/demo.yaml\n  make demo")


if __name__ == "__main__":
    entry(main)
