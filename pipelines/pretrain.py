"""``braindino pretrain``: two-stage BrainDINO self-distillation on Ray Train, tracked in MLflow.

    braindino pretrain --config configs/pretrain/tiny-cpu.yaml [--set stage1.iterations=40]
    ray job submit --address http://HEAD:8265 --working-dir . -- python pipelines/pretrain.py --config ...

Build the data (manifest -> Ray Data stream), build one ``TorchTrainer`` per stage, fit. Stage 2 starts
from stage 1's last checkpoint (recorded on the MLflow run); each stage resumes on its own when rerun
with the same ``name``. The EMA teacher is then registered as ``braindino-encoder`` (``register.enabled``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from braindino.config import flatten, to_dict
from pipelines.console import console, open_console
from pipelines.failures import UserFacingError, entry
from pipelines.jobs import connect_ray, job_parser, load_job_config, submit_job
from pipelines.shared_storage import require_shared_storage
from pipelines.tracking import provenance_tags, use_experiment
from pipelines.train.config import PretrainConfig
from pipelines.train.data import ShardIndex, build_dataset, describe, probe_set, shard_index
from pipelines.train.loop import StagePlan, TrainingDiverged, train_stage
from pipelines.train.resources import DataResources, autoscaling_capacity, plan_data_resources
from pipelines.train.watchdog import DataStalled, progress_actor

EXAMPLES = """  braindino pretrain --config configs/pretrain/tiny-cpu.yaml
  braindino pretrain --config configs/pretrain/tiny-cpu.yaml --set stage1.iterations=40 --set name=my-run
  ray job submit --address http://HEAD:8265 --working-dir . -- python pipelines/pretrain.py --config FILE"""


@dataclass
class PretrainResult:
    run_id: str
    checkpoints: dict[str, str]  # stage -> checkpoint path in the run storage
    final_step: int
    model_version: str | None = None


def _storage(config: PretrainConfig) -> tuple[str, object | None]:
    path = config.checkpoint.storage_path
    if path.startswith("s3://"):
        fs, key = config.data.store.resolve(path)
        return key, fs
    return str(Path(path).resolve()), None


def fit_stage(config: PretrainConfig, stage: str, index: ShardIndex, plan: StagePlan, data: DataResources):
    """One ``TorchTrainer.fit`` for ``stage``; the run name makes it resumable.

    Raises ``DataStalled`` when the workers' stream stalled on the last allowed attempt.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.train.v2.api.exceptions import TrainingFailedError

    workers = config.workers
    resources = {"CPU": workers.cpus_per_worker, **({"GPU": 1} if workers.use_gpu else {})}
    storage_path, storage_fs = _storage(config)
    progress = progress_actor(config.name)
    trainer = TorchTrainer(
        lambda loop_config: train_stage(loop_config["plan"]),
        train_loop_config={"plan": plan},
        scaling_config=ScalingConfig(num_workers=workers.num_workers, use_gpu=workers.use_gpu,
                                     resources_per_worker=resources, placement_strategy=workers.placement_strategy),
        run_config=RunConfig(
            name=f"{config.name}-{stage}", storage_path=storage_path, storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=config.checkpoint.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.checkpoint.num_to_keep),
        ),
        datasets={"train": build_dataset(index, config, config.stage(stage), data, progress)},
    )
    first = config.first_step(stage)
    try:
        with console().follow(f"{stage} steps", config.stage(stage).iterations, "steps",
                              lambda: logged_iterations(plan, first)):
            return trainer.fit()
    except TrainingFailedError as err:
        for failure in getattr(err, "worker_failures", {}).values():
            cause = getattr(failure, "_base_exc", failure)  # Ray Train wraps the worker's own exception
            if isinstance(cause, DataStalled):
                raise cause from err
        raise
    finally:
        ray.kill(progress)


def logged_iterations(plan: StagePlan, first: int) -> int | None:
    """The stage's iterations done so far, as its rank 0 last logged them to the MLflow run (every ``eval.log_every``)."""
    from mlflow.tracking import MlflowClient

    done = MlflowClient(plan.tracking_uri).get_run(plan.run_id).data.metrics.get("iterations_done")
    return None if done is None else max(0, int(done) - first)


