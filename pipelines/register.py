"""``braindino register``: export the EMA teacher as a frozen encoder and put it in the MLflow registry.

    braindino register --config configs/pretrain/X.yaml --run-id RUN --checkpoint PATH [--set key=value]
    braindino register promote --version N [--alias champion]

``--config`` is the pretraining YAML the checkpoint was trained with. The export is
``encoder.safetensors`` + its ``encoder.json`` sidecar (``braindino.features.Encoder.save``) and
``preprocess.json`` (the ``PreprocessSpec`` the manifest records), logged as an MLflow pyfunc from code
(``pipelines/encoder_pyfunc.py``: loading it unpickles nothing), registered as ``braindino-encoder``
with a model card, the weights' SHA-256, the training commit and the alias ``candidate``. Promotion to
``champion`` is always an explicit command. The pretraining job registers its own run this way.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from braindino.models.vit import ViTConfig
from braindino.volumes import PreprocessSpec
from pipelines.console import console, open_console
from pipelines.failures import UserFacingError, entry
from pipelines.jobs import job_parser, load_job_config
from pipelines.registry import DIGEST_TAG, ENCODER_MODEL, EXPORT_ARTIFACT, sha256_file
from pipelines.train.config import PretrainConfig
from pipelines.train.data import ShardIndex, shard_index

EXAMPLES = """  braindino register --config configs/pretrain/tiny-cpu.yaml --run-id RUN --checkpoint PATH
  braindino register promote --version 3 --alias champion   (points an alias at a version)"""
PYFUNC_CODE = Path(__file__).resolve().with_name("encoder_pyfunc.py")
RUNTIME_PACKAGES = ("braindino", "torch", "safetensors")  # what loading the pyfunc imports


@dataclass
class RegisterJobConfig(PretrainConfig):
    """The pretraining config the checkpoint was trained with, plus which checkpoint of which run."""

    checkpoint_dir: str = ""  # a pretraining checkpoint directory (--checkpoint)
    run_id: str = ""  # the MLflow run of that pretraining (--run-id)


def export_encoder(checkpoint_dir: str | Path, vit: ViTConfig, out: Path, preprocess: PreprocessSpec) -> Path:
    """Write the teacher backbone of a pretraining checkpoint as ``out/encoder.safetensors`` (+ sidecars)."""
    from braindino.features import Encoder
    from braindino.models.vit import VisionTransformer
    from pipelines.train.checkpoint import load_backbone_weights

    out.mkdir(parents=True, exist_ok=True)
    backbone = VisionTransformer(vit)
    backbone.load_state_dict(load_backbone_weights(checkpoint_dir, "teacher"), strict=True)
    Encoder(backbone).save(out / "encoder.safetensors")
    (out / "preprocess.json").write_text(preprocess.to_json() + "\n")
    return out / "encoder.safetensors"


def stage_summaries(config: PretrainConfig) -> list[str]:
    """One line per stage that ran: length, batch, crops and the loss terms with a non-zero weight.

    Gram anchoring is on in a stage after the first when its ``gram.weight`` is positive; the Gram
    teacher is the previous stage's final teacher.
    """
    model = config.model
    terms = [name for name, weight in (("DINO", model.dino_weight), ("iBOT", model.ibot_weight),
                                       ("KoLeo", model.koleo_weight)) if weight > 0]
    lines = []
    for number, name in enumerate(config.stages(), start=1):
        stage = config.stage(name)
        crops = stage.crops
        losses = " + ".join(terms)
        if number > 1 and stage.gram.weight > 0:
            losses += f" + Gram anchoring to the stage-{number - 1} teacher (weight {stage.gram.weight:g})"
        lines.append(f"- stage {number}: {stage.iterations} iterations of {stage.batch_size_per_worker} slices per "
                     f"worker; {crops.n_global} global crops of {crops.global_size} px, {crops.n_local} local crops "
                     f"of {crops.local_size} px; {losses}")
    return lines


def model_card(config: PretrainConfig, run, index: ShardIndex, checkpoint: str) -> str:
    """Markdown model card: architecture, data, training, probe scores, intended use, input."""
    vit = config.model.vit
    tags, metrics = run.data.tags, run.data.metrics
    unknown = {"licence": "unknown: not in the manifest", "citation": ""}
    datasets = index.datasets()
    lines = [
        f"# {config.register.model_name}",
        "",
        "Frozen BrainDINO encoder: the EMA teacher backbone of a self-distillation run.",
        "",
        "## Architecture",
        f"ViT `{vit.size}`: embed dim {vit.embed_dim}, depth {vit.depth}, heads {vit.num_heads}, patch "
        f"{vit.patch_size}, {vit.num_registers} registers, axial RoPE, single-channel input.",
        "",
        "## Data",
        f"Manifest `{tags.get('data.manifest', index.root)}` version {tags.get('data.manifest_version', index.version)}, "
        f"digest `{tags.get('data.manifest_digest', index.digest)}`; {index.n_slices} slices.",
        "",
        *[f"- {name} ({n} scans): licence: {index.licences.get(name, unknown)['licence']} "
          f"{index.licences.get(name, unknown)['citation']}" for name, n in sorted(datasets.items())],
        "",
        "## Training",
        *stage_summaries(config),
        f"- MLflow run `{run.info.run_id}`, checkpoint `{checkpoint}`, git `{tags.get('git.commit', 'unknown')}`"
        f" (dirty: {tags.get('git.dirty', 'unknown')})",
        "",
        "## Evaluation",
        f"- kNN sequence probe accuracy (held-out slices): {metrics.get('knn_probe_accuracy', float('nan')):.3f}",
        f"- final loss: {metrics.get('loss_total', float('nan')):.4f}; student feature std: "
        f"{metrics.get('student_feature_std', float('nan')):.4f}",
        "",
        "## Intended use",
        "Research only: feature extraction for brain-MRI studies. Not a medical device; not for clinical "
        "diagnosis, treatment or any decision about a patient.",
        "",
        "## Input",
        f"Preprocessing spec (`preprocess.json`, as ingest recorded it): `{index.preprocess.to_json()}`",
    ]
    return "\n".join(lines) + "\n"


def pinned_requirements() -> list[str]:
    """``name==version`` of the installed packages the pyfunc imports (local build labels such as +cpu dropped)."""
    from packaging.version import Version

    return [f"{name}=={Version(importlib.metadata.version(name)).public}" for name in RUNTIME_PACKAGES]


def encoder_signature(vit: ViTConfig):
    """Input ``[B, 1, H, W]`` float32 slices, output ``[B, embed_dim]`` float32 CLS embeddings; and an
    input example (one blank slice of two patches a side) that MLflow stores as JSON."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, -1, -1))]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, vit.embed_dim))]))
    return signature, np.zeros((1, 1, 2 * vit.patch_size, 2 * vit.patch_size), dtype=np.float32)


