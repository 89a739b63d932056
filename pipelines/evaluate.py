"""``braindino evaluate``: a frozen encoder and light heads on a suite of tasks, under one protocol, against baselines.

    braindino evaluate --config configs/evaluate/NAME.yaml --set encoder=models:/braindino-encoder@candidate
    ray job submit --address http://HEAD:8265 --working-dir . -- python pipelines/evaluate.py --config ...

Per task: the scans of its datasets and their targets from the ingest manifest, a split by subject (stored
under ``output/splits/`` and reused), features of every encoder (a Ray Data job, cached by weights and scan
digest), heads trained for each label fraction and seed with model selection on validation subjects, test
metrics with bootstrap intervals. One MLflow run (experiment ``braindino-evaluate``) holds the table, the
figures and the numbers; the candidate's heads are registered as ``braindino-head-TASK``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from braindino.config import flatten, to_dict
from pipelines.evaluation.config import EvaluateConfig, load_task
from pipelines.evaluation.encoders import resolve_encoders
from pipelines.evaluation.heads import export_head, model_card, register_head
from pipelines.evaluation.report import ResultRow, markdown_table, slug
from pipelines.evaluation.runners import task_feature_spec
from pipelines.evaluation.suite import TaskOutcome, evaluate_task
from pipelines.console import console, open_console
from pipelines.failures import UserFacingError, entry
from pipelines.jobs import connect_ray, job_parser, load_job_config
from pipelines.tracking import provenance_tags, use_experiment

EXAMPLES = """  braindino evaluate --config configs/evaluate/bundled.yaml --set encoder=models:/braindino-encoder@candidate
  ray job submit --address http://HEAD:8265 --working-dir . -- python pipelines/evaluate.py --config FILE"""


@dataclass
class EvaluationResult:
    run_id: str
    rows: list[ResultRow]
    outcomes: dict[str, TaskOutcome]
    heads: dict[str, str] = field(default_factory=dict)  # task -> registered version


def run(config: EvaluateConfig) -> EvaluationResult:
    import mlflow
    import torch

    if not config.tasks:
        raise UserFacingError("evaluate: name at least one task spec in tasks (e.g. --set 'tasks=[configs/tasks/X.yaml]')")
    tasks = [(path, *load_task(path)) for path in config.tasks]
    out = console()
    out.intro(f"evaluate {config.encoder} on {len(tasks)} task{'s' if len(tasks) != 1 else ''}", {
        "tasks": ", ".join(task.name for _, task, _ in tasks), "baselines": ", ".join(config.baselines) or "none",
        "manifest": config.manifest, "output": config.output,
        "MLflow": f"experiment {config.tracking.experiment!r} at {config.tracking.resolved_uri()}"})
    torch.set_num_threads(max(1, config.threads))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    connect_ray(config.ray_cpus)
    uri = config.tracking.resolved_uri()
    with tempfile.TemporaryDirectory(prefix="braindino-evaluate-") as tmp:
        encoders = resolve_encoders(config.encoder, config.baselines, uri, Path(tmp) / "encoders")
        candidate = encoders[0].encoder
        out.say(f"[evaluate] encoders: {', '.join(e.label for e in encoders)} "
                f"(candidate weights {candidate.weights_sha256[:12]})")
        use_experiment(config.tracking)
        artifacts = Path(tmp) / "artifacts"
        with mlflow.start_run(run_name=config.name) as active:
            run_id = active.info.run_id
            mlflow.set_tags({**provenance_tags(), "job": "evaluate", "encoder": config.encoder,
                             "encoder.weights_sha256": candidate.weights_sha256,
                             "baselines": ", ".join(e.label for e in encoders[1:])})
            mlflow.log_params({k: str(v)[:500] for k, v in flatten(to_dict(config)).items()})
            result = EvaluationResult(run_id, [], {})
            with out.progress("tasks", len(tasks), "tasks") as advance:
                for path, task, spec_digest in tasks:
                    outcome = evaluate_task(task, path, config, encoders, artifacts, device, log=out.say)
                    result.outcomes[task.name] = outcome
                    result.rows += outcome.rows
                    if config.register.enabled and encoders[0].label in outcome.reference:
                        result.heads[task.name] = register(outcome, encoders[0], spec_digest, config, artifacts, run_id, uri)
                    advance(1)
            log_results(result, artifacts)
    out.say(markdown_table(result.rows))
    out.summary({"MLflow run": f"{run_id} (experiment {config.tracking.experiment!r} at {uri})",
                 "results": "results.md, tasks/*/curves.png in the run's artifacts",
                 **{f"head {task}": f"braindino-head-{task} version {version} @{config.register.alias}"
                    for task, version in result.heads.items()}})
    return result


def register(outcome: TaskOutcome, encoder, spec_digest: str, config: EvaluateConfig, artifacts: Path, run_id: str,
             uri: str) -> str:
    runner, protocol = outcome.reference[encoder.label]
    task, samples = outcome.task, outcome.samples
    features = task_feature_spec(task, config.features.slices_per_volume, encoder.config.depth)
    folder = artifacts / "heads" / task.name
    spec = export_head(folder, samples, protocol.reference, encoder, features, protocol.fractions[-1])
    (folder / "task.yaml").write_text((artifacts / "tasks" / task.name / "task.yaml").read_text())
    (folder / "split.json").write_text(outcome.split.to_json())
    card = model_card(spec, samples, outcome.split, encoder, run_id)
    version = register_head(folder, spec, card, {"task.spec_sha256": spec_digest, "split.sha256": outcome.split.digest,
                                                 "source_run": run_id, f"test.{task.primary_metric}":
                                                 f"{protocol.fractions[-1].metrics[task.primary_metric]:.6g}"},
                            uri, config.register.alias)
    console().say(f"[evaluate]   registered braindino-head-{task.name} version {version} as @{config.register.alias}")
    return version


def log_results(result: EvaluationResult, artifacts: Path) -> None:
    import math

    import mlflow

    metrics = {}
    for row in result.rows:
        stem = row.metric_key()
        values = {row.metric: row.mean, f"{row.metric}_low": row.low, f"{row.metric}_high": row.high, **row.others}
        metrics.update({f"{stem}/{name}": value for name, value in values.items() if math.isfinite(value)})
    for task, outcome in result.outcomes.items():
        for encoder, report in outcome.extraction.items():
            metrics[f"{task}/features/{slug(encoder)}/encoded_slices"] = report.encoded_slices
        for (encoder, head), (count, share) in outcome.parameters.items():
            metrics[f"{task}/{slug(encoder)}/{head}/trainable_parameters"] = count
            metrics[f"{task}/{slug(encoder)}/{head}/share_of_encoder_parameters"] = share
    names = sorted(metrics)
    for start in range(0, len(names), 500):
        mlflow.log_metrics({name: metrics[name] for name in names[start:start + 500]})
    (artifacts / "results.md").write_text(markdown_table(result.rows))
    mlflow.log_table({name: [getattr(row, name) for row in result.rows] for name in
                      ("task", "encoder", "head", "fraction", "metric", "mean", "low", "high", "train_subjects",
                       "test_subjects")}, "results.json")
    mlflow.log_artifacts(str(artifacts))


def main(argv=None) -> None:
    args = job_parser("braindino evaluate", "A frozen encoder and light heads on a suite of tasks, under one "
                      "protocol, against baselines; the candidate's heads are registered.", EXAMPLES).parse_args(argv)
    config = load_job_config(EvaluateConfig, args)
    open_console("evaluate", args.verbose)
    run(config)


if __name__ == "__main__":
    entry(main)