def data_resources(config: PretrainConfig) -> DataResources:
    """The stream's CPU budget on the connected cluster, or ``ClusterTooSmall`` (see ``plan_data_resources``)."""
    import ray

    data = plan_data_resources(config, ray.cluster_resources(), autoscaling_capacity())
    augment = (f", {data.augment_actors[0]}-{data.augment_actors[1]} augment actors at {data.augment_cpus:g} CPU"
               if config.data.augment_on == "ray_data" else "")
    console().say(f"[pretrain] stream: read + decode tasks at {data.read_cpus:g} CPU{augment}")
    return data


def finished_stage(config: PretrainConfig, stage: str, recorded: str | None):
    """The recorded checkpoint of ``stage`` when it holds the stage's final step, else None."""
    from ray.train import Checkpoint

    from pipelines.train.checkpoint import TrainState

    if not recorded:
        return None
    _, storage_fs = _storage(config)
    checkpoint = Checkpoint(recorded, filesystem=storage_fs) if storage_fs is not None else Checkpoint(recorded)
    try:
        with checkpoint.as_directory() as directory:
            state = TrainState.read(directory)
    except (FileNotFoundError, OSError):
        return None
    end = config.first_step(stage) + config.stage(stage).iterations
    return checkpoint if state.stage == stage and state.step >= end and not state.diverged else None