def register_run(config: PretrainConfig, checkpoint_dir: str | Path, run_id: str, tracking_uri: str,
                 index: ShardIndex | None = None) -> str:
    """Export, log and register the encoder of ``run_id``; sets ``register.alias``; returns the version.

    Licences and the preprocessing spec come from the manifest the run trained on (``index``, else the
    latest version under the run's ``data.manifest`` tag). The version's tags name the source run,
    the weights' SHA-256 and the commit that trained them (the run's ``git.commit``/``git.dirty``).
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    config.data.store.retries.export()  # MLflow's S3 artifact uploads retry under the store's policy
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    index = index or shard_index(run.data.tags["data.manifest"], config.data.store)
    name = config.register.model_name
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / EXPORT_ARTIFACT
        weights = export_encoder(checkpoint_dir, config.model.vit, export, index.preprocess)
        digest = sha256_file(weights)
        card = model_card(config, run, index, str(checkpoint_dir))
        (export / "MODEL_CARD.md").write_text(card)
        signature, example = encoder_signature(config.model.vit)
        mlflow.set_experiment(experiment_id=run.info.experiment_id)  # whatever this process used before
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="encoder", python_model=str(PYFUNC_CODE), artifacts={EXPORT_ARTIFACT: str(export)},
                signature=signature, input_example=example, pip_requirements=pinned_requirements(),
                registered_model_name=name,
            )
            mlflow.log_text(card, "encoder_card/MODEL_CARD.md")
    version = str(info.registered_model_version)
    client.update_registered_model(name, description="BrainDINO frozen brain-MRI encoder (research use only).")
    client.update_model_version(name, version, description=card)
    tags = {"source_run": run_id, "data.manifest_digest": run.data.tags.get("data.manifest_digest", index.digest),
            "intended_use": "research, not clinical", DIGEST_TAG: digest,
            "git.commit": run.data.tags.get("git.commit", "unknown"),
            "git.dirty": run.data.tags.get("git.dirty", "unknown")}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, config.register.alias, version)
    return version


def run(config: RegisterJobConfig) -> str:
    if not config.checkpoint_dir or not config.run_id:
        raise UserFacingError("register: name the pretraining run and its checkpoint: --run-id RUN --checkpoint PATH")
    out = console()
    uri = config.tracking.resolved_uri()
    out.intro(f"register the EMA teacher of run {config.run_id} as {config.register.model_name}",
              {"checkpoint": config.checkpoint_dir, "MLflow": uri})
    version = register_run(config, config.checkpoint_dir, config.run_id, uri)
    out.summary({"registered": f"{config.register.model_name} version {version} @{config.register.alias}",
                 "promote": f"braindino register promote --version {version}"})
    return version


def promote(model_name: str, version: str, alias: str, tracking_uri: str) -> None:
    from mlflow.tracking import MlflowClient

    from mlflow.exceptions import MlflowException

    try:
        MlflowClient(tracking_uri).set_registered_model_alias(model_name, alias, version)
    except MlflowException as err:
        detail = err.message.splitlines()[0] if err.message else type(err).__name__
        raise UserFacingError(f"cannot point @{alias} at {model_name} version {version} at {tracking_uri} ({detail}): "
                              "pick a registered version (see the model's page in the MLflow UI)") from None
    console().say(f"[register] {model_name} version {version} is now @{alias}")


def promote_main(argv: list[str]) -> None:
    from pipelines.tracking import TrackingConfig

    parser = argparse.ArgumentParser(prog="braindino register promote",
                                     description="Point an alias (default champion) at a registered version.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example:\n  braindino register promote --version 3 --alias champion")
    parser.add_argument("--version", required=True)
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--model", default=ENCODER_MODEL)
    parser.add_argument("--tracking-uri", default="")
    args = parser.parse_args(argv)
    promote(args.model, args.version, args.alias, args.tracking_uri or TrackingConfig().resolved_uri())


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["promote"]:
        promote_main(argv[1:])
        return
    parser = job_parser("braindino register", "Export the EMA teacher of a pretraining run as a frozen encoder and "
                        "register it in MLflow (alias candidate).", EXAMPLES)
    parser.add_argument("--checkpoint", help="a pretraining checkpoint directory (same as --set checkpoint_dir=PATH)")
    parser.add_argument("--run-id", help="the MLflow run of that pretraining (same as --set run_id=RUN)")
    args = parser.parse_args(argv)
    named = {"checkpoint_dir": args.checkpoint, "run_id": args.run_id}
    extra = [f"{key}={json.dumps(value)}" for key, value in named.items() if value]
    config = load_job_config(RegisterJobConfig, args, extra)
    open_console("register", args.verbose)
    run(config)


if __name__ == "__main__":
    entry(main)
