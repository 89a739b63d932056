"""``braindino register``: export the EMA teacher as a frozen encoder and put it in the MLflow registry.

    braindino register --checkpoint PATH --run-id RUN [--config configs/pretrain/X.yaml]
    braindino register promote --version N [--alias champion]

The export is ``encoder.safetensors`` + its ``encoder.json`` sidecar (``braindino.features.Encoder.save``)
and ``preprocess.json`` (``braindino.volumes.PreprocessSpec``), logged as an MLflow pyfunc model whose
weights stay a safetensors artifact (never a pickle), registered as ``braindino-encoder`` with a model
card and the alias ``candidate``. Promotion to ``champion`` is always an explicit command.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import mlflow.pyfunc
import numpy as np

from braindino.volumes import PreprocessSpec
from pipelines.registry import DIGEST_TAG, sha256_file
from pipelines.train.data import ShardIndex, shard_index


class EncoderModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: ``predict(slices [B, 1, H, W] float32) -> CLS embeddings [B, D]``."""

    def load_context(self, context) -> None:
        from braindino.features import Encoder

        self.encoder = Encoder.from_checkpoint(Path(context.artifacts["encoder"]) / "encoder.safetensors")

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        import torch

        slices = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        return self.encoder.encode_slices(slices).numpy()


def export_encoder(checkpoint_dir: str | Path, config, out: Path, preprocess: PreprocessSpec) -> Path:
    """Write the teacher backbone of a pretraining checkpoint as ``out/encoder.safetensors`` (+ sidecars)."""
    from braindino.features import Encoder
    from braindino.models.vit import VisionTransformer
    from pipelines.train.checkpoint import load_backbone_weights

    out.mkdir(parents=True, exist_ok=True)
    backbone = VisionTransformer(config.model.vit)
    backbone.load_state_dict(load_backbone_weights(checkpoint_dir, "teacher"), strict=True)
    Encoder(backbone).save(out / "encoder.safetensors")
    (out / "preprocess.json").write_text(preprocess.to_json() + "\n")
    return out / "encoder.safetensors"


def manifest_preprocess(index: ShardIndex) -> PreprocessSpec:
    """The preprocessing the training slices were made with, as the ingest recorded it in the manifest."""
    if index.preprocess is None:
        raise ValueError(f"{index.root}: manifest v{index.version} records no preprocessing spec (it predates "
                         "that record); run the ingest on that output root again (it commits a version recording "
                         "the spec its volumes were made with), then train and register from it")
    return PreprocessSpec.from_json(json.dumps(index.preprocess))


def model_card(config, run, index: ShardIndex, checkpoint: str) -> str:
    """Markdown model card: architecture, data, training, probe scores, intended use."""
    vit = config.model.vit
    params = run.data.params
    metrics = run.data.metrics
    index_summary = json.loads(run.data.tags.get("data.summary", "{}"))
    unknown = {"licence": "unknown: not in the manifest", "citation": ""}
    licences = {name: index.licences.get(name, unknown) for name in index_summary.get("datasets", {})}
    lines = [
        f"# {config.register.model_name}",
        "",
        "Frozen BrainDINO encoder: the EMA teacher backbone of a two-stage self-distillation run.",
        "",
        "## Architecture",
        f"ViT `{vit.size}`: embed dim {vit.embed_dim}, depth {vit.depth}, heads {vit.num_heads}, patch "
        f"{vit.patch_size}, {vit.num_registers} registers, axial RoPE, single-channel input.",
        "",
        "## Data",
        f"Manifest `{run.data.tags.get('data.manifest')}` version {run.data.tags.get('data.manifest_version')}, "
        f"digest `{run.data.tags.get('data.manifest_digest')}`; {index_summary.get('slices')} slices.",
        "",
        *[f"- {name} ({n} scans): licence: {licences[name]['licence']} {licences[name]['citation']}"
          for name, n in sorted(index_summary.get("datasets", {}).items())],
        "",
        "## Training",
        f"- stage 1: {params.get('stage1.iterations')} iterations at {params.get('stage1.crops.global_size')}/"
        f"{params.get('stage1.crops.local_size')} px (DINO + iBOT + KoLeo)",
        f"- stage 2: {params.get('stage2.iterations')} iterations at {params.get('stage2.crops.global_size')}/"
        f"{params.get('stage2.crops.local_size')} px with Gram anchoring to the stage-1 teacher",
        f"- MLflow run `{run.info.run_id}`, checkpoint `{checkpoint}`, git `{run.data.tags.get('git.commit')}`",
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
        f"Preprocessing spec (`preprocess.json`, as ingest recorded it): `{manifest_preprocess(index).to_json()}`",
    ]
    return "\n".join(lines) + "\n"