def _start_tracking(config: PretrainConfig, index: ShardIndex) -> tuple[str, str]:
    """Open (or reopen, for a rerun of the same ``name``) the MLflow run; returns (tracking URI, run id)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    experiment_id = use_experiment(config.tracking)
    uri = config.tracking.resolved_uri()
    client = MlflowClient(uri)
    previous = client.search_runs([experiment_id], f"tags.`braindino.run_name` = '{config.name}' "
                                  "and tags.`braindino.status` != 'finished'", max_results=1)
    if previous:
        run_id = previous[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return uri, run_id
    run = client.create_run(experiment_id, run_name=config.name,
                            tags={"braindino.run_name": config.name, "braindino.status": "running",
                                  "braindino.job": "pretrain", **provenance_tags(),
                                  "data.manifest": index.root, "data.manifest_version": str(index.version),
                                  "data.manifest_digest": index.digest, "data.summary": describe(index)})
    params = {k: str(v)[:500] for k, v in flatten(to_dict(config)).items()}
    keys = sorted(params)
    for start in range(0, len(keys), 100):
        mlflow.tracking.MlflowClient(uri).log_batch(
            run.info.run_id, params=[mlflow.entities.Param(k, params[k]) for k in keys[start:start + 100]])
    return uri, run.info.run_id


def run(config: PretrainConfig) -> PretrainResult:
    from mlflow.tracking import MlflowClient

    out = console()
    out.intro(f"pretrain {config.name!r}: {' then '.join(config.stages())} on {config.workers.num_workers} worker(s)", {
        "manifest": config.data.manifest, "checkpoints": config.checkpoint.storage_path,
        "MLflow": f"experiment {config.tracking.experiment!r} at {config.tracking.resolved_uri()}",
    })
    config.data.store.retries.export()  # MLflow's S3 artifact uploads (registration) retry alike
    connect_ray()  # first: on a cluster of several nodes, node-local paths are refused before anything is read
    require_shared_storage({"data.manifest": config.data.manifest, "checkpoint.storage_path": config.checkpoint.storage_path})
    index = shard_index(config.data.manifest, config.data.store)
    data = data_resources(config)
    out.say(f"[pretrain] data: {describe(index)}")
    probe = probe_set(index, config.data.store, config.data.probe_slices_per_class)
    uri, run_id = _start_tracking(config, index)
    client = MlflowClient(uri)
    out.say(f"[pretrain] MLflow run {run_id} in experiment {config.tracking.experiment!r} at {uri}")
    checkpoints: dict[str, object] = {}
    final_step = 0
    for stage in config.stages():
        done = finished_stage(config, stage, client.get_run(run_id).data.tags.get(f"checkpoint.{stage}"))
        if done is not None:  # a rerun of this name: the stage completed before, reuse its recorded checkpoint
            out.say(f"[pretrain] {stage} already complete: {done.path}")
            checkpoints[stage] = done
            final_step = config.first_step(stage) + config.stage(stage).iterations
            continue
        plan = StagePlan(config, stage, run_id, uri, probe, init_from=checkpoints.get("stage1"))
        try:
            result = fit_stage(config, stage, index, plan, data)
        except DataStalled as err:
            client.set_tag(run_id, "braindino.status", "stalled")
            client.set_tag(run_id, "braindino.stalled_message", str(err)[:4000])
            client.set_terminated(run_id, "FAILED")
            raise
        if result.checkpoint is None:
            client.set_terminated(run_id, "FAILED")
            raise RuntimeError(f"{stage} produced no checkpoint: {result.error!r}")
        checkpoints[stage] = result.checkpoint
        client.set_tag(run_id, f"checkpoint.{stage}", result.checkpoint.path)
        metrics = result.metrics or {}
        final_step = int(metrics.get("step", 0))
        out.say(f"[pretrain] {stage} done at step {final_step}: checkpoint {result.checkpoint.path}")
        if metrics.get("diverged"):
            client.set_tag(run_id, "braindino.status", "diverged")
            client.set_terminated(run_id, "FAILED")
            raise TrainingDiverged(f"{stage} stopped on a NaN/Inf loss at step {final_step}; its last good state is "
                                   f"{result.checkpoint.path}. See the run's braindino.diverged_message tag.")
    paths = {stage: ckpt.path for stage, ckpt in checkpoints.items()}
    outcome = PretrainResult(run_id, paths, final_step)
    if config.register.enabled:
        from pipelines.register import register_run

        last = checkpoints[config.stages()[-1]]
        with last.as_directory() as directory:
            version = register_run(config, Path(directory), run_id, uri, index)
        outcome.model_version = version
        out.say(f"[pretrain] registered {config.register.model_name} version {version} "
              f"as @{config.register.alias}")
    client.set_tag(run_id, "braindino.status", "finished")
    client.set_terminated(run_id, "FINISHED")
    out.summary({"MLflow run": f"{run_id} (experiment {config.tracking.experiment!r} at {uri})",
                 **{f"checkpoint {stage}": path for stage, path in paths.items()}, "final step": final_step,
                 **({"registered": f"{config.register.model_name} version {outcome.model_version} "
                                   f"@{config.register.alias}"} if outcome.model_version else {})})
    return outcome


def submit(address: str, config_file: str | Path, overrides: list[str], tracking_uri: str, name: str) -> str:
    """``ray job submit`` this driver to the cluster at ``address`` (its job API URL); returns the MLflow run id."""
    from mlflow.tracking import MlflowClient

    submit_job(address, "pretrain.py", ["--config", str(config_file), "--set", f"name={name}",
                                        *(item for override in overrides for item in ("--set", override))])
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.`braindino.run_name` = '{name}'", max_results=1)
    if not runs:
        raise UserFacingError(f"the job finished but no MLflow run is tagged braindino.run_name={name} at {tracking_uri}")
    return runs[0].info.run_id


def main(argv=None) -> None:
    args = job_parser("braindino pretrain", "Two-stage BrainDINO self-distillation on Ray Train, tracked in MLflow.",
                      EXAMPLES).parse_args(argv)
    config = load_job_config(PretrainConfig, args)
    open_console("pretrain", args.verbose)
    run(config)


if __name__ == "__main__":
    entry(main)