def register_run(config, checkpoint_dir: str | Path, run_id: str, tracking_uri: str,
                 index: ShardIndex | None = None) -> str:
    """Export, log and register the encoder of ``run_id``; sets ``register.alias``; returns the version.

    Licences and the preprocessing spec come from the manifest the run trained on (``index``, else the
    one its ``data.manifest`` tag names).
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    index = index or shard_index(run.data.tags["data.manifest"], config.data.store)
    name = config.register.model_name
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "encoder"
        weights = export_encoder(checkpoint_dir, config, export, manifest_preprocess(index))
        digest = sha256_file(weights)
        card = model_card(config, run, index, str(checkpoint_dir))
        (export / "MODEL_CARD.md").write_text(card)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="encoder", python_model=EncoderModel(), artifacts={"encoder": str(export)},
                pip_requirements=["torch==2.13.0", "safetensors", "braindino"],
                registered_model_name=name,
            )
            mlflow.log_text(card, "encoder_card/MODEL_CARD.md")
    version = str(info.registered_model_version)
    client.update_registered_model(name, description="BrainDINO frozen brain-MRI encoder (research use only).")
    client.update_model_version(name, version, description=card)
    client.set_model_version_tag(name, version, "source_run", run_id)
    client.set_model_version_tag(name, version, "data.manifest_digest", run.data.tags.get("data.manifest_digest", ""))
    client.set_model_version_tag(name, version, "intended_use", "research, not clinical")
    client.set_model_version_tag(name, version, DIGEST_TAG, digest)
    client.set_registered_model_alias(name, config.register.alias, version)
    return version


def promote(model_name: str, version: str, alias: str, tracking_uri: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri).set_registered_model_alias(model_name, alias, version)
    print(f"[register] {model_name} version {version} is now @{alias}")


def main(argv=None) -> None:
    from pipelines.jobs import load_job_config
    from pipelines.train.config import PretrainConfig

    argv = list(argv or [])
    if argv[:1] == ["promote"]:
        parser = argparse.ArgumentParser(prog="braindino register promote",
                                         description="Point an alias (default champion) at a registered version.")
        parser.add_argument("--version", required=True)
        parser.add_argument("--alias", default="champion")
        parser.add_argument("--model", default="braindino-encoder")
        parser.add_argument("--tracking-uri", default="")
        args = parser.parse_args(argv[1:])
        from pipelines.tracking import TrackingConfig

        promote(args.model, args.version, args.alias, args.tracking_uri or TrackingConfig().resolved_uri())
        return
    parser = argparse.ArgumentParser(prog="braindino register", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="the pretraining YAML the checkpoint came from")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--checkpoint", required=True, help="a pretraining checkpoint directory")
    parser.add_argument("--run-id", required=True, help="the MLflow run of that pretraining")
    args = parser.parse_args(argv)
    config = load_job_config(PretrainConfig, args)
    version = register_run(config, args.checkpoint, args.run_id, config.tracking.resolved_uri())
    print(f"[register] {config.register.model_name} version {version} is @{config.register.alias}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
